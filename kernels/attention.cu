// Attention over the StreamingKVCache ring plus the step's new K/V (decode and prefill chunks), GQA,
// f16 or block-scaled int8 KV. Split over key positions (flash-decoding), then a combine pass.
//
// For row t of sequence s (position p = ncached[s] + i, i = t - row0[s]) and query head h (kv head h / G):
//   keys  = the ring's valid entries (min(c, max_positions) of them, cache order; c = ncached[s])
//         + the step's new keys of rows row0[s] .. t (from staging, already in storage format)
//   key at position pos is a sink if pos < sinks (scored with q_sink), a window key if p - window < pos
//   (scored with q); others are invisible. score = (q . k) / sqrt(head_dim); out = softmax(score) . V
// Partials: for each (t, h, split): running max m, sum l and acc[HD] (unnormalized). attention_combine
// merges the splits into out (T, n_heads * HD).
//
// Layouts: q, q_sink, out: (T, n_heads * HD) float32. Ring K/V per layer: (slots, max_positions, kv_dim)
// half or int8 (+ (slots, max_positions, kv_dim / 32) half scales). Staging: (T, kv_dim) in the same format.
// Launch attention_partial_*: grid (n_splits, n_kv_heads, T), block 128. Each group of LPK = HD / 8 lanes
// handles one key at a time, each lane 8 consecutive values (one 16-byte f16 load or one 8-byte int8 load);
// groups stride over the split's keys; every lane of a warp runs the same number of iterations so the
// group shuffles stay convergent. attention_combine: grid (T, n_heads), block HD.
#include "act_quant.cuh"
#include "kv_common.cuh"
#include "pdl.cuh"

#define ATT_THREADS 128

template <int KVT>  // 0: f16, 1: q8
__device__ __forceinline__ void load8(const void* base, const __half* scales, size_t row, int kv_dim, int col,
                                      float out[8]) {
    if (KVT == 0) {
        const uint4 raw = *reinterpret_cast<const uint4*>(reinterpret_cast<const __half*>(base) + row * kv_dim + col);
        const __half2* h2 = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const float2 f = __half22float2(h2[e]);
            out[2 * e] = f.x;
            out[2 * e + 1] = f.y;
        }
    } else {
        const uint2 raw = *reinterpret_cast<const uint2*>(reinterpret_cast<const signed char*>(base) + row * kv_dim + col);
        const signed char* b = reinterpret_cast<const signed char*>(&raw);
        const float sc = __half2float(scales[row * (kv_dim / Q8_BLOCK) + col / Q8_BLOCK]);
#pragma unroll
        for (int e = 0; e < 8; ++e) out[e] = (float)b[e] * sc;
    }
}

