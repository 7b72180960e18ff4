// Prefill attention on tensor cores: flash-attention over the StreamingKVCache ring plus the step's new K/V,
// mma.sync.m16n8k16 (f16 inputs, f32 accumulate) with an f32 online softmax; GQA; f16 or block-scaled int8 KV.
// Same contract as attention_prefill_* / attention_split_* in attention.cu (read its header for the masks):
//   key index kk in [0, nk) of a row: ring entry kk (kk < valid = min(c, max_positions), position from
//   ring_position) or the step's staged key u = kk - valid (position c + u, causal: u <= the row's offset);
//   a key is a sink iff its position < sinks, which is iff kk < sinks, and is scored with q_sink; any other
//   key is visible iff its position > p - window and is scored with q. out = softmax(q.k / sqrt(HD)) . V.
//
// Layouts: q, q_sink, out: (T, n_heads * HD) float32; ring K/V per layer (slots, max_positions, kv_dim) half
// or int8 + (slots, max_positions, kv_dim / 32) half scales; staging (T, kv_dim) in the same format.
//
// Tiling. One block = 4 warps = MMA_BM (64) query vectors of one kv head: vector m is query row
// first + m / G, head kh * G + m % G (the G heads sharing the kv head ride in the M dimension, so a K/V tile
// in shared memory serves all of them); RPB = 64 / G rows per block (21 for G = 3: 63 vectors used). Warp w
// owns vectors 16w .. 16w+15 as one m16 MMA tile. Keys go through shared memory in tiles of MMA_BN (64):
// first the sink tiles (keys 0 .. min(sinks, nk) - 1, scored with q_sink), then the window tiles from there
// to the block's causal end. Q (either rotation) is converted to f16 with scale * log2(e) folded in and kept
// in registers as A fragments (HD / 16 k-steps x 4 regs), loaded straight from global memory; q_sink only when
// the block sees a sink, then q replaces it. S = Q K^T (B fragments by ldmatrix from K rows), masked only in
// tiles that need it (a partial tile, the causal diagonal, a window edge), online softmax in base 2, P
// converted to f16 in registers (the S accumulator layout is the A layout of the next MMA), O += P V
// (B fragments by ldmatrix.trans from V rows). Shared rows are padded by 16 bytes: ldmatrix is conflict-free.
//
// Pipeline (one K and one V buffer, as in FlashAttention-2): V_j loads while S_j is computed, K_{j+1} loads
// while O += P_j V_j runs. f16 KV: cp.async 16-byte copies (zero-filled past the tile's last key); q8 KV: the
// int8 rows and scales are loaded into registers at the same points and dequantized into the f16 tile
// (int8 * f32(scale), rounded to half) just before the barrier that publishes the tile.
//
// Launch: grid (n_kv_heads, n_row_tiles), block 128, static shared memory 2 * 64 * (HD + 8) * 2 + 256 bytes
// (35 KB at HD 128). n_row_tiles = sum over sequences of ceil(n_new / RPB); blockIdx.y walks the sequences
// in order and, within one, the row tiles last first (the longest causal ranges start first).
// Precision: f16 Q, K, V and P with f32 sums: typically ~4e-4 of max|out| off float64 with f16 KV, ~6e-4 with
// q8 KV (bench/attention_mma_error.py emulates this arithmetic; MMA_TOL in tests/gpu/test_ops_parity.py).
#include <stdint.h>

#include "async_copy.cuh"
#include "kv_common.cuh"
#include "pdl.cuh"

#define MMA_WARPS 4
#define MMA_THREADS (32 * MMA_WARPS)
#define MMA_BM (16 * MMA_WARPS)  // query vectors per block
#define MMA_BN 64                // keys per tile
#define LOG2E 1.4426950408889634f

__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

