// Quantized matrix x many vectors (prefill / batched decode): out (M, N) f32 = x (M, K) @ W.T on tensor
// cores, W in its GGML upload layout (quant_blocks.cuh), x in f16 (cuda_matmul.py converts the f32
// activations once per input with to_f16, the same rounding the MMA operands always had), K a multiple of 32.
//
// Math: per (BM x 128) output tile, loop over this block's K range in steps of 64: the x tile (BM x 64 f16)
// and the W tile (128 rows x 64, dequantized by T::load_c/dequant_c to f16) are written to shared memory,
// then 8 warps multiply them with wmma 16x16x16 (f16 in, f32 accumulate). The next step's global loads are
// issued into registers before the current step's MMAs (register double-buffering), so memory latency
// overlaps math. Rows/cols outside (M, N) and the K tail (a 32-value half step) are zero-filled; stores are
// bounds-checked through a per-warp 16x16 staging tile.
//
// Split-K (few rows: batched decode): grid.z = S blocks share one output tile, block z covering K values
// [z * ksplit, min(K, (z + 1) * ksplit)) (ksplit a multiple of 64). With S > 1 each block writes its partial
// tile to out + z * M * N and splitk_reduce sums the S partials in a fixed order (deterministic).
//
// Memory layout in shared memory: As[BM][72] half (x rows), Bs[128][72] half (W rows = B^T), 8 halves of
// row padding so the 16-byte fragment loads of 8 consecutive rows hit distinct banks.
// Launch shape: 256 threads (8 warps: BM/32 along M x 256/BM along N), grid = (ceil(N/128), ceil(M/BM), S).
// Entries: matmul_tiled_<type>_m<BM>(q, s, h, N, K, xh, M, out, ksplit), BM in {32, 64, 128}; the 128-row
// tile is capped at 128 registers per thread (2 blocks per SM).
#include <mma.h>

#include "quant_blocks.cuh"

using namespace nvcuda;

template <class T, int BM>
__device__ __forceinline__ void mmt_body(const WPtrs& w, const half* __restrict__ xh, int M, float* __restrict__ out,
                                         int ksplit) {
    constexpr int BN = 128, BK = 64, LDS = BK + 8;
    constexpr int WARPS_M = BM / 32, WARPS_N = 8 / WARPS_M;
    constexpr int WN = BN / WARPS_N, FN = WN / 16;  // warp tile 32 x WN
    constexpr int A_PER = BM * BK / 8 / 256;        // 16-byte pieces (8 halves) of x per thread per step
    __shared__ __align__(128) half As[BM * LDS];
    __shared__ __align__(128) half Bs[BN * LDS];

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int wm = warp / WARPS_N, wn = warp % WARPS_N;
    const int n0 = blockIdx.x * BN, m0 = blockIdx.y * BM;
    const int K = w.K, N = w.N;
    const int kbeg = blockIdx.z * ksplit, kend = min(K, kbeg + ksplit);
    if (gridDim.z > 1) out += (size_t)blockIdx.z * M * N;  // this block's partial tile
    const int brow = tid >> 1, bsub = tid & 1;  // this thread's W chunk: row n0+brow, values k0 + 32*bsub + (0..31)
    const bool brow_ok = n0 + brow < N;

    uint4 areg[A_PER];
    typename T::C creg;
    bool c_ok = false;

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][FN];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < FN; ++j) wmma::fill_fragment(acc[i][j], 0.f);

    auto load = [&](int k0) {
#pragma unroll
        for (int i = 0; i < A_PER; ++i) {
            const int idx = i * 256 + tid, r = idx >> 3, c8 = idx & 7;
            const int gm = m0 + r, gk = k0 + 8 * c8;
            areg[i] = (gm < M && gk < kend) ? __ldg(reinterpret_cast<const uint4*>(xh + (size_t)gm * K + gk))
                                            : make_uint4(0u, 0u, 0u, 0u);
        }
        const int kc = (k0 >> 5) + bsub;
        c_ok = brow_ok && kc * 32 < kend;
        if (c_ok) creg = T::load_c(w, n0 + brow, kc);
    };
    auto store = [&](int k0) {
#pragma unroll
        for (int i = 0; i < A_PER; ++i) {
            const int idx = i * 256 + tid, r = idx >> 3, c8 = idx & 7;
            *reinterpret_cast<uint4*>(&As[r * LDS + 8 * c8]) = areg[i];
        }
        float v[32];
        if (c_ok) {
            Deq<T>::run(creg, (k0 >> 5) + bsub, v);
        } else {
#pragma unroll
            for (int i = 0; i < 32; ++i) v[i] = 0.f;
        }
        half* dst = &Bs[brow * LDS + 32 * bsub];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            uint4 pk;
            __half2 t0 = __floats2half2_rn(v[8 * i + 0], v[8 * i + 1]);
            __half2 t1 = __floats2half2_rn(v[8 * i + 2], v[8 * i + 3]);
            __half2 t2 = __floats2half2_rn(v[8 * i + 4], v[8 * i + 5]);
            __half2 t3 = __floats2half2_rn(v[8 * i + 6], v[8 * i + 7]);
            pk.x = *reinterpret_cast<const uint32_t*>(&t0);
            pk.y = *reinterpret_cast<const uint32_t*>(&t1);
            pk.z = *reinterpret_cast<const uint32_t*>(&t2);
            pk.w = *reinterpret_cast<const uint32_t*>(&t3);
            *reinterpret_cast<uint4*>(dst + 8 * i) = pk;
        }
    };

    if (kbeg < kend) load(kbeg);
    for (int k0 = kbeg; k0 < kend; k0 += BK) {
        store(k0);
        __syncthreads();
        if (k0 + BK < kend) load(k0 + BK);
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> a[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::col_major> b[FN];
#pragma unroll
            for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], As + (wm * 32 + 16 * i) * LDS + 16 * kk, LDS);