template <int HD, int G, int KVT>
__device__ void attention_partial(const float* __restrict__ q, const float* __restrict__ q_sink, StepMeta meta,
                                  const void* __restrict__ ring_k, const void* __restrict__ ring_v,
                                  const __half* __restrict__ ring_ks, const __half* __restrict__ ring_vs,
                                  const void* __restrict__ st_k, const void* __restrict__ st_v,
                                  const __half* __restrict__ st_ks, const __half* __restrict__ st_vs,
                                  float* __restrict__ part_ml, float* __restrict__ part_acc,
                                  int n_kv_heads, int sinks, int window, int max_positions, float scale) {
    constexpr int LPK = HD / 8;                 // lanes per key
    constexpr int GROUPS = ATT_THREADS / LPK;   // keys in flight per block
    constexpr int KPW = 32 / LPK;               // keys per warp per iteration
    const int sp = blockIdx.x, n_splits = gridDim.x;
    const int kh = blockIdx.y, t = blockIdx.z;
    const int n_heads = n_kv_heads * G;
    const int kv_dim = n_kv_heads * HD;
    const int s = meta.row_seq[t];
    const int c = meta.seq_ncached[s];
    const int r0 = meta.seq_row0[s];
    const int p = c + (t - r0);
    const int slot = meta.seq_slot[s];
    const int valid = c < max_positions ? c : max_positions;
    const int nk = valid + (t - r0) + 1;
    const int chunk = (nk + n_splits - 1) / n_splits;
    const int k0 = sp * chunk;
    const int k1 = min(nk, k0 + chunk);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int grp = threadIdx.x / LPK, gl = threadIdx.x % LPK;
    const int col = kh * HD + gl * 8;  // this lane's first value within a K/V row

    float qw[G][8], qs[G][8];
#pragma unroll
    for (int h = 0; h < G; ++h) {
        const size_t qoff = (size_t)t * n_heads * HD + (size_t)(kh * G + h) * HD + gl * 8;
        const float4 a = *reinterpret_cast<const float4*>(q + qoff);
        const float4 b = *reinterpret_cast<const float4*>(q + qoff + 4);
        qw[h][0] = a.x; qw[h][1] = a.y; qw[h][2] = a.z; qw[h][3] = a.w;
        qw[h][4] = b.x; qw[h][5] = b.y; qw[h][6] = b.z; qw[h][7] = b.w;
        const float4 c4 = *reinterpret_cast<const float4*>(q_sink + qoff);
        const float4 d4 = *reinterpret_cast<const float4*>(q_sink + qoff + 4);
        qs[h][0] = c4.x; qs[h][1] = c4.y; qs[h][2] = c4.z; qs[h][3] = c4.w;
        qs[h][4] = d4.x; qs[h][5] = d4.y; qs[h][6] = d4.z; qs[h][7] = d4.w;
    }
    float m[G], l[G], acc[G][8];
#pragma unroll
    for (int h = 0; h < G; ++h) {
        m[h] = -INFINITY;
        l[h] = 0.f;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[h][e] = 0.f;
    }

    // Warp-uniform loop: iteration `it` gives warp w the keys k0 + it*GROUPS + w*KPW + (lane / LPK).
    const int n_iter = (k1 - k0 + GROUPS - 1) / GROUPS;
    for (int it = 0; it < (k1 > k0 ? n_iter : 0); ++it) {
        const int kk = k0 + it * GROUPS + warp * KPW + lane / LPK;
        const bool in_range = kk < k1;
        int pos = 0;
        float kf[8], vf[8];
        if (in_range) {
            if (kk < valid) {
                pos = ring_position(kk, c, sinks, window, max_positions);
                const size_t row = (size_t)slot * max_positions + kk;
                load8<KVT>(ring_k, ring_ks, row, kv_dim, col, kf);
                load8<KVT>(ring_v, ring_vs, row, kv_dim, col, vf);
            } else {
                const int u = kk - valid;
                pos = c + u;
                const size_t row = (size_t)(r0 + u);
                load8<KVT>(st_k, st_ks, row, kv_dim, col, kf);
                load8<KVT>(st_v, st_vs, row, kv_dim, col, vf);
            }
        } else {
#pragma unroll
            for (int e = 0; e < 8; ++e) { kf[e] = 0.f; vf[e] = 0.f; }
        }
        const bool is_sink = pos < sinks;
        const bool visible = in_range && (is_sink || pos > p - window);
#pragma unroll
        for (int h = 0; h < G; ++h) {
            float d = 0.f;
#pragma unroll
            for (int e = 0; e < 8; ++e) d += (is_sink ? qs[h][e] : qw[h][e]) * kf[e];
#pragma unroll
            for (int o = LPK / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
            if (visible) {
                const float sc = d * scale;
                const float m_new = fmaxf(m[h], sc);
                const float corr = __expf(m[h] - m_new);  // exp(-inf) = 0 on the first key
                const float pw = __expf(sc - m_new);
                l[h] = l[h] * corr + pw;
#pragma unroll
                for (int e = 0; e < 8; ++e) acc[h][e] = acc[h][e] * corr + pw * vf[e];
                m[h] = m_new;
            }
        }
    }

    // Merge the GROUPS partial states of this block through shared memory.
    __shared__ float sm_m[GROUPS][G];
    __shared__ float sm_l[GROUPS][G];
    __shared__ float sm_acc[GROUPS][G][HD];
#pragma unroll
    for (int h = 0; h < G; ++h) {
        if (gl == 0) { sm_m[grp][h] = m[h]; sm_l[grp][h] = l[h]; }
#pragma unroll
        for (int e = 0; e < 8; ++e) sm_acc[grp][h][gl * 8 + e] = acc[h][e];
    }
    __syncthreads();
    for (int j = threadIdx.x; j < G * HD; j += ATT_THREADS) {
        const int h = j / HD, e = j - h * HD;
        float M = -INFINITY;
        for (int g = 0; g < GROUPS; ++g) M = fmaxf(M, sm_m[g][h]);
        float L = 0.f, A = 0.f;
        if (M != -INFINITY) {
            for (int g = 0; g < GROUPS; ++g) {
                const float mg = sm_m[g][h];
                if (mg == -INFINITY) continue;
                const float w = __expf(mg - M);
                L += sm_l[g][h] * w;
                A += sm_acc[g][h][e] * w;
            }
        }
        const size_t idx = ((size_t)t * n_heads + kh * G + h) * n_splits + sp;
        part_acc[idx * HD + e] = A;
        if (e == 0) { part_ml[2 * idx] = M; part_ml[2 * idx + 1] = L; }
    }
}

#define ATT_ENTRY(HD, G, KVT, SUFFIX)                                                                          \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS) attention_partial_##HD##_##G##_##SUFFIX(           \
        const float* __restrict__ q, const float* __restrict__ q_sink, StepMeta meta,                          \
        const void* __restrict__ ring_k, const void* __restrict__ ring_v, const __half* __restrict__ ring_ks,  \
        const __half* __restrict__ ring_vs, const void* __restrict__ st_k, const void* __restrict__ st_v,      \
        const __half* __restrict__ st_ks, const __half* __restrict__ st_vs, float* __restrict__ part_ml,       \
        float* __restrict__ part_acc, int n_kv_heads, int sinks, int window, int max_positions, float scale) { \
        pdl_start();                                                                                           \
        attention_partial<HD, G, KVT>(q, q_sink, meta, ring_k, ring_v, ring_ks, ring_vs, st_k, st_v, st_ks,     \
                                      st_vs, part_ml, part_acc, n_kv_heads, sinks, window, max_positions,      \
                                      scale);                                                                  \
    }

