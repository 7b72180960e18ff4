// Quantized matrix x few vectors (the decode path): out_m (n_rows, N_m) f32 = x (n_rows, K) @ W_m.T, n_rows <= 8,
// for up to 3 matrices W_0, W_1, W_2 of one type sharing the input x (Q/K/V, gate/up) in one launch.
//
// Math: W stays in its GGML type (upload layout in quant_blocks.cuh). For the quantized types x was first
// quantized per 32 values to int8 (quantize_act.cu: xq, xds) and each weight "unit" (T::VU values behind one or
// two 16-byte weight loads) is dotted with __dp4a on the integer quants, then scaled in f32 (llama.cpp's MMVQ
// idea). F16/F32 weights use the f32 activations xf directly.
//
// Launch shape: 128 threads per block, split into R groups of G = 128/R threads (R in {1, 2, 4}); a group owns
// RT consecutive rows and its threads stride over the units of those rows. Per step a thread issues the loads
// of UNR units x RT rows (bytes in flight per thread = UNR x RT x unit bytes), loads the matching activations
// once per column and uses them for all RT rows (activation reuse), accumulating NC (>= n_rows) columns.
// Partial sums meet by warp shuffles (+ shared memory when G > 32). Blocks are numbered over the concatenated
// row ranges of W_0, W_1, W_2: grid.x = sum_m ceil(N_m / (R*RT)). Unused matrix slots have N_m = 0.
// Weights are read through the non-allocating read-only path, activations through L1 (every row reuses them).
//
// Paired columns (--decode-activations int8x2, entries matmul_vec_<type>_c<NC>p_...): the NC columns are two int8
// passes of n_rows <= NC/2 rows, pass 1 of row r in column r, pass 2 (its residual) in column NC/2 + r
// (quantize_act_q8x2 with a residual offset of NC/2 rows); the kernel stores out row r = column r + column
// NC/2 + r, so W.x = W.(d1 q1) + W.(d2 q2) leaves the kernel summed.
//
// Entries: matmul_vec_<type>_c<NC>[p]_r<R>t<RT>u<UNR>; cuda_matmul.py picks one configuration per (type, NC).
// Signature: (q0, s0, h0, out0, N0, q1, s1, h1, out1, N1, q2, s2, h2, out2, N2, K,
//             xq int8 (n_rows, K), xds float2 (n_rows, K/32), xf f32 (n_rows, K), n_rows)
#include "quant_blocks.cuh"
#include "pdl.cuh"