#pragma unroll
            for (int j = 0; j < FN; ++j) wmma::load_matrix_sync(b[j], Bs + (wn * WN + 16 * j) * LDS + 16 * kk, LDS);
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < FN; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }

    // epilogue: each warp stages one 16x16 fragment at a time in (reused) shared memory, then bounds-checked stores
    float* stage = reinterpret_cast<float*>(Bs) + warp * 256;  // (16, 16) f32 per warp (Bs holds 8 of them)
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < FN; ++j) {
            wmma::store_matrix_sync(stage, acc[i][j], 16, wmma::mem_row_major);
            __syncwarp();
#pragma unroll
            for (int t = 0; t < 8; ++t) {
                const int e = lane + 32 * t, r = e >> 4, c = e & 15;
                const int gm = m0 + wm * 32 + 16 * i + r, gn = n0 + wn * WN + 16 * j + c;
                if (gm < M && gn < N) out[(size_t)gm * N + gn] = stage[e];
            }
            __syncwarp();
        }
    }
}

#define MMT_ENTRY(suffix, T)                                                                                    \
    extern "C" __global__ void __launch_bounds__(256) matmul_tiled_##suffix##_m128(                             \
        const uint8_t* q, const uint8_t* s, const uint8_t* h, int N, int K, const half* xh, int M, float* out,   \
        int ksplit) {                                                                                           \
        mmt_body<T, 128>(WPtrs{q, s, h, N, K}, xh, M, out, ksplit);                                             \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(256) matmul_tiled_##suffix##_m64(                              \
        const uint8_t* q, const uint8_t* s, const uint8_t* h, int N, int K, const half* xh, int M, float* out,   \
        int ksplit) {                                                                                           \
        mmt_body<T, 64>(WPtrs{q, s, h, N, K}, xh, M, out, ksplit);                                              \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(256) matmul_tiled_##suffix##_m32(                              \
        const uint8_t* q, const uint8_t* s, const uint8_t* h, int N, int K, const half* xh, int M, float* out,   \
        int ksplit) {                                                                                           \
        mmt_body<T, 32>(WPtrs{q, s, h, N, K}, xh, M, out, ksplit);                                              \
    }
FOR_EACH_WTYPE(MMT_ENTRY)