#define ATT_ENTRIES(HD, G) ATT_ENTRY(HD, G, 0, f16) ATT_ENTRY(HD, G, 1, q8)
ATT_ENTRIES(64, 1) ATT_ENTRIES(64, 2) ATT_ENTRIES(64, 3) ATT_ENTRIES(64, 4) ATT_ENTRIES(64, 8)
ATT_ENTRIES(128, 1) ATT_ENTRIES(128, 2) ATT_ENTRIES(128, 3) ATT_ENTRIES(128, 4) ATT_ENTRIES(128, 8)

// out[t, h*HD + e] = sum_s acc_s[e] * exp(m_s - M) / sum_s l_s * exp(m_s - M). The splits' (m, l) are read in
// parallel into shared memory first and the acc loads go out 8 at a time (a chain of n_splits dependent loads
// per thread was most of the decode step's combine time); the sums keep their order over s.
#define COMBINE_MAX_SPLITS 64
// quant not null (one row, blockDim == head_dim, a multiple of 32): out's row is also quantized for the matmul after
// (act_quant.cuh, quantize_lane_x2)
__device__ void combine_block(const float* __restrict__ part_ml, const float* __restrict__ part_acc,
                              float* __restrict__ out, int n_heads, int head_dim, int n_splits,
                              const RowQuant* quant = nullptr) {
    __shared__ float sm[COMBINE_MAX_SPLITS], sl[COMBINE_MAX_SPLITS];
    const int t = blockIdx.x, h = blockIdx.y;
    const size_t base = ((size_t)t * n_heads + h) * n_splits;
    for (int s = threadIdx.x; s < n_splits; s += blockDim.x) {
        sm[s] = part_ml[2 * (base + s)];
        sl[s] = part_ml[2 * (base + s) + 1];
    }
    __syncthreads();
    float M = -INFINITY;
    for (int s = 0; s < n_splits; ++s) M = fmaxf(M, sm[s]);
    float L = 0.f;
    for (int s = 0; s < n_splits; ++s)
        if (sm[s] != -INFINITY) L += sl[s] * __expf(sm[s] - M);
    for (int e = threadIdx.x; e < head_dim; e += blockDim.x) {
        float A = 0.f;
        for (int s0 = 0; s0 < n_splits; s0 += 8) {
            float a[8];
#pragma unroll
            for (int u = 0; u < 8; ++u) a[u] = s0 + u < n_splits ? part_acc[(base + s0 + u) * head_dim + e] : 0.f;
#pragma unroll
            for (int u = 0; u < 8; ++u)
                if (s0 + u < n_splits && sm[s0 + u] != -INFINITY) A += a[u] * __expf(sm[s0 + u] - M);
        }
        out[((size_t)t * n_heads + h) * head_dim + e] = A / L;
        if (quant != nullptr) quantize_lane_x2(A / L, h * head_dim + e, *quant);
    }
}

extern "C" __global__ void attention_combine(const float* __restrict__ part_ml, const float* __restrict__ part_acc,
                                             float* __restrict__ out, int n_heads, int head_dim, int n_splits) {
    pdl_start();
    combine_block(part_ml, part_acc, out, n_heads, head_dim, n_splits);
}

