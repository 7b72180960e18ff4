// Quantized matrix x few vectors (the decode path): out (n_rows, N) f32 = x (n_rows, K) @ W.T, n_rows <= 8.
//
// Math: W stays in its GGML type (upload layout in quant_blocks.cuh). For the quantized types x was first
// quantized per 32 values to int8 (quantize_act.cu: xq, xds) and each weight "unit" (32 values behind one
// 16-byte weight load) is dotted with __dp4a on the integer quants, then scaled in f32 (llama.cpp's MMVQ
// idea). F16/F32 weights use the f32 activations xf directly.
//
// Launch shape: 128 threads per block; a block owns R rows (R in {1, 2, 4}), i.e. 128/R threads per row
// stride over the row's units, each thread issuing UNR units' loads before the first use (loads in flight
// per thread = UNR x 16 bytes). grid.x = ceil(N / R). A thread accumulates NC (>= n_rows) columns at once, so
// every weight byte is read once for all the columns; partial sums meet by warp shuffles + shared memory.
// Activations are read through L1 (every row of a block reuses them); weights through the non-allocating
// read-only path.
//
// Entries: matmul_vec_<type>_c<NC> (production tile per type) and matmul_vec_<type>_c1_r<R>u<UNR> (tuning
// variants for the benchmark). Signature for all:
//   (q, s, h, N, K, xq int8 (n_rows, K), xds float2 (n_rows, K/32), xf f32 (n_rows, K), out f32 (n_rows, N), n_rows)
#include "quant_blocks.cuh"

template <class T, int NC, int R, int UNR>
__device__ __forceinline__ void mmv_body(const WPtrs& w, const int8_t* __restrict__ xq,
                                         const float2* __restrict__ xds, const float* __restrict__ xf,
                                         float* __restrict__ out, int n_rows) {
    constexpr int G = 128 / R;  // threads per row (>= 32)
    const int group = threadIdx.x / G, gt = threadIdx.x % G;
    const int row = blockIdx.x * R + group;
    const int K = w.K;
    const int units = K / T::VU;
    float acc[NC];
#pragma unroll
    for (int c = 0; c < NC; ++c) acc[c] = 0.f;

    if (row < w.N) {
        for (int u0 = gt; u0 < units; u0 += G * UNR) {
            typename T::U r[UNR];
#pragma unroll
            for (int i = 0; i < UNR; ++i) {
                const int u = u0 + i * G;
                if (u < units) r[i] = T::load_u(w, row, u);
            }
#pragma unroll
            for (int i = 0; i < UNR; ++i) {
                const int u = u0 + i * G;
                if (u < units) {
#pragma unroll
                    for (int c = 0; c < NC; ++c) {
                        if (c < n_rows) {
                            const XCol x{xq + (size_t)c * K, xds + (size_t)c * (K / 32), xf + (size_t)c * K};
                            acc[c] += T::dot_u(r[i], x, u);
                        }
                    }
                }
            }
        }
    }
#pragma unroll
    for (int c = 0; c < NC; ++c) acc[c] = warp_sum(acc[c]);

    if (G == 32) {
        if (gt == 0 && row < w.N) {
#pragma unroll
            for (int c = 0; c < NC; ++c)
                if (c < n_rows) out[(size_t)c * w.N + row] = acc[c];
        }
    } else {
        constexpr int WPG = G / 32;  // warps per row group
        __shared__ float part[R][WPG][NC];
        const int wig = gt >> 5, lane = gt & 31;
        if (lane == 0) {
#pragma unroll
            for (int c = 0; c < NC; ++c) part[group][wig][c] = acc[c];
        }
        __syncthreads();
        if (gt < NC && gt < n_rows && row < w.N) {
            float s = 0.f;
#pragma unroll
            for (int k = 0; k < WPG; ++k) s += part[group][k][gt];
            out[(size_t)gt * w.N + row] = s;
        }
    }
}

#define MMV_ENTRY(name, T, NC, R, UNR)                                                                     \
    extern "C" __global__ void __launch_bounds__(128) name(                                                \
        const uint8_t* q, const uint8_t* s, const uint8_t* h, int N, int K, const int8_t* xq,              \
        const float2* xds, const float* xf, float* out, int n_rows) {                                      \
        const WPtrs w{q, s, h, N, K};                                                                      \
        mmv_body<T, NC, R, UNR>(w, xq, xds, xf, out, n_rows);                                              \
    }

// production tiles: 4 rows per block (one warp per row), 4 units in flight per thread
#define MMV_PROD(suffix, T)                                 \
    MMV_ENTRY(matmul_vec_##suffix##_c1, T, 1, 4, 4)         \
    MMV_ENTRY(matmul_vec_##suffix##_c2, T, 2, 4, 4)         \
    MMV_ENTRY(matmul_vec_##suffix##_c4, T, 4, 4, 2)         \
    MMV_ENTRY(matmul_vec_##suffix##_c8, T, 8, 4, 2)
FOR_EACH_WTYPE(MMV_PROD)

// tuning variants (benchmark only)
#define MMV_VARIANTS(suffix, T)                              \
    MMV_ENTRY(matmul_vec_##suffix##_c1_r1u1, T, 1, 1, 1)    \
    MMV_ENTRY(matmul_vec_##suffix##_c1_r1u2, T, 1, 1, 2)    \
    MMV_ENTRY(matmul_vec_##suffix##_c1_r2u1, T, 1, 2, 1)    \
    MMV_ENTRY(matmul_vec_##suffix##_c1_r2u2, T, 1, 2, 2)    \
    MMV_ENTRY(matmul_vec_##suffix##_c1_r2u4, T, 1, 2, 4)    \
    MMV_ENTRY(matmul_vec_##suffix##_c1_r4u1, T, 1, 4, 1)    \
    MMV_ENTRY(matmul_vec_##suffix##_c1_r4u2, T, 1, 4, 2)    \
    MMV_ENTRY(matmul_vec_##suffix##_c1_r4u8, T, 1, 4, 8)
MMV_VARIANTS(q4_k, TQ4_K)
MMV_VARIANTS(q6_k, TQ6_K)
MMV_VARIANTS(q8_0, TQ8_0)