template <class T, int NC, int R, int RT, int UNR, bool PAIR>
__device__ __forceinline__ void mmv_body(const WPtrs& w, int blk, const int8_t* __restrict__ xq,
                                         const float2* __restrict__ xds, const float* __restrict__ xf,
                                         float* __restrict__ out, int n_rows) {
    constexpr int G = 128 / R;  // threads per row group (>= 32, a multiple of every T::UPB)
    const int group = threadIdx.x / G, gt = threadIdx.x % G;
    const int row0 = (blk * R + group) * RT;
    const int K = w.K;
    const int units = K / T::VU;
    const int sub = gt % T::UPB;  // = u % UPB for every unit this thread visits
    constexpr int NO = PAIR ? NC / 2 : NC;  // output rows per column set
    // column c holds data: row c (< n_rows), or with PAIR pass c / NO of row c % NO
    auto live = [&](int c) { return (PAIR ? c % NO : c) < n_rows; };
    float acc[RT][NC];
#pragma unroll
    for (int t = 0; t < RT; ++t)
#pragma unroll
        for (int c = 0; c < NC; ++c) acc[t][c] = 0.f;

    if (row0 < w.N) {
        for (int u0 = gt; u0 < units; u0 += G * UNR) {
            typename T::U r[UNR][RT];
#pragma unroll
            for (int i = 0; i < UNR; ++i) {
                const int u = u0 + i * G;
                if (u < units) {
#pragma unroll
                    for (int t = 0; t < RT; ++t)  // rows past N reload row N-1; their sums are not stored
                        r[i][t] = T::load_u(w, min(row0 + t, w.N - 1), u);
                }
            }
#pragma unroll
            for (int i = 0; i < UNR; ++i) {
                const int u = u0 + i * G;
                if (u < units) {
#pragma unroll
                    for (int c = 0; c < NC; ++c) {
                        if (live(c)) {
                            const XCol x{xq + (size_t)c * K, xds + (size_t)c * (K / 32), xf + (size_t)c * K};
                            const typename T::A a = T::load_a(x, u);
#pragma unroll
                            for (int t = 0; t < RT; ++t) acc[t][c] += T::dot(r[i][t], a, sub);
                        }
                    }
                }
            }
        }
    }
    if (PAIR) {  // column c += its residual column (the sums are linear: add before reducing)
#pragma unroll
        for (int t = 0; t < RT; ++t)
#pragma unroll
            for (int c = 0; c < NO; ++c) acc[t][c] += acc[t][c + NO];
    }
#pragma unroll
    for (int t = 0; t < RT; ++t)
#pragma unroll
        for (int c = 0; c < NO; ++c) acc[t][c] = warp_sum(acc[t][c]);

    if (G == 32) {
        if (gt == 0) {
#pragma unroll
            for (int t = 0; t < RT; ++t)
#pragma unroll
                for (int c = 0; c < NO; ++c)
                    if (c < n_rows && row0 + t < w.N) out[(size_t)c * w.N + row0 + t] = acc[t][c];
        }
    } else {
        constexpr int WPG = G / 32;  // warps per row group
        __shared__ float part[R][WPG][RT * NO];
        const int wig = gt >> 5, lane = gt & 31;
        if (lane == 0) {
#pragma unroll
            for (int t = 0; t < RT; ++t)
#pragma unroll
                for (int c = 0; c < NO; ++c) part[group][wig][t * NO + c] = acc[t][c];
        }
        __syncthreads();
        if (gt < RT * NO) {
            const int t = gt / NO, c = gt % NO;
            if (c < n_rows && row0 + t < w.N) {
                float s = 0.f;
#pragma unroll
                for (int k = 0; k < WPG; ++k) s += part[group][k][gt];
                out[(size_t)c * w.N + row0 + t] = s;
            }
        }
    }
}

#define MMV_ENTRY_(suffix, T, NC, P, PAIR, R, RT, UNR)                                                         \
    extern "C" __global__ void __launch_bounds__(128) matmul_vec_##suffix##_c##NC##P##_r##R##t##RT##u##UNR(     \
        const uint8_t* q0, const uint8_t* s0, const uint8_t* h0, float* o0, int N0, const uint8_t* q1,         \
        const uint8_t* s1, const uint8_t* h1, float* o1, int N1, const uint8_t* q2, const uint8_t* s2,         \
        const uint8_t* h2, float* o2, int N2, int K, const int8_t* xq, const float2* xds, const float* xf,      \
        int n_rows) {                                                                                          \
        constexpr int RPB = R * RT;                                                                            \
        const int nb0 = (N0 + RPB - 1) / RPB, nb1 = (N1 + RPB - 1) / RPB;                                      \
        int blk = blockIdx.x;                                                                                  \
        const uint8_t *q = q0, *s = s0, *h = h0;                                                               \
        float* o = o0;                                                                                         \
        int N = N0;                                                                                            \
        if (blk >= nb0) {                                                                                      \
            blk -= nb0;                                                                                        \
            if (blk < nb1) {                                                                                   \
                q = q1, s = s1, h = h1, o = o1, N = N1;                                                        \
            } else {                                                                                           \
                blk -= nb1;                                                                                    \
                q = q2, s = s2, h = h2, o = o2, N = N2;                                                        \
            }                                                                                                  \
        }                                                                                                      \
        const WPtrs w{q, s, h, N, K};                                                                          \
        pdl_start();                                                                                           \
        mmv_body<T, NC, R, RT, UNR, PAIR>(w, blk, xq, xds, xf, o, n_rows);                                     \
    }