// The row's staged K/V (and scales) into the ring, each of the row's n_heads blocks a share of the words
__device__ __forceinline__ void append_block(StepMeta meta, int sinks, int window, int max_positions,
                                             const unsigned* __restrict__ src0, unsigned* __restrict__ dst0,
                                             int words0, const unsigned* __restrict__ src1,
                                             unsigned* __restrict__ dst1, const unsigned* __restrict__ src2,
                                             unsigned* __restrict__ dst2, int words2,
                                             const unsigned* __restrict__ src3, unsigned* __restrict__ dst3) {
    const int t = blockIdx.x;
    size_t ring_row;
    if (!append_ring_row(meta, t, sinks, window, max_positions, ring_row)) return;  // overwritten in this chunk
    const int first = blockIdx.y * blockDim.x + threadIdx.x, stride = gridDim.y * blockDim.x;  // every head's block
    for (int w = first; w < words0; w += stride) {
        dst0[ring_row * words0 + w] = src0[(size_t)t * words0 + w];
        dst1[ring_row * words0 + w] = src1[(size_t)t * words0 + w];
    }
    for (int w = first; w < words2; w += stride) {
        dst2[ring_row * words2 + w] = src2[(size_t)t * words2 + w];
        dst3[ring_row * words2 + w] = src3[(size_t)t * words2 + w];
    }
}

// attention_combine + kv_append (kv_store.cu) in one launch: the row's n_heads blocks also copy its staged K/V
// (and scales) into the ring. Safe after attention_partial (the only reader) has finished: stream order.
extern "C" __global__ void attention_combine_append(
    const float* __restrict__ part_ml, const float* __restrict__ part_acc, float* __restrict__ out, int n_heads,
    int head_dim, int n_splits, StepMeta meta, int sinks, int window, int max_positions,
    const unsigned* __restrict__ src0, unsigned* __restrict__ dst0, int words0,
    const unsigned* __restrict__ src1, unsigned* __restrict__ dst1,
    const unsigned* __restrict__ src2, unsigned* __restrict__ dst2, int words2,
    const unsigned* __restrict__ src3, unsigned* __restrict__ dst3) {
    pdl_start();
    combine_block(part_ml, part_acc, out, n_heads, head_dim, n_splits);
    append_block(meta, sinks, window, max_positions, src0, dst0, words0, src1, dst1, src2, dst2, words2, src3, dst3);
}

// ... and at one row the output's int8x2 quantization for the matmul after (CudaBackend.fuse_quant).
extern "C" __global__ void attention_combine_append_q8x2(
    const float* __restrict__ part_ml, const float* __restrict__ part_acc, float* __restrict__ out, int n_heads,
    int head_dim, int n_splits, StepMeta meta, int sinks, int window, int max_positions,
    const unsigned* __restrict__ src0, unsigned* __restrict__ dst0, int words0,
    const unsigned* __restrict__ src1, unsigned* __restrict__ dst1,
    const unsigned* __restrict__ src2, unsigned* __restrict__ dst2, int words2,
    const unsigned* __restrict__ src3, unsigned* __restrict__ dst3, int8_t* __restrict__ xq,
    float2* __restrict__ xds, int8_t* __restrict__ xd, float2* __restrict__ dsd, int* __restrict__ xs16, int Kp) {
    pdl_start();
    const RowQuant quant{xq, xds, xd, dsd, xs16, n_heads * head_dim, Kp};
    combine_block(part_ml, part_acc, out, n_heads, head_dim, n_splits, &quant);
    append_block(meta, sinks, window, max_positions, src0, dst0, words0, src1, dst1, src2, dst2, words2, src3, dst3);
}

// ---------------------------------------------------------------------------------------------------------
// attention_prefill_*: one block per (tile of up to 16 consecutive rows of one sequence, kv head, row pass);
// the block holds its query vectors (window and sink rotations) in shared memory and streams the keys in
// tiles of PF_KT through shared memory, so K/V are read once per tile of queries instead of once per row.
// QT = 16 / G rows per pass (G query heads each: at most 16 query vectors); pass p covers rows p*QT .. of
// the tile; 8 lanes per query vector: lane l scores keys l, l+8, l+16 of a key tile and owns output dims
// l, l+8, ...; no split, the output is written directly (same math as partial + combine).
// Tile table (device, per step): tile_seq[i], tile_row[i] = first row. Launch: grid (n_tiles, kvh * passes),
// block 128. Used for prefill-heavy steps; decode steps take the split-K kernels above.
#define PF_KT 24
#define PF_TILE 16