__device__ __forceinline__ void ldsm_x4(uint32_t r[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

__device__ __forceinline__ void ldsm_x4_trans(uint32_t r[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

// c (16x8 f32) += a (16x16 f16, row) * b (16x8 f16, col)
__device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);  // lo in the low 16 bits: the lower column
    return *reinterpret_cast<const uint32_t*>(&h);
}

// One K or V tile: rows kk = k0 .. k1-1 of the key list into sm[row][0 .. HD) (rows past k1 become zeros).
// issue() starts the copy, commit() finishes it in this thread (a barrier must follow before anyone reads).
template <int HD, int KVT>
struct TileLoader;

template <int HD>
struct TileLoader<HD, 0> {  // f16: cp.async, nothing held in registers
    static constexpr int CH = HD / 8;  // 16-byte chunks per row
    __device__ __forceinline__ void issue(__half (*sm)[HD + 8], const void* ring, const void* st, const __half*,
                                          const __half*, int k0, int k1, int valid, size_t ring_row0, int r0,
                                          int kv_dim, int col0) {
        const __half* rg = reinterpret_cast<const __half*>(ring);
        const __half* sg = reinterpret_cast<const __half*>(st);
#pragma unroll
        for (int i = 0; i < MMA_BN * CH / MMA_THREADS; ++i) {
            const int idx = threadIdx.x + i * MMA_THREADS;
            const int row = idx / CH, ch = idx % CH;
            const int kk = k0 + row;
            const __half* src = rg;
            int bytes = 0;
            if (kk < k1) {
                src = kk < valid ? rg + (ring_row0 + kk) * kv_dim : sg + (size_t)(r0 + kk - valid) * kv_dim;
                src += col0 + ch * 8;
                bytes = 16;
            }
            cp_async16(&sm[row][ch * 8], src, bytes);
        }
    }
    __device__ __forceinline__ void commit(__half (*)[HD + 8]) { cp_async_wait_all(); }
};

template <int HD>
struct TileLoader<HD, 1> {  // q8: int8 rows + per-32 half scales into registers, dequantized at commit
    static constexpr int CH = HD / 16;  // 16-byte chunks (16 values, inside one 32-block) per row
    static constexpr int N = MMA_BN * CH / MMA_THREADS;
    int4 raw[N];
    float scale[N];
    __device__ __forceinline__ void issue(__half (*)[HD + 8], const void* ring, const void* st, const __half* ring_s,
                                          const __half* st_s, int k0, int k1, int valid, size_t ring_row0, int r0,
                                          int kv_dim, int col0) {
        const signed char* rg = reinterpret_cast<const signed char*>(ring);
        const signed char* sg = reinterpret_cast<const signed char*>(st);
#pragma unroll
        for (int i = 0; i < N; ++i) {
            const int idx = threadIdx.x + i * MMA_THREADS;
            const int row = idx / CH, ch = idx % CH;
            const int kk = k0 + row;
            raw[i] = make_int4(0, 0, 0, 0);
            scale[i] = 0.f;
            if (kk < k1) {
                const size_t r = kk < valid ? ring_row0 + kk : (size_t)(r0 + kk - valid);
                const signed char* base = kk < valid ? rg : sg;
                const __half* sbase = kk < valid ? ring_s : st_s;
                const int col = col0 + ch * 16;
                raw[i] = *reinterpret_cast<const int4*>(base + r * kv_dim + col);
                scale[i] = __half2float(sbase[r * (kv_dim / Q8_BLOCK) + col / Q8_BLOCK]);
            }
        }
    }
    __device__ __forceinline__ void commit(__half (*sm)[HD + 8]) {
#pragma unroll
        for (int i = 0; i < N; ++i) {
            const int idx = threadIdx.x + i * MMA_THREADS;
            const int row = idx / CH, ch = idx % CH;
            const signed char* b = reinterpret_cast<const signed char*>(&raw[i]);
            uint32_t w[8];
#pragma unroll
            for (int e = 0; e < 8; ++e)
                w[e] = pack_half2((float)b[2 * e] * scale[i], (float)b[2 * e + 1] * scale[i]);
            uint4* dst = reinterpret_cast<uint4*>(&sm[row][ch * 16]);
            dst[0] = make_uint4(w[0], w[1], w[2], w[3]);
            dst[1] = make_uint4(w[4], w[5], w[6], w[7]);
        }
    }
};

// A fragments of this warp's 16 query vectors from src (q or q_sink), times qscale, as f16.
// Register i of k-step ks: rows g (i even) / g + 8 (i odd), columns 16 ks + 2 t4 (+ 8 for i >= 2).
template <int HD>
__device__ __forceinline__ void load_q_frags(uint32_t qf[HD / 16][4], const float* __restrict__ src,
                                             const size_t qoff[2], const bool act[2], int t4, float qscale) {
#pragma unroll
    for (int ks = 0; ks < HD / 16; ++ks) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            float2 x = make_float2(0.f, 0.f), y = make_float2(0.f, 0.f);
            if (act[i]) {
                const float* p = src + qoff[i] + 16 * ks + 2 * t4;
                x = *reinterpret_cast<const float2*>(p);
                y = *reinterpret_cast<const float2*>(p + 8);
            }
            qf[ks][i] = pack_half2(x.x * qscale, x.y * qscale);
            qf[ks][2 + i] = pack_half2(y.x * qscale, y.y * qscale);
        }
    }
}