#define MMV_ENTRY(suffix, T, NC, R, RT, UNR) MMV_ENTRY_(suffix, T, NC, , false, R, RT, UNR)
#define MMV_PAIRED(suffix, T, NC, R, RT, UNR) MMV_ENTRY_(suffix, T, NC, p, true, R, RT, UNR)

// configurations every type has (cuda_matmul.VEC_CONFIG picks among them; H200 numbers in bench/matmul_bench.py)
#define MMV_COMMON(suffix, T)              \
    MMV_ENTRY(suffix, T, 1, 4, 1, 1)       \
    MMV_ENTRY(suffix, T, 1, 4, 2, 1)       \
    MMV_ENTRY(suffix, T, 1, 4, 2, 2)       \
    MMV_ENTRY(suffix, T, 1, 1, 2, 1)       \
    MMV_ENTRY(suffix, T, 2, 4, 2, 1)       \
    MMV_ENTRY(suffix, T, 2, 4, 4, 1)       \
    MMV_ENTRY(suffix, T, 4, 4, 2, 1)       \
    MMV_ENTRY(suffix, T, 4, 4, 4, 1)       \
    MMV_ENTRY(suffix, T, 8, 4, 2, 1)
FOR_EACH_WTYPE(MMV_COMMON)

// paired (int8x2) configurations of the int8 types: 1 / 2 / 4 output rows
#define MMV_PAIRS(suffix, T)               \
    MMV_PAIRED(suffix, T, 2, 4, 4, 1)      \
    MMV_PAIRED(suffix, T, 4, 4, 4, 1)      \
    MMV_PAIRED(suffix, T, 8, 4, 2, 1)
MMV_PAIRS(q8_0, TQ8_0)
MMV_PAIRS(q4_0, TQ4_0)
MMV_PAIRS(q4_1, TQ4_1)
MMV_PAIRS(q5_0, TQ5_0)
MMV_PAIRS(q5_1, TQ5_1)
MMV_PAIRS(q4_k, TQ4_K)
MMV_PAIRS(q5_k, TQ5_K)
MMV_PAIRS(q6_k, TQ6_K)

// paired variants at one output row, measured by bench/matmul_bench.py --only pipe; r4t2u1 is also Q6_K's default
// (cuda_matmul.PAIRED_CONFIG_BY_TYPE)
#define MMV_PAIR_TUNE(suffix, T)           \
    MMV_PAIRED(suffix, T, 2, 4, 2, 1)      \
    MMV_PAIRED(suffix, T, 2, 4, 2, 2)      \
    MMV_PAIRED(suffix, T, 2, 4, 1, 2)      \
    MMV_PAIRED(suffix, T, 2, 2, 2, 2)      \
    MMV_PAIRED(suffix, T, 2, 1, 2, 2)
MMV_PAIR_TUNE(q4_k, TQ4_K)
MMV_PAIR_TUNE(q6_k, TQ6_K)

// tuning variants (benchmark)
#define MMV_TUNE1(suffix, T)               \
    MMV_ENTRY(suffix, T, 1, 4, 1, 2)       \
    MMV_ENTRY(suffix, T, 1, 4, 4, 1)       \
    MMV_ENTRY(suffix, T, 1, 2, 2, 1)       \
    MMV_ENTRY(suffix, T, 1, 2, 4, 1)       \
    MMV_ENTRY(suffix, T, 1, 1, 4, 1)       \
    MMV_ENTRY(suffix, T, 1, 1, 8, 1)
MMV_TUNE1(q4_k, TQ4_K)
MMV_TUNE1(q6_k, TQ6_K)
MMV_TUNE1(q8_0, TQ8_0)
MMV_TUNE1(q4_1, TQ4_1)
// Q4_K with L1-non-allocating weight loads (benchmark flavour "st:")
MMV_ENTRY(q4_kst, TQ4_K_ST, 1, 4, 2, 1)
MMV_ENTRY(q4_kst, TQ4_K_ST, 1, 4, 2, 2)