template <int HD, int G, int KVT>
__device__ void attention_prefill(const float* __restrict__ q, const float* __restrict__ q_sink, StepMeta meta,
                                  const int* __restrict__ tile_seq, const int* __restrict__ tile_row,
                                  const void* __restrict__ ring_k, const void* __restrict__ ring_v,
                                  const __half* __restrict__ ring_ks, const __half* __restrict__ ring_vs,
                                  const void* __restrict__ st_k, const void* __restrict__ st_v,
                                  const __half* __restrict__ st_ks, const __half* __restrict__ st_vs,
                                  float* __restrict__ out, int n_kv_heads, int sinks, int window, int max_positions,
                                  float scale) {
    constexpr int QT = PF_TILE / G;  // rows per pass
    constexpr int NQ = QT * G;       // query vectors per block (<= 16)
    constexpr int PASSES = (PF_TILE + QT - 1) / QT;
    constexpr int EPL = HD / 8;      // output dims per lane
    __shared__ float sq[16][HD + 1];
    __shared__ float ss[16][HD + 1];
    __shared__ float sk[PF_KT][HD + 1];
    __shared__ float sv[PF_KT][HD];
    __shared__ int spos[PF_KT];

    const int tile = blockIdx.x;
    const int kh = blockIdx.y / PASSES, pass = blockIdx.y % PASSES;
    const int n_heads = n_kv_heads * G;
    const int kv_dim = n_kv_heads * HD;
    const int s = tile_seq[tile];
    const int c = meta.seq_ncached[s];
    const int r0 = meta.seq_row0[s];
    const int seq_end = meta.seq_row0[s + 1];
    const int slot = meta.seq_slot[s];
    const int first = tile_row[tile] + pass * QT;  // first row of this pass
    const int tile_end = min(tile_row[tile] + PF_TILE, seq_end);
    const int last = min(first + QT, tile_end);      // rows first .. last-1
    if (first >= last) return;
    const int valid = c < max_positions ? c : max_positions;
    const int nk = valid + (last - 1 - r0) + 1;      // keys the last row sees (causal)

    // query vectors of this pass into shared memory: vector v = r * G + h
    for (int j = threadIdx.x; j < NQ * HD; j += ATT_THREADS) {
        const int vq = j / HD, d = j - vq * HD;
        const int r = first + vq / G, h = kh * G + vq % G;
        float a = 0.f, b = 0.f;
        if (r < last) {
            const size_t o = (size_t)r * n_heads * HD + (size_t)h * HD + d;
            a = q[o];
            b = q_sink[o];
        }
        sq[vq][d] = a;
        ss[vq][d] = b;
    }
    const int qv = threadIdx.x >> 3, lane8 = threadIdx.x & 7;
    const int my_row = first + qv / G;
    const bool active = qv < NQ && my_row < last;
    const int p = c + (my_row - r0);                 // my query's position
    const int my_nk = valid + (my_row - r0) + 1;     // keys my row may see (causal)
    float m = -INFINITY, l = 0.f, acc[EPL];
#pragma unroll
    for (int e = 0; e < EPL; ++e) acc[e] = 0.f;

    for (int k0 = 0; k0 < nk; k0 += PF_KT) {
        __syncthreads();  // previous tile consumed (and the query stores visible on the first pass)
        for (int j = threadIdx.x; j < PF_KT * (HD / 8); j += ATT_THREADS) {
            const int kj = j / (HD / 8), col8 = (j - kj * (HD / 8)) * 8;
            const int kk = k0 + kj;
            float kf[8], vf[8];
            int pos = 0x7fffffff;
            if (kk < nk) {
                if (kk < valid) {
                    pos = ring_position(kk, c, sinks, window, max_positions);
                    const size_t row = (size_t)slot * max_positions + kk;
                    load8<KVT>(ring_k, ring_ks, row, kv_dim, kh * HD + col8, kf);
                    load8<KVT>(ring_v, ring_vs, row, kv_dim, kh * HD + col8, vf);
                } else {
                    const int u = kk - valid;
                    pos = c + u;
                    load8<KVT>(st_k, st_ks, (size_t)(r0 + u), kv_dim, kh * HD + col8, kf);
                    load8<KVT>(st_v, st_vs, (size_t)(r0 + u), kv_dim, kh * HD + col8, vf);
                }
            } else {
#pragma unroll
                for (int e = 0; e < 8; ++e) { kf[e] = 0.f; vf[e] = 0.f; }
            }
#pragma unroll
            for (int e = 0; e < 8; ++e) { sk[kj][col8 + e] = kf[e]; sv[kj][col8 + e] = vf[e]; }
            if (col8 == 0) spos[kj] = kk < nk ? pos : 0x7fffffff;
        }
        __syncthreads();
        // scores of my query vector against keys lane8, lane8 + 8, lane8 + 16
        float sc[PF_KT / 8];
        float tmax = -INFINITY;
#pragma unroll
        for (int u = 0; u < PF_KT / 8; ++u) {
            const int kj = lane8 + 8 * u;
            const int kk = k0 + kj;
            const int pos = spos[kj];
            const bool is_sink = pos < sinks;
            const bool vis = active && kk < my_nk && (is_sink || pos > p - window);
            float d = 0.f;
            if (vis) {
                const float* qq = is_sink ? ss[qv] : sq[qv];
#pragma unroll 16
                for (int e = 0; e < HD; ++e) d += qq[e] * sk[kj][e];
            }
            sc[u] = vis ? d * scale : -INFINITY;
            tmax = fmaxf(tmax, sc[u]);
        }
#pragma unroll
        for (int o = 4; o > 0; o >>= 1) tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, o));
        const float m_new = fmaxf(m, tmax);
        float pw[PF_KT / 8], psum = 0.f;