template <int HD, int G, int KVT>
__device__ void attention_prefill_mma(const float* __restrict__ q, const float* __restrict__ q_sink, StepMeta meta,
                                      const void* __restrict__ ring_k, const void* __restrict__ ring_v,
                                      const __half* __restrict__ ring_ks, const __half* __restrict__ ring_vs,
                                      const void* __restrict__ st_k, const void* __restrict__ st_v,
                                      const __half* __restrict__ st_ks, const __half* __restrict__ st_vs,
                                      float* __restrict__ out, int n_kv_heads, int n_seqs, int sinks, int window,
                                      int max_positions, float scale) {
    constexpr int KS = HD / 16;       // k-steps of S = Q K^T
    constexpr int NS = MMA_BN / 8;    // n-tiles of S (keys)
    constexpr int NO = HD / 8;        // n-tiles of O (dims)
    constexpr int RPB = MMA_BM / G;   // query rows per block
    __shared__ __align__(16) __half sk[MMA_BN][HD + 8];  // (keys, HD) f16, padded rows
    __shared__ __align__(16) __half sv[MMA_BN][HD + 8];
    __shared__ int spos[MMA_BN];                         // key positions of the K tile in sk

    // this block's (sequence, row tile): tiles counted over the sequences in order, last tile first within one
    int s = 0, tile = blockIdx.y;
    for (; s < n_seqs; ++s) {
        const int nt = (meta.seq_row0[s + 1] - meta.seq_row0[s] + RPB - 1) / RPB;
        if (tile < nt) {
            tile = nt - 1 - tile;
            break;
        }
        tile -= nt;
    }
    if (s >= n_seqs) return;
    const int kh = blockIdx.x;
    const int n_heads = n_kv_heads * G;
    const int kv_dim = n_kv_heads * HD;
    const int c = meta.seq_ncached[s];
    const int r0 = meta.seq_row0[s];
    const int first = r0 + tile * RPB;                           // rows first .. last-1
    const int last = min(first + RPB, meta.seq_row0[s + 1]);
    const int valid = c < max_positions ? c : max_positions;     // ring entries
    const int nk_block = valid + (last - r0);                    // keys the last row sees (causal)
    const int nk_min = valid + (first - r0) + 1;                 // keys the first row sees
    const int ns = min(sinks, nk_block);                         // sink keys: 0 .. ns-1
    // no window mask at all if every non-sink key (position >= sinks) is inside the last row's window
    const bool need_window = c + (last - 1 - r0) - window >= sinks;
    const size_t ring_row0 = (size_t)meta.seq_slot[s] * max_positions;
    const int col0 = kh * HD;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t4 = lane & 3;
    // this thread's two query vectors (fragment rows g and g + 8 of the warp's tile)
    size_t qoff[2];
    bool act[2];
    int vpos[2], vnk[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int m = warp * 16 + g + 8 * i;
        const int r = first + m / G;
        act[i] = m < RPB * G && r < last;
        qoff[i] = (size_t)r * n_heads * HD + (size_t)(kh * G + m % G) * HD;
        vpos[i] = c + (r - r0);
        vnk[i] = valid + (r - r0) + 1;
    }
    const float qscale = scale * LOG2E;  // scores come out in base 2

    const int n_sink_tiles = (ns + MMA_BN - 1) / MMA_BN;
    const int n_tiles = n_sink_tiles + (nk_block - ns + MMA_BN - 1) / MMA_BN;
    auto tile_range = [&](int j, int& k0, int& k1) {
        if (j < n_sink_tiles) {
            k0 = j * MMA_BN;
            k1 = min(k0 + MMA_BN, ns);
        } else {
            k0 = ns + (j - n_sink_tiles) * MMA_BN;
            k1 = min(k0 + MMA_BN, nk_block);
        }
    };
    auto write_pos = [&](int k0, int k1) {
        if (threadIdx.x < MMA_BN) {
            const int kk = k0 + threadIdx.x;
            int pos = 0;
            if (kk < k1) pos = kk < valid ? ring_position(kk, c, sinks, window, max_positions) : c + (kk - valid);
            spos[threadIdx.x] = pos;
        }
    };

    uint32_t qf[KS][4];
    load_q_frags<HD>(qf, ns > 0 ? q_sink : q, qoff, act, t4, qscale);

    float o[NO][4];
#pragma unroll
    for (int n = 0; n < NO; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float mrow[2] = {-INFINITY, -INFINITY};  // running max (base-2 scores) of rows g, g + 8
    float lrow[2] = {0.f, 0.f};              // this thread's part of the running sum (its 2 columns per n-tile)

    TileLoader<HD, KVT> kld, vld;
    {
        int k0, k1;
        tile_range(0, k0, k1);
        kld.issue(sk, ring_k, st_k, ring_ks, st_ks, k0, k1, valid, ring_row0, r0, kv_dim, col0);
        write_pos(k0, k1);
    }
    // ldmatrix row addresses: lane -> matrix mi = lane / 8, row lane % 8
    const int lr = lane & 7, mi = lane >> 3;

    for (int j = 0; j < n_tiles; ++j) {
        int k0, k1;
        tile_range(j, k0, k1);
        const bool sink_tile = j < n_sink_tiles;
        if (j == n_sink_tiles && j > 0) load_q_frags<HD>(qf, q, qoff, act, t4, qscale);  // sinks done: window rotation

        kld.commit(sk);
        __syncthreads();  // K_j (and its positions) visible; every warp is done with V_{j-1}
        vld.issue(sv, ring_v, st_v, ring_vs, st_vs, k0, k1, valid, ring_row0, r0, kv_dim, col0);

        // S = Q K_j^T: (16 vectors) x (64 keys) per warp
        float sacc[NS][4];
#pragma unroll
        for (int n = 0; n < NS; ++n) sacc[n][0] = sacc[n][1] = sacc[n][2] = sacc[n][3] = 0.f;
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) {
#pragma unroll
            for (int np = 0; np < NS / 2; ++np) {
                uint32_t b[4];  // b0, b1 of key n-tile 2np, then of 2np + 1
                ldsm_x4(b, &sk[np * 16 + lr + (mi >> 1) * 8][ks * 16 + (mi & 1) * 8]);
                mma16816(sacc[2 * np], qf[ks], b[0], b[1]);
                mma16816(sacc[2 * np + 1], qf[ks], b[2], b[3]);
            }
        }

        // masks: only partial tiles, tiles crossing the first row's causal end, and window edges
        const bool full = k1 == k0 + MMA_BN && k0 + MMA_BN <= nk_min && (sink_tile || !need_window);
        if (!full) {
#pragma unroll
            for (int n = 0; n < NS; ++n) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int kj = n * 8 + 2 * t4 + (e & 1);
                    const int kk = k0 + kj;
                    const int i = e >> 1;
                    const bool vis = kk < k1 && kk < vnk[i] && (sink_tile || spos[kj] > vpos[i] - window);
                    if (!vis) sacc[n][e] = -INFINITY;
                }
            }
        }

        // online softmax (base 2): rows g (i = 0: elements 0, 1) and g + 8 (i = 1: elements 2, 3)
        uint32_t pa[MMA_BN / 16][4];  // P as A fragments of O += P V
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            float mx = -INFINITY;
#pragma unroll
            for (int n = 0; n < NS; ++n) mx = fmaxf(mx, fmaxf(sacc[n][2 * i], sacc[n][2 * i + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float m_new = fmaxf(mrow[i], mx);
            const float base = m_new == -INFINITY ? 0.f : m_new;  // a row with nothing visible yet stays at 0
            const float corr = exp2f(mrow[i] - base);             // 0 on the first visible tile
            mrow[i] = m_new;
            float sum = 0.f;
#pragma unroll
            for (int n = 0; n < NS; ++n) {
                sacc[n][2 * i] = exp2f(sacc[n][2 * i] - base);
                sacc[n][2 * i + 1] = exp2f(sacc[n][2 * i + 1] - base);
                sum += sacc[n][2 * i] + sacc[n][2 * i + 1];
            }
            lrow[i] = lrow[i] * corr + sum;
#pragma unroll
            for (int n = 0; n < NO; ++n) {
                o[n][2 * i] *= corr;
                o[n][2 * i + 1] *= corr;
            }
        }
#pragma unroll
        for (int kc = 0; kc < MMA_BN / 16; ++kc) {
            pa[kc][0] = pack_half2(sacc[2 * kc][0], sacc[2 * kc][1]);          // row g, keys 16kc + 2t4
            pa[kc][1] = pack_half2(sacc[2 * kc][2], sacc[2 * kc][3]);          // row g + 8
            pa[kc][2] = pack_half2(sacc[2 * kc + 1][0], sacc[2 * kc + 1][1]);  // row g, keys + 8
            pa[kc][3] = pack_half2(sacc[2 * kc + 1][2], sacc[2 * kc + 1][3]);  // row g + 8, keys + 8
        }

        vld.commit(sv);
        __syncthreads();  // V_j visible; every warp is done with K_j and its positions
        if (j + 1 < n_tiles) {
            int n0, n1;
            tile_range(j + 1, n0, n1);
            kld.issue(sk, ring_k, st_k, ring_ks, st_ks, n0, n1, valid, ring_row0, r0, kv_dim, col0);
            write_pos(n0, n1);
        }

        // O += P V_j
#pragma unroll
        for (int kc = 0; kc < MMA_BN / 16; ++kc) {
#pragma unroll
            for (int dp = 0; dp < NO / 2; ++dp) {
                uint32_t b[4];  // b0, b1 of dim n-tile 2dp, then of 2dp + 1
                ldsm_x4_trans(b, &sv[kc * 16 + lr + (mi & 1) * 8][dp * 16 + (mi >> 1) * 8]);
                mma16816(o[2 * dp], pa[kc], b[0], b[1]);
                mma16816(o[2 * dp + 1], pa[kc], b[2], b[3]);
            }
        }
    }

    // out = O / l: the full row sum is the sum over the quad's 4 lanes
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        float l = lrow[i];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        if (!act[i]) continue;
        const float inv = 1.0f / l;
        float* dst = out + qoff[i] + 2 * t4;
#pragma unroll
        for (int n = 0; n < NO; ++n)
            *reinterpret_cast<float2*>(dst + 8 * n) = make_float2(o[n][2 * i] * inv, o[n][2 * i + 1] * inv);
    }
}

