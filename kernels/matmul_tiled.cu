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
// Entries: matmul_tiled_<type>_m<BM>(q, s, h, N, K, xh, M, out, ksplit), BM in {32, 64, 128}. Registers: ~123-128
// per thread for BM 32/64 (2 blocks per SM), ~160-250 for BM 128 (1 block). Tried and dropped on an H100
// (bench/RESULTS.md): a cp.async ring running 3-4 steps ahead (5-25 % slower), and register caps for 3-4 blocks
// per SM on the 32-row tile (spills; 6-40 % slower).
#include <mma.h>

#include "quant_blocks.cuh"
#include "pdl.cuh"

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
        int ksplit) { pdl_start();                                                                              \
        mmt_body<T, 128>(WPtrs{q, s, h, N, K}, xh, M, out, ksplit);                                             \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(256) matmul_tiled_##suffix##_m64(                              \
        const uint8_t* q, const uint8_t* s, const uint8_t* h, int N, int K, const half* xh, int M, float* out,   \
        int ksplit) { pdl_start();                                                                              \
        mmt_body<T, 64>(WPtrs{q, s, h, N, K}, xh, M, out, ksplit);                                              \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(256) matmul_tiled_##suffix##_m32(                              \
        const uint8_t* q, const uint8_t* s, const uint8_t* h, int N, int K, const half* xh, int M, float* out,   \
        int ksplit) { pdl_start();                                                                              \
        mmt_body<T, 32>(WPtrs{q, s, h, N, K}, xh, M, out, ksplit);                                              \
    }
FOR_EACH_WTYPE(MMT_ENTRY)

// x f32 (n,) -> f16 (n,), round to nearest even (the tiled kernel's A operand); n a multiple of 4.
extern "C" __global__ void __launch_bounds__(256) to_f16(const float* __restrict__ x, half* __restrict__ y, int n4) {
    pdl_start();
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
    pdl_start();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < mn) {
        float s = part[i];
        for (int z = 1; z < S; ++z) s += part[(size_t)z * mn + i];
        out[i] = s;
    }
}