// ---------------------------------------------------------------------------------------------------------
// Pipelined variant for the k-quants (matmul_tiled_<type>_m<BM>_p; Q4_K, Q5_K, Q6_K): same tiles, math, split-K
// and output as above, but global loads run NST - 1 steps ahead of the math through cp.async into shared
// memory, so a block keeps several steps of weight and x bytes in flight instead of one (the loop above waits
// on each step's loads). Per step a thread copies the pieces of its 32-value weight chunk (T::piece, what
// T::load_c would load) into its own slots of the raw ring and its share of the x tile into the x ring; after
// the step's copies have landed it rebuilds C from its slots (T::from_pieces), dequantizes into Bs, and the
// 8 warps run the MMAs from the x ring and Bs.
// Dynamic shared memory (cuda_matmul.py's PIPE table must match): raw ring NST x 256 threads x CPW int4
// (CPW = T::CP + T::CD), x ring NST x BM x 72 half, Bs 128 x 72 half.
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// copy `bytes` (16) from global to shared, zero-filling the rest of the 16 (bytes = 0: all zeros, nothing read)
__device__ __forceinline__ void cp16(void* dst, const void* src, int bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp4(void* dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_u32(dst)), "l"(src));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

template <class T, int BM, int NST>
__device__ __forceinline__ void mmp_body(const WPtrs& w, const half* __restrict__ xh, int M, float* __restrict__ out,
                                         int ksplit) {
    constexpr int BN = 128, BK = 64, LDS = BK + 8;
    constexpr int WARPS_M = BM / 32, WARPS_N = 8 / WARPS_M;
    constexpr int WN = BN / WARPS_N, FN = WN / 16;
    constexpr int A_PER = BM * BK / 8 / 256;
    constexpr int CPW = T::CP + (T::CD ? 1 : 0);  // 16-byte slots per thread per stage
    extern __shared__ __align__(128) uint8_t smem[];
    int4* raw = reinterpret_cast<int4*>(smem);                                     // [NST][256][CPW]
    half* As = reinterpret_cast<half*>(smem + (size_t)NST * 256 * CPW * 16);      // [NST][BM * LDS]
    half* Bs = As + NST * BM * LDS;                                               // [BN * LDS]

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int wm = warp / WARPS_N, wn = warp % WARPS_N;
    const int n0 = blockIdx.x * BN, m0 = blockIdx.y * BM;
    const int K = w.K, N = w.N;
    const int kbeg = blockIdx.z * ksplit, kend = min(K, kbeg + ksplit);
    if (gridDim.z > 1) out += (size_t)blockIdx.z * M * N;
    const int brow = tid >> 1, bsub = tid & 1;
    const bool brow_ok = n0 + brow < N;
    const int nsteps = kend > kbeg ? (kend - kbeg + BK - 1) / BK : 0;

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][FN];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < FN; ++j) wmma::fill_fragment(acc[i][j], 0.f);

    auto issue = [&](int step) {  // this thread's copies of K step `step` into ring slot step % NST
        const int st = step % NST, k0 = kbeg + step * BK;
        half* as = As + st * BM * LDS;
#pragma unroll
        for (int i = 0; i < A_PER; ++i) {
            const int idx = i * 256 + tid, r = idx >> 3, c8 = idx & 7;
            const int gm = m0 + r, gk = k0 + 8 * c8;
            const bool ok = gm < M && gk < kend;
            cp16(&as[r * LDS + 8 * c8], ok ? xh + (size_t)gm * K + gk : xh, ok ? 16 : 0);
        }
        const int kc = (k0 >> 5) + bsub;
        if (brow_ok && kc * 32 < kend) {
            int4* slot = raw + ((size_t)st * 256 + tid) * CPW;
#pragma unroll
            for (int i = 0; i < T::CP; ++i) cp16(slot + i, T::piece(w, n0 + brow, kc, i), 16);
            if (T::CD) cp4(slot + T::CP, T::piece_d(w, n0 + brow, kc));
        }
    };