#define MMA_ENTRY(HD, G, KVT, SUFFIX)                                                                               \
    extern "C" __global__ void __launch_bounds__(MMA_THREADS) attention_prefill_mma_##HD##_##G##_##SUFFIX(           \
        const float* __restrict__ q, const float* __restrict__ q_sink, StepMeta meta, const void* __restrict__ ring_k, \
        const void* __restrict__ ring_v, const __half* __restrict__ ring_ks, const __half* __restrict__ ring_vs,      \
        const void* __restrict__ st_k, const void* __restrict__ st_v, const __half* __restrict__ st_ks,             \
        const __half* __restrict__ st_vs, float* __restrict__ out, int n_kv_heads, int n_seqs, int sinks,           \
        int window, int max_positions, float scale) { pdl_start();                                                  \
        attention_prefill_mma<HD, G, KVT>(q, q_sink, meta, ring_k, ring_v, ring_ks, ring_vs, st_k, st_v, st_ks,      \
                                          st_vs, out, n_kv_heads, n_seqs, sinks, window, max_positions, scale);     \
    }
#define MMA_ENTRIES(HD, G) MMA_ENTRY(HD, G, 0, f16) MMA_ENTRY(HD, G, 1, q8)
MMA_ENTRIES(64, 1) MMA_ENTRIES(64, 2) MMA_ENTRIES(64, 3) MMA_ENTRIES(64, 4) MMA_ENTRIES(64, 8)
MMA_ENTRIES(128, 1) MMA_ENTRIES(128, 2) MMA_ENTRIES(128, 3) MMA_ENTRIES(128, 4) MMA_ENTRIES(128, 8)