#pragma unroll
        for (int u = 0; u < PF_KT / 8; ++u) {
            pw[u] = m_new == -INFINITY ? 0.f : __expf(sc[u] - m_new);
            psum += pw[u];
        }
#pragma unroll
        for (int o = 4; o > 0; o >>= 1) psum += __shfl_xor_sync(0xffffffffu, psum, o);
        const float corr = m == -INFINITY ? 0.f : __expf(m - m_new);
        l = l * corr + psum;
        m = m_new;
#pragma unroll
        for (int e = 0; e < EPL; ++e) acc[e] *= corr;
        const int base = threadIdx.x & 24;  // first lane of my 8-lane group within the warp
#pragma unroll
        for (int kj = 0; kj < PF_KT; ++kj) {
            const float pj = __shfl_sync(0xffffffffu, pw[kj / 8], base + (kj & 7));
#pragma unroll
            for (int e = 0; e < EPL; ++e) acc[e] += pj * sv[kj][lane8 + 8 * e];
        }
    }
    if (active) {
        const int h = kh * G + qv % G;
        float* o = out + (size_t)my_row * n_heads * HD + (size_t)h * HD;
        const float inv = 1.0f / l;
#pragma unroll
        for (int e = 0; e < EPL; ++e) o[lane8 + 8 * e] = acc[e] * inv;
    }
}

#define PF_ENTRY(HD, G, KVT, SUFFIX)                                                                           \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS) attention_prefill_##HD##_##G##_##SUFFIX(           \
        const float* __restrict__ q, const float* __restrict__ q_sink, StepMeta meta,                          \
        const int* __restrict__ tile_seq, const int* __restrict__ tile_row, const void* __restrict__ ring_k,   \
        const void* __restrict__ ring_v, const __half* __restrict__ ring_ks, const __half* __restrict__ ring_vs, \
        const void* __restrict__ st_k, const void* __restrict__ st_v, const __half* __restrict__ st_ks,        \
        const __half* __restrict__ st_vs, float* __restrict__ out, int n_kv_heads, int sinks, int window,      \
        int max_positions, float scale) { pdl_start();                                                         \
        attention_prefill<HD, G, KVT>(q, q_sink, meta, tile_seq, tile_row, ring_k, ring_v, ring_ks, ring_vs,    \
                                      st_k, st_v, st_ks, st_vs, out, n_kv_heads, sinks, window, max_positions, \
                                      scale);                                                                  \
    }
#define PF_ENTRIES(HD, G) PF_ENTRY(HD, G, 0, f16) PF_ENTRY(HD, G, 1, q8)
PF_ENTRIES(64, 1) PF_ENTRIES(64, 2) PF_ENTRIES(64, 3) PF_ENTRIES(64, 4) PF_ENTRIES(64, 8)
PF_ENTRIES(128, 1) PF_ENTRIES(128, 2) PF_ENTRIES(128, 3) PF_ENTRIES(128, 4) PF_ENTRIES(128, 8)