#pragma unroll
    for (int s = 0; s < NST - 1; ++s) {
        if (s < nsteps) issue(s);
        cp_commit();  // empty groups keep the group count in step
    }
    for (int it = 0; it < nsteps; ++it) {
        cp_wait<NST - 2>();  // this thread's copies of step `it` have landed
        __syncthreads();     // ... everyone's (the x tile); and step it-1's MMAs are done (Bs, ring slot reuse)
        if (it + NST - 1 < nsteps) issue(it + NST - 1);
        cp_commit();
        const int st = it % NST, k0 = kbeg + it * BK, kc = (k0 >> 5) + bsub;
        float v[32];
        if (brow_ok && kc * 32 < kend) {
            const typename T::C c = T::from_pieces(raw + ((size_t)st * 256 + tid) * CPW, w, n0 + brow, kc);
            Deq<T>::run(c, kc, v);
        } else {
#pragma unroll
            for (int i = 0; i < 32; ++i) v[i] = 0.f;
        }
        half* dst = &Bs[brow * LDS + 32 * bsub];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            uint4 pk;
            __half2 t0 = __floats2half2_rn(v[8 * i + 0], v[8 * i + 1]);
            __half2 t1 = __floats2half2_rn(v[8 * i + 2], v[8 * i + 3]);
            __half2 t2 = __floats2half2_rn(v[8 * i + 4], v[8 * i + 5]);
            __half2 t3 = __floats2half2_rn(v[8 * i + 6], v[8 * i + 7]);
            pk.x = *reinterpret_cast<const uint32_t*>(&t0);
            pk.y = *reinterpret_cast<const uint32_t*>(&t1);
            pk.z = *reinterpret_cast<const uint32_t*>(&t2);
            pk.w = *reinterpret_cast<const uint32_t*>(&t3);
            *reinterpret_cast<uint4*>(dst + 8 * i) = pk;
        }
        __syncthreads();
        const half* as = As + st * BM * LDS;
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> a[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::col_major> b[FN];
#pragma unroll
            for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], as + (wm * 32 + 16 * i) * LDS + 16 * kk, LDS);
#pragma unroll
            for (int j = 0; j < FN; ++j) wmma::load_matrix_sync(b[j], Bs + (wn * WN + 16 * j) * LDS + 16 * kk, LDS);
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < FN; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
        }
    }
    cp_wait<0>();
    __syncthreads();  // the last step's MMAs are done before Bs becomes the epilogue's staging area

    float* stage = reinterpret_cast<float*>(Bs) + warp * 256;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < FN; ++j) {
            wmma::store_matrix_sync(stage, acc[i][j], 16, wmma::mem_row_major);
            __syncwarp();
#pragma unroll
            for (int t = 0; t < 8; ++t) {
                const int e = lane + 32 * t, r = e >> 4, c = e & 15;
                const int gm = m0 + wm * 32 + 16 * i + r, gn = n0 + wn * WN + 16 * j + c;
                if (gm < M && gn < N) out[(size_t)gm * N + gn] = stage[e];
            }
            __syncwarp();
        }
    }
}

// NST per type: 4 stages for Q4_K (3 slots a thread), 3 for Q5_K / Q6_K (5-6 slots)
#define MMP_ENTRY(suffix, T, BM, NST)                                                                          \
    extern "C" __global__ void __launch_bounds__(256) matmul_tiled_##suffix##_m##BM##_p(                       \
        const uint8_t* q, const uint8_t* s, const uint8_t* h, int N, int K, const half* xh, int M, float* out,  \
        int ksplit) {                                                                                          \
        mmp_body<T, BM, NST>(WPtrs{q, s, h, N, K}, xh, M, out, ksplit);                                        \
    }
#define MMP_TYPE(suffix, T, NST) MMP_ENTRY(suffix, T, 32, NST) MMP_ENTRY(suffix, T, 64, NST) MMP_ENTRY(suffix, T, 128, NST)
MMP_TYPE(q4_k, TQ4_K, 4)
MMP_TYPE(q5_k, TQ5_K, 3)
MMP_TYPE(q6_k, TQ6_K, 3)

// x f32 (n,) -> f16 (n,), round to nearest even (the tiled kernel's A operand); n a multiple of 4.
extern "C" __global__ void __launch_bounds__(256) to_f16(const float* __restrict__ x, half* __restrict__ y, int n4) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;  // float4 index
    if (i < n4) {
        const float4 v = __ldg(reinterpret_cast<const float4*>(x) + i);
        const __half2 lo = __floats2half2_rn(v.x, v.y), hi = __floats2half2_rn(v.z, v.w);
        uint2 pk;
        pk.x = *reinterpret_cast<const uint32_t*>(&lo);
        pk.y = *reinterpret_cast<const uint32_t*>(&hi);
        reinterpret_cast<uint2*>(y)[i] = pk;
    }
}

// out (M*N,) = sum_{z < S} part[z] (M*N,), z ascending (the split-K partials of matmul_tiled, same order every run).
extern "C" __global__ void __launch_bounds__(256) splitk_reduce(const float* __restrict__ part, float* __restrict__ out,
                                                               int mn, int S) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < mn) {
        float s = part[i];
        for (int z = 1; z < S; ++z) s += part[(size_t)z * mn + i];
        out[i] = s;
    }
}
