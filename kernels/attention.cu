// Attention over the StreamingKVCache ring plus the step's new K/V (decode and prefill chunks), GQA,
// f16 or block-scaled int8 KV. Decode: split over key positions (flash-decoding), merged in the same launch.
//
// For row t of sequence s (position p = ncached[s] + i, i = t - row0[s]) and query head h (kv head h / G):
//   keys  = the ring's valid entries (min(c, max_positions) of them, cache order; c = ncached[s])
//         + the step's new keys of rows row0[s] .. t (staged in storage format, or encoded here: ROPE below)
//   key at position pos is a sink if pos < sinks (scored with q_sink), a window key if p - window < pos
//   (scored with q); others are invisible. score = (q . k) / sqrt(head_dim); out = softmax(score) . V
// Split-K (attention_split_*): for each (t, h, split) a running max m (of base-2 scores), sum l and acc[HD]
// (unnormalized); the block finishing a sequence's kv head last merges the splits into out (T, n_heads * HD) and
// appends the new K/V. At decode (one row per sequence, normal-mode rope) it also rotates q and the new k itself from
// the rope_table_f32 angles, and while the ring is not full the block holding the row's new key writes it to the ring
// at once. A short context's decode step (attention_split_rope_c4_*) runs each row's splits as one cluster of 4
// blocks, which merge through distributed shared memory instead: no partial state goes through global memory.
//
// Layouts: q, q_sink, out: (T, n_heads * HD) float32. Ring K/V per layer: (slots, max_positions, kv_dim)
// half or int8 (+ (slots, max_positions, kv_dim / 32) half scales). Staging: (T, kv_dim) in the same format.
// Launch attention_split_*: grid (n_splits, n_kv_heads, T), block 128. Each group of LPK = HD / 8 lanes
// handles one key at a time, each lane 8 consecutive values (one 16-byte f16 load or one 8-byte int8 load);
// groups stride over the split's keys; every lane of a warp runs the same number of iterations so the
// group shuffles stay convergent.
#include <cooperative_groups.h>

#include "act_quant.cuh"
#include "async_copy.cuh"
#include "kv_common.cuh"
#include "pdl.cuh"
#include "rope.cuh"

#define ATT_THREADS 128

// Timeline probe (bench/attention_timeline.py builds this file with -DATT_TIMELINE=<blocks>): thread 0 of each
// attention_split block writes %globaltimer at points 0 (entry), 1 (after pdl_wait), 2 (keys done), 3 (the block's
// state merged and written) and, in the block merging the row's splits, 4 (counted last), 5 (the splits' weights
// computed), 6 (the splits merged) into att_timeline[block].
#ifdef ATT_TIMELINE
#define ATT_POINTS 7
__device__ unsigned long long att_timeline[ATT_TIMELINE][ATT_POINTS];
__device__ unsigned att_smid[ATT_TIMELINE];  // the SM each block ran on (written with point 0)
#define ATT_STAMP(i)                                                                                 \
    do {                                                                                             \
        const unsigned b_ = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);          \
        if (threadIdx.x == 0 && b_ < ATT_TIMELINE) {                                                 \
            unsigned long long t_;                                                                   \
            asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t_));                                   \
            att_timeline[b_][i] = t_;                                                                \
            if (i == 0) {                                                                            \
                unsigned sm_;                                                                        \
                asm volatile("mov.u32 %0, %%smid;" : "=r"(sm_));                                      \
                att_smid[b_] = sm_;                                                                  \
            }                                                                                        \
        }                                                                                            \
    } while (0)
#else
#define ATT_STAMP(i)
#endif

// 8 values as stored (16 bytes of f16, or 8 int8 with their block's scale) to float
template <int KVT>  // 0: f16, 1: q8
__device__ __forceinline__ void dequant8(const unsigned char* raw, float scale, float out[8]) {
    if (KVT == 0) {
        const uint4 r = *reinterpret_cast<const uint4*>(raw);
        const __half2* h2 = reinterpret_cast<const __half2*>(&r);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const float2 f = __half22float2(h2[e]);
            out[2 * e] = f.x;
            out[2 * e + 1] = f.y;
        }
    } else {
        const uint2 r = *reinterpret_cast<const uint2*>(raw);
        const signed char* b = reinterpret_cast<const signed char*>(&r);
#pragma unroll
        for (int e = 0; e < 8; ++e) out[e] = (float)b[e] * scale;
    }
}

// the 8 values at (row, col) of a K/V buffer (f16, or int8 + half scales per 32)
template <int KVT>
__device__ __forceinline__ void load8(const void* base, const __half* scales, size_t row, int kv_dim, int col,
                                      float out[8]) {
    const float scale = KVT == 1 ? __half2float(scales[row * (kv_dim / Q8_BLOCK) + col / Q8_BLOCK]) : 0.f;
    dequant8<KVT>(reinterpret_cast<const unsigned char*>(base) + (row * kv_dim + col) * (2 - KVT), scale, out);
}

// 2^x (ex2.approx.ftz; 2^-inf = 0). attention_split keeps its scores and running maxima in base 2 (scaled by
// log2 e), so exp(s - m) is one ex2 of theirs.
__device__ __forceinline__ float exp2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// attention_split's keys in flight: every lane copies its share of the next ATT_STAGES iterations' K and V
// (cp.async) into its own slots of shared memory while it computes one iteration. The copies of the first
// iterations' ring entries are issued before pdl_wait: the ring holds keys of earlier steps only (this step's new
// keys come staged from the kernel before, or are encoded here; this step's append comes after every read of the
// entries it overwrites), so they overlap the kernels before. The clustered entries issue all ATT_STAGES there, the
// split grid ATT_PRE_WAIT and the rest right after the wait: its 1,056 blocks' early copies compete with the QKV
// matmul they wait on (H200, depth 2048: 2 stages -1.7 % a step against 4, 1 or 3 stages -1.5 / -1.0 %, 1 stage
// +1.2 % at depth 512; bench/RESULTS.md, round fourteen).
#define ATT_STAGES 4
#ifndef ATT_PRE_WAIT  // (a build may set it: bench/attention_timeline.py --define ATT_PRE_WAIT=<n>)
#define ATT_PRE_WAIT 2
#endif

template <int KVT>
struct KVSlots {  // one stage: each thread's 8 values of K and of V as stored (+ the q8 scale's 4-byte word)
    static constexpr int VB = KVT == 0 ? 16 : 8;
    __align__(16) unsigned char k[ATT_THREADS][VB];
    __align__(16) unsigned char v[ATT_THREADS][VB];
    uint32_t ks[ATT_THREADS * KVT], vs[ATT_THREADS * KVT];
};

// one thread's 8 values at byte `offset` of a K/V buffer (and its scale's word: scales are halves, copied in aligned
// pairs; q8 takes a byte a value, so the scale's index is offset / 32), async
template <int KVT>
__device__ __forceinline__ void copy8_at(unsigned char* dst, uint32_t* dst_scale, const void* base,
                                         const __half* scales, size_t offset) {
    cp_async<KVSlots<KVT>::VB>(dst, reinterpret_cast<const unsigned char*>(base) + offset);
    if (KVT == 1) cp_async<4>(dst_scale, scales + ((offset / Q8_BLOCK) & ~(size_t)1));
}

// ... of row `row`, from column col
template <int KVT>
__device__ __forceinline__ void copy8(unsigned char* dst, uint32_t* dst_scale, const void* base,
                                      const __half* scales, size_t row, int kv_dim, int col) {
    copy8_at<KVT>(dst, dst_scale, base, scales, (row * kv_dim + col) * (2 - KVT));
}

// the same with plain loads into the slot (the step's staged keys, which may only be read after pdl_wait)
template <int KVT>
__device__ __forceinline__ void load_into(unsigned char* dst, uint32_t* dst_scale, const void* base,
                                          const __half* scales, size_t row, int kv_dim, int col) {
    const unsigned char* src = reinterpret_cast<const unsigned char*>(base) + (row * kv_dim + col) * (2 - KVT);
    if (KVT == 0) {
        *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
        *reinterpret_cast<uint2*>(dst) = *reinterpret_cast<const uint2*>(src);
        *dst_scale = *reinterpret_cast<const uint32_t*>(scales + ((row * (kv_dim / Q8_BLOCK) + col / Q8_BLOCK) & ~(size_t)1));
    }
}

// The step's new K/V rows (T, kv_dim) in the ring's format, staged by the kernel before (k, v, ks, vs); or, at a decode
// step with the rotations fused in (rope not null), raw f32 from the QKV matmul (raw_k, raw_v), rotated (k) and
// encoded here into the same values rope_qk_f32 + kv_stage_* would have staged.
struct NewKV {
    const void* k;
    const void* v;
    const __half* ks;
    const __half* vs;
    const float* raw_k;
    const float* raw_v;
    const float4* rope;  // (T, n_rot / 2) (cos p, sin p, cos ps, sin ps) per pair (rope.cu, rope_table_f32), or null
    int n_rot;
};

// 8 consecutive floats at raw
__device__ __forceinline__ void load8f(const float* raw, float x[8]) {
    const float4 a = *reinterpret_cast<const float4*>(raw), b = *reinterpret_cast<const float4*>(raw + 4);
    x[0] = a.x; x[1] = a.y; x[2] = a.z; x[3] = a.w; x[4] = b.x; x[5] = b.y; x[6] = b.z; x[7] = b.w;
}

// The angles of the 4 pairs of 8 consecutive values at hc within a head (pair i = hc / 2 + j, rotated while
// 2 i < n_rot) from a row's table rot
__device__ __forceinline__ void load_angles(const float4* rot, int hc, int n_rot, float4 ang[4]) {
#pragma unroll
    for (int j = 0; j < 4; ++j)
        ang[j] = 2 * (hc / 2 + j) < n_rot ? __ldg(rot + hc / 2 + j) : make_float4(1.f, 0.f, 1.f, 0.f);
}

// x (8 values at hc within a head) normal-mode rotated at those angles; sink: the ps angles
__device__ __forceinline__ void rotate8(float x[8], const float4 ang[4], int hc, int n_rot, bool sink) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        if (2 * (hc / 2 + j) < n_rot) {
            const float4 cs = ang[j];
            const float2 r = sink ? rotate(x[2 * j], x[2 * j + 1], cs.z, cs.w) : rotate(x[2 * j], x[2 * j + 1], cs.x, cs.y);
            x[2 * j] = r.x;
            x[2 * j + 1] = r.y;
        }
    }
}

// 8 consecutive values at raw + col (col = hc within the head), normal-mode rotated at angles rot (row's table) when
// rot is not null; sink: the ps angles
__device__ __forceinline__ void load_rotated8(const float* raw, const float4* rot, int hc, int n_rot, bool sink,
                                              float x[8]) {
    load8f(raw, x);
    if (rot == nullptr) return;
    float4 ang[4];
    load_angles(rot, hc, n_rot, ang);
    rotate8(x, ang, hc, n_rot, sink);
}

// 8 values (K: rotated) in the ring's storage format into dst (+ the q8 scale into its word's half); the lanes in
// mask (a key's lanes, whole groups of 4) call it together
template <int KVT>
__device__ __forceinline__ void encode8(const float x[8], int col, unsigned mask, unsigned char* dst,
                                        uint32_t* dst_scale) {
    if (KVT == 0) {
        __half2 h[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) h[e] = __floats2half2_rn(x[2 * e], x[2 * e + 1]);
        *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(h);
    } else {
        signed char q[8];
        const __half sc = q8_encode8(x, q, mask);
        *reinterpret_cast<uint2*>(dst) = *reinterpret_cast<const uint2*>(q);
        *dst_scale = (uint32_t)__half_as_ushort(sc) << (16 * ((col / Q8_BLOCK) & 1));
    }
}

// this lane's 8 values of the step's new K (kx, rotated here at ang) and V (vx), encoded as the ring stores them, into
// dk / dv (+ the q8 scales' words); the key's lanes (mask) call it together
template <int KVT, int HD>
__device__ __forceinline__ void encode_new(float kx[8], float vx[8], const float4 ang[4], int n_rot, int col,
                                           unsigned mask, unsigned char* dk, uint32_t* dks, unsigned char* dv,
                                           uint32_t* dvs) {
    rotate8(kx, ang, col % HD, n_rot, false);
    encode8<KVT>(kx, col, mask, dk, dks);
    encode8<KVT>(vx, col, mask, dv, dvs);
}

// ... from a slot: the scale is the half of its 4-byte word that col's block has
template <int KVT>
__device__ __forceinline__ void unpack8(const unsigned char* raw, uint32_t scale_word, int col, float out[8]) {
    const unsigned short bits = (col / Q8_BLOCK) & 1 ? scale_word >> 16 : scale_word & 0xffffu;
    dequant8<KVT>(raw, KVT == 1 ? __half2float(__ushort_as_half(bits)) : 0.f, out);
}

// 8 values as stored (bytes, + the q8 scale in the half of word that col's block has) into row `row` of a ring
template <int KVT>
__device__ __forceinline__ void store8(void* ring, __half* scales, size_t row, int kv_dim, int col,
                                       const unsigned char* bytes, uint32_t word) {
    unsigned char* r = reinterpret_cast<unsigned char*>(ring);
    if (KVT == 0) {
        *reinterpret_cast<uint4*>(r + (row * kv_dim + col) * 2) = *reinterpret_cast<const uint4*>(bytes);
    } else {
        *reinterpret_cast<uint2*>(r + row * kv_dim + col) = *reinterpret_cast<const uint2*>(bytes);
        if ((col / 8) % 4 == 0)  // one lane of the block's four
            scales[row * (kv_dim / Q8_BLOCK) + col / Q8_BLOCK] =
                __ushort_as_half((unsigned short)(word >> (16 * ((col / Q8_BLOCK) & 1))));
    }
}

// Where a split-K launch leaves its results: partial states, counters (zero between launches) of finished splits per
// (row, kv head) then of merged rows per (sequence, kv head), the output, and (one row, xq not null) the output's
// quantization.
struct SplitOut {
    float* part_ml;
    float* part_acc;
    int* done;
    float* out;
    RowQuant quant;
};

// Value i of out's row t (n = n_heads * HD values a row); with quant, also its int8x2 quantization (one row: the 32
// lanes of a warp hold 32 consecutive values)
__device__ __forceinline__ void finish_value(const SplitOut& o, int t, int i, int n, float v) {
    o.out[(size_t)t * n + i] = v;
    if (o.quant.xq != nullptr) quantize_lane_x2(v, i, o.quant);
}

// The weights w_s = 2^(m_s - M) / L of a (row, query head)'s n_active splits, whose (m, l) are part_ml's pairs from
// `base` on, into w[0 .. 64): one whole warp calls it, lane i loading splits i and i + 32.
__device__ __forceinline__ void split_weights(const float* part_ml, size_t base, int n_active, float* w) {
    const int lane = threadIdx.x & 31;
    float m[2], l[2];
#pragma unroll
    for (int u = 0; u < 2; ++u) {
        const int sp = lane + 32 * u;
        const float2 ml = sp < n_active ? __ldcg(reinterpret_cast<const float2*>(part_ml) + base + sp)
                                        : make_float2(-INFINITY, 0.f);
        m[u] = ml.x, l[u] = ml.y;
    }
    float M = fmaxf(m[0], m[1]);
#pragma unroll
    for (int s = 16; s > 0; s >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, s));
    float e[2];
#pragma unroll
    for (int u = 0; u < 2; ++u) e[u] = m[u] == -INFINITY ? 0.f : exp2_approx(m[u] - M);
    const float inv_L = 1.f / warp_sum(l[0] * e[0] + l[1] * e[1]);  // > 0: a row sees at least its own key
    w[lane] = e[0] * inv_L;
    w[lane + 32] = e[1] * inv_L;
}

// out[t, h*HD + e] = sum_s acc_s[e] 2^(m_s - M) / sum_s l_s 2^(m_s - M) over row t's n_active splits, for the G
// query heads of kv head kh. The partial states were written by other blocks of this launch: read from L2 (__ldcg).
// The merge is a chain of L2 round trips at the end of the launch, so its loads go out together where registers
// allow: every thread issues those of its first value's first MERGE_AHEAD splits (they do not need the weights)
// while each warp loads one head's (m, l) and turns them into weights w_s = 2^(m_s - M) / L in shared memory; then
// the sums, the rest of the loads unrolled.
#define COMBINE_MAX_SPLITS 64
#define MERGE_AHEAD 16
template <int HD, int G>
__device__ void merge_splits(const SplitOut& o, int t, int kh, int n_heads, int n_splits, int n_active) {
    __shared__ float sw[G][COMBINE_MAX_SPLITS];
    const int warp = threadIdx.x >> 5;
    auto acc_of = [&](int j) {  // value j's partial accumulators, HD apart from split to split
        const int h = j / HD, e = j - h * HD;
        return o.part_acc + ((size_t)t * n_heads + kh * G + h) * n_splits * HD + e;
    };
    float ahead[MERGE_AHEAD];  // value threadIdx.x's first splits (0 past n_active)
    if (threadIdx.x < G * HD) {
        const float* acc = acc_of(threadIdx.x);
#pragma unroll
        for (int sp = 0; sp < MERGE_AHEAD; ++sp) ahead[sp] = sp < n_active ? __ldcg(acc + (size_t)sp * HD) : 0.f;
    }
    for (int h = warp; h < G; h += ATT_THREADS / 32)
        split_weights(o.part_ml, ((size_t)t * n_heads + kh * G + h) * n_splits, n_active, sw[h]);
    __syncthreads();
    ATT_STAMP(5);
    for (int j = threadIdx.x; j < G * HD; j += ATT_THREADS) {  // whole warps
        const int h = j / HD;
        const float* acc = acc_of(j);
        float A = 0.f;
        int sp = 0;
        if (j == threadIdx.x) {
#pragma unroll
            for (; sp < MERGE_AHEAD; ++sp) A += sw[h][sp] * ahead[sp];
            sp = min(MERGE_AHEAD, n_active);
        }
#pragma unroll 16
        for (; sp < n_active; ++sp) A += sw[h][sp] * __ldcg(acc + (size_t)sp * HD);
        finish_value(o, t, kh * G * HD + j, n_heads * HD, A);
    }
    __syncthreads();  // sw is reused for the next row
}

// The same for one query head of HD = 128 (no GQA) over at most 33 splits (the grid's 8 blocks per SM on 132 SMs
// give 33), in one round trip to L2: every thread issues its share of the splits' partial accumulators as 16-byte
// async copies into `stage` (the block's shared memory, free by now), and warp 0 loads every split's (m, l) and makes
// the weights in the meantime. (With the partials loaded into registers instead, the compiler issued some of those
// loads only after the weights: a second round trip.)
#define MERGE_AT_ONCE_SPLITS 33
template <int HD>
__device__ void merge_splits_at_once(const SplitOut& o, int t, int kh, int n_heads, int n_splits, int n_active,
                                     float* stage) {
    static_assert(HD == 128 && ATT_THREADS == 128, "one value of a 128-value head a thread");
    __shared__ float sw[64];
    const size_t base = ((size_t)t * n_heads + kh) * n_splits;  // (split sp's state at base + sp)
    const float* acc = o.part_acc + base * HD;
    for (int c = threadIdx.x; c < n_active * (HD / 4); c += ATT_THREADS) cp_async<16>(stage + 4 * c, acc + 4 * c);
    cp_async_commit();
    if (threadIdx.x < 32) split_weights(o.part_ml, base, n_active, sw);
    cp_async_wait<0>();
    __syncthreads();
    const int j = threadIdx.x;  // value j of the head: a warp finishes 32 consecutive values
    float A = 0.f;
#pragma unroll 11
    for (int sp = 0; sp < n_active; ++sp) A += sw[sp] * stage[sp * HD + j];
    finish_value(o, t, kh * HD + j, n_heads * HD, A);
    __syncthreads();
}

// ROPE: a decode step (one row per sequence), NewKV's rope given. C > 1 (ROPE only): each (row, kv head) is one
// cluster of C blocks (grid.x == C), whose states merge through distributed shared memory (below).
template <int HD, int G, int KVT, bool ROPE, int C>
__device__ void attention_split(const float* __restrict__ q, const float* __restrict__ q_sink, StepMeta meta,
                                void* ring_k, void* ring_v, __half* ring_ks, __half* ring_vs, NewKV nw, SplitOut o,
                                int n_kv_heads, int sinks, int window, int max_positions, float scale,
                                int split_keys, int half_from) {
    ATT_STAMP(0);
    constexpr int LPK = HD / 8;                 // lanes per key
    constexpr int GROUPS = ATT_THREADS / LPK;   // keys in flight per block per iteration
    struct Merge {
        float m[GROUPS][G], l[GROUPS][G], acc[GROUPS][G][HD];
    };
    constexpr int SLOT_BYTES = ATT_STAGES * sizeof(KVSlots<KVT>);
    // (merge_splits_at_once stages its partial states here too)
    constexpr int STAGE_BYTES = G == 1 && HD == 128 && C == 1 ? MERGE_AT_ONCE_SPLITS * HD * 4 : 0;
    constexpr int SMEM_BYTES = SLOT_BYTES > sizeof(Merge) ? SLOT_BYTES : sizeof(Merge);
    __shared__ __align__(16) unsigned char smem[SMEM_BYTES > STAGE_BYTES ? SMEM_BYTES : STAGE_BYTES];
    KVSlots<KVT>* slots = reinterpret_cast<KVSlots<KVT>*>(smem);

    const int sp = blockIdx.x, n_splits = gridDim.x;  // the grid's splits; the row uses n_active of them
    const int kh = blockIdx.y, t = blockIdx.z;
    const int n_heads = n_kv_heads * G;
    const int kv_dim = n_kv_heads * HD;
    // the step's metadata comes from the host's staging copy, made before the step's first kernel
    const int s = __ldg(meta.row_seq + t);
    const int c = __ldg(meta.seq_ncached + s);
    const int r0 = __ldg(meta.seq_row0 + s);
    const int slot = __ldg(meta.seq_slot + s);
    const int seq_end = __ldg(meta.seq_row0 + s + 1);
    const int p = c + (t - r0);
    const int valid = c < max_positions ? c : max_positions;
    const int nk = valid + (t - r0) + 1;
    const int n_active = active_splits(nk, n_splits, split_keys, half_from);
    // a short context: fewer splits than the grid has (the combine reads n_active). In a cluster launch the idle
    // blocks stay, without keys, for the cluster's barriers (unless the row is on one split: no merge).
    if (sp >= n_active && (C == 1 || n_active == 1)) return;
    const int chunk = (nk + n_active - 1) / n_active;
    const int k0 = sp * chunk;
    const int k1 = min(nk, k0 + chunk);
    const int n_iter = k1 > k0 ? (k1 - k0 + GROUPS - 1) / GROUPS : 0;

    const int tid = threadIdx.x;
    const int grp = tid / LPK, gl = tid % LPK;
    const int col = kh * HD + gl * 8;  // this lane's first value within a K/V row
    const unsigned key_lanes = LPK == 32 ? 0xffffffffu : ((1u << LPK) - 1) << ((tid & 31) & ~(LPK - 1));
    // iteration `it` gives this lane key k0 + it * GROUPS + grp (its LPK lanes split the key's HD values): in a ring,
    // iteration 0's byte offset plus `it` steps of GROUPS rows
    const size_t ring_off0 = (((size_t)slot * max_positions + k0 + grp) * kv_dim + col) * (2 - KVT);
    const int ring_step = GROUPS * kv_dim * (2 - KVT);
    auto copy_ring = [&](int it) {
        const int kk = k0 + it * GROUPS + grp;
        if (kk < k1 && kk < valid) {
            KVSlots<KVT>& st = slots[it % ATT_STAGES];
            const size_t off = ring_off0 + (size_t)it * ring_step;
            copy8_at<KVT>(st.k[tid], st.ks + tid * KVT, ring_k, ring_ks, off);
            copy8_at<KVT>(st.v[tid], st.vs + tid * KVT, ring_v, ring_vs, off);
        }
    };
    constexpr int PRE = C > 1 ? ATT_STAGES : ATT_PRE_WAIT;  // stages copied before the wait
#pragma unroll
    for (int it = 0; it < PRE; ++it) {
        if (it < n_iter) copy_ring(it);
        cp_async_commit();
    }
    // the row's rotation angles for this lane's values: the step's table, launched before the first layer's QKV
    // matmul (CudaBackend._rope_table), so complete before this kernel starts
    float4 ang[4];
    if (ROPE) load_angles(nw.rope + (size_t)t * (nw.n_rot / 2), gl * 8, nw.n_rot, ang);
    pdl_wait();
    pdl_trigger();
    ATT_STAMP(1);
#pragma unroll
    for (int it = PRE; it < ATT_STAGES; ++it) {
        if (it < n_iter) copy_ring(it);
        cp_async_commit();
    }
    // what the kernel before wrote, loaded at once: q at p (window keys) and at the sink position (given, or rotated
    // below from the same q), and the row's new K/V for the lanes encoding them
    float qw[G][8], qs[G][8];
#pragma unroll
    for (int h = 0; h < G; ++h) {
        const size_t qoff = (size_t)t * n_heads * HD + (size_t)(kh * G + h) * HD + gl * 8;
        load8f(q + qoff, qw[h]);
        if (!ROPE) load8f(q_sink + qoff, qs[h]);
    }
    const int kk_new = nk - 1;  // (ROPE: the row's own key, its only new one)
    const bool key_lanes_own = ROPE && kk_new >= k0 && kk_new < k1 && (kk_new - k0) % GROUPS == grp;
    float kx[8], vx[8];
    if (key_lanes_own) {
        load8f(nw.raw_k + (size_t)t * kv_dim + col, kx);
        load8f(nw.raw_v + (size_t)t * kv_dim + col, vx);
    }
    // a decode row's ring entry (index c) is one no block of this step reads while the ring is not full: its new K/V
    // go there at once, from where they are encoded below, not at the end
    const bool early_append = ROPE && c < max_positions;
    if constexpr (ROPE) {
        // the row's own key encoded by its lanes: into its slot when its iteration is among the first, else into
        // staging, where the loop below copies it from like any staged key (the same thread)
        if (key_lanes_own) {  // (the key's lanes together)
            const int it = (kk_new - k0) / GROUPS;
            KVSlots<KVT>& st = slots[it % ATT_STAGES];
            __align__(16) unsigned char k8[16], v8[16];
            uint32_t kw = 0, vw = 0;
            encode_new<KVT, HD>(kx, vx, ang, nw.n_rot, col, key_lanes, it < ATT_STAGES ? st.k[tid] : k8,
                                it < ATT_STAGES ? st.ks + tid * KVT : &kw, it < ATT_STAGES ? st.v[tid] : v8,
                                it < ATT_STAGES ? st.vs + tid * KVT : &vw);
            if (it >= ATT_STAGES) {  // (staging rows are stored as ring rows)
                store8<KVT>(const_cast<void*>(nw.k), const_cast<__half*>(nw.ks), t, kv_dim, col, k8, kw);
                store8<KVT>(const_cast<void*>(nw.v), const_cast<__half*>(nw.vs), t, kv_dim, col, v8, vw);
            }
            if (early_append) {
                const size_t ring_row = (size_t)slot * max_positions + c;
                const bool in_slot = it < ATT_STAGES;
                uint32_t ksw = kw, vsw = vw;
                if constexpr (KVT == 1) {
                    if (in_slot) ksw = st.ks[tid], vsw = st.vs[tid];
                }
                store8<KVT>(ring_k, ring_ks, ring_row, kv_dim, col, in_slot ? st.k[tid] : k8, ksw);
                store8<KVT>(ring_v, ring_vs, ring_row, kv_dim, col, in_slot ? st.v[tid] : v8, vsw);
            }
        }
    } else {
        // the step's new keys among the first iterations' (staged by the kernel before), with q
        for (int it = 0; it < ATT_STAGES && it < n_iter; ++it) {
            const int kk = k0 + it * GROUPS + grp;
            if (kk >= valid && kk < k1) {
                KVSlots<KVT>& st = slots[it % ATT_STAGES];
                load_into<KVT>(st.k[tid], st.ks + tid * KVT, nw.k, nw.ks, (size_t)(r0 + kk - valid), kv_dim, col);
                load_into<KVT>(st.v[tid], st.vs + tid * KVT, nw.v, nw.vs, (size_t)(r0 + kk - valid), kv_dim, col);
            }
        }
    }

    if (ROPE) {  // q at the sink position and at p, rotated here
#pragma unroll
        for (int h = 0; h < G; ++h) {
#pragma unroll
            for (int e = 0; e < 8; ++e) qs[h][e] = qw[h][e];
            rotate8(qs[h], ang, gl * 8, nw.n_rot, true);
            rotate8(qw[h], ang, gl * 8, nw.n_rot, false);
        }
    }
    const float scale2 = scale * 1.44269504088896341f;  // (log2 e: base-2 scores)
    float m[G], l[G], acc[G][8];
#pragma unroll
    for (int h = 0; h < G; ++h) {
        m[h] = -INFINITY;
        l[h] = 0.f;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[h][e] = 0.f;
    }

    const bool wrapped = c > max_positions;
    const int newest = wrapped ? ring_newest(c, sinks, window) : 0;
    // The iteration count is the block's, so every lane runs the same iterations and the group shuffles converge.
    // A lane past the split's keys (k1) unpacks whatever its slot holds: its key is not visible, and its group's
    // shuffles stay among its own lanes.
    for (int it = 0; it < n_iter; ++it) {
        cp_async_wait<ATT_STAGES - 1>();  // this iteration's copies have landed (one group committed per iteration)
        const int kk = k0 + it * GROUPS + grp;
        const bool in_range = kk < k1;
        const KVSlots<KVT>& now = slots[it % ATT_STAGES];
        float kf[8], vf[8];
        unpack8<KVT>(now.k[tid], KVT ? now.ks[tid * KVT] : 0u, col, kf);
        unpack8<KVT>(now.v[tid], KVT ? now.vs[tid * KVT] : 0u, col, vf);
        const int ahead = it + ATT_STAGES;  // into the slots just read
        if (ahead < n_iter) {
            copy_ring(ahead);
            const int kn = k0 + ahead * GROUPS + grp;
            if (kn >= valid && kn < k1) {  // a new key further on, from staging
                KVSlots<KVT>& st = slots[ahead % ATT_STAGES];
                copy8<KVT>(st.k[tid], st.ks + tid * KVT, nw.k, nw.ks, (size_t)(r0 + kn - valid), kv_dim, col);
                copy8<KVT>(st.v[tid], st.vs + tid * KVT, nw.v, nw.vs, (size_t)(r0 + kn - valid), kv_dim, col);
            }
        }
        cp_async_commit();
        const int pos = kk >= valid ? c + (kk - valid)  // (ring entries: ring_position's, newest found once)
                        : !wrapped || kk < sinks ? kk
                        : c - 1 - (newest - kk + (kk > newest ? window : 0));
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
                const float sc = d * scale2;
                const float m_new = fmaxf(m[h], sc);
                const float corr = exp2_approx(m[h] - m_new);  // 0 on the first key (m = -inf)
                const float pw = exp2_approx(sc - m_new);
                l[h] = l[h] * corr + pw;
#pragma unroll
                for (int e = 0; e < 8; ++e) acc[h][e] = acc[h][e] * corr + pw * vf[e];
                m[h] = m_new;
            }
        }
    }

    // Merge the GROUPS partial states of this block through shared memory (the slots' bytes, now free).
    cp_async_wait<0>();
    ATT_STAMP(2);
    __syncthreads();
    Merge& mg = *reinterpret_cast<Merge*>(smem);
#pragma unroll
    for (int h = 0; h < G; ++h) {
        if (gl == 0) { mg.m[grp][h] = m[h]; mg.l[grp][h] = l[h]; }
#pragma unroll
        for (int e = 0; e < 8; ++e) mg.acc[grp][h][gl * 8 + e] = acc[h][e];
    }
    __syncthreads();
    // Row t's splits are merged by the last of its blocks to finish (a counter per (row, kv head), reset by that
    // block; its count releases the block's writes and acquires the others'); a row on one split finishes alone,
    // without writing partial states. In a cluster launch the blocks merge through distributed shared memory
    // instead: each leaves its state in its shared memory (cl_*) and the cluster's first block merges them and
    // finishes the row.
    __shared__ float cl_ml[C > 1 ? G : 1][2], cl_acc[C > 1 ? G * HD : 1];
    const bool alone = n_active == 1;
    for (int j = threadIdx.x; j < G * HD; j += ATT_THREADS) {  // whole warps: G * HD is a multiple of 32
        const int h = j / HD, e = j - h * HD;
        float M = -INFINITY;
        for (int g = 0; g < GROUPS; ++g) M = fmaxf(M, mg.m[g][h]);
        float L = 0.f, A = 0.f;
        if (M != -INFINITY) {
            for (int g = 0; g < GROUPS; ++g) {
                const float mg_ = mg.m[g][h];
                if (mg_ == -INFINITY) continue;
                const float w = exp2_approx(mg_ - M);
                L += mg.l[g][h] * w;
                A += mg.acc[g][h][e] * w;
            }
        }
        if (alone) {
            finish_value(o, t, (kh * G + h) * HD + e, n_heads * HD, A / L);
        } else if (C > 1) {
            cl_acc[j] = A;
            if (e == 0) { cl_ml[h][0] = M; cl_ml[h][1] = L; }
        } else {
            const size_t idx = ((size_t)t * n_heads + kh * G + h) * n_splits + sp;
            o.part_acc[idx * HD + e] = A;
            if (e == 0) { o.part_ml[2 * idx] = M; o.part_ml[2 * idx + 1] = L; }
        }
    }
    if constexpr (C > 1) {
        if (!alone) {
            cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
            cluster.sync();  // every block's state is in its shared memory
            if (cluster.block_rank() == 0) {  // (every block of an active cluster left a state, idle ones empty)
                for (int j = threadIdx.x; j < G * HD; j += ATT_THREADS) {
                    const int h = j / HD;
                    float mr[C], lr[C], ar[C];  // the C states' loads all in flight at once
#pragma unroll
                    for (int r = 0; r < C; ++r) {
                        const float* ml = cluster.map_shared_rank(&cl_ml[h][0], r);
                        mr[r] = ml[0], lr[r] = ml[1], ar[r] = cluster.map_shared_rank(cl_acc, r)[j];
                    }
                    float M = -INFINITY, L = 0.f, A = 0.f;
#pragma unroll
                    for (int r = 0; r < C; ++r) M = fmaxf(M, mr[r]);
#pragma unroll
                    for (int r = 0; r < C; ++r) {
                        const float w = mr[r] == -INFINITY ? 0.f : exp2_approx(mr[r] - M);
                        L += lr[r] * w;
                        A += ar[r] * w;
                    }
                    finish_value(o, t, kh * G * HD + j, n_heads * HD, A / L);
                }
            }
            cluster.sync();  // the first block has read every state of its cluster
            if (cluster.block_rank() != 0) return;
        }
    }
    ATT_STAMP(3);
    __shared__ int last;
    if (!alone && C == 1) {
#ifdef ATT_PROBE_NO_MERGE  // timing probe only, no output: the splits are never merged
        return;
#endif
        // (the pattern of cooperative groups' grid sync: the barrier orders every thread's partial-state writes
        // before thread 0's count, whose release makes them visible device-wide with it; its acquire orders the
        // merging block's reads after it)
        __syncthreads();
        if (threadIdx.x == 0) {
            int before;
            asm volatile("atom.add.acq_rel.gpu.global.s32 %0, [%1], 1;"
                         : "=r"(before) : "l"(o.done + (size_t)t * n_kv_heads + kh) : "memory");
            last = before == n_active - 1;
        }
        __syncthreads();
        if (!last) return;
        ATT_STAMP(4);
        if constexpr (G == 1 && HD == 128) {
            if (n_active <= MERGE_AT_ONCE_SPLITS)
                merge_splits_at_once<HD>(o, t, kh, n_heads, n_splits, n_active, reinterpret_cast<float*>(smem));
            else
                merge_splits<HD, G>(o, t, kh, n_heads, n_splits, n_active);
        } else {
            merge_splits<HD, G>(o, t, kh, n_heads, n_splits, n_active);
        }
        ATT_STAMP(6);
        if (threadIdx.x == 0) o.done[(size_t)t * n_kv_heads + kh] = 0;  // ready for the next launch
    }
    // The sequence's new K/V of this head go into the ring once every block reading its entries has finished: at
    // once for one row, else by the last of its rows' finishing blocks (a counter per (sequence, kv head) after the
    // rows' counters).
    if (seq_end - r0 > 1) {
        __syncthreads();  // (last is reused)
        int* done = o.done + ((size_t)gridDim.z + s) * n_kv_heads + kh;
        if (threadIdx.x == 0) last = atomicAdd(done, 1) == seq_end - r0 - 1;
        __syncthreads();
        if (!last) return;
        if (threadIdx.x == 0) *done = 0;
    }
    if (early_append) return;
    // Every block reading this kv head's ring entries for the sequence has finished: append its new keys.
    for (int u = r0; u < seq_end; ++u) {
        size_t ring_row;
        if (!append_ring_row(meta, u, sinks, window, max_positions, ring_row)) continue;  // overwritten in this chunk
        if (ROPE) {  // encoded here: one key's lanes for K, the next LPK lanes for V
            if (tid < 2 * LPK) {
                const bool is_v = tid >= LPK;
                float x[8];
                load_rotated8((is_v ? nw.raw_v : nw.raw_k) + (size_t)u * kv_dim + col,
                              is_v ? nullptr : nw.rope + (size_t)u * (nw.n_rot / 2), gl * 8, nw.n_rot, false, x);
                __align__(16) unsigned char bytes[KVSlots<KVT>::VB];
                uint32_t word;
                encode8<KVT>(x, col, key_lanes, bytes, &word);
                store8<KVT>(is_v ? ring_v : ring_k, is_v ? ring_vs : ring_ks, ring_row, kv_dim, col, bytes, word);
            }
            continue;
        }
        constexpr int WORDS = HD * (2 - KVT) / 4;  // one head's K (or V) values of a row, in 4-byte words
        const size_t src = ((size_t)u * kv_dim + kh * HD) * (2 - KVT) / 4, dst = (ring_row * kv_dim + kh * HD) * (2 - KVT) / 4;
        for (int w = threadIdx.x; w < 2 * WORDS; w += ATT_THREADS) {
            const bool is_v = w >= WORDS;
            const unsigned* from = reinterpret_cast<const unsigned*>(is_v ? nw.v : nw.k);
            unsigned* to = reinterpret_cast<unsigned*>(is_v ? ring_v : ring_k);
            to[dst + w - is_v * WORDS] = from[src + w - is_v * WORDS];
        }
        if (KVT == 1 && threadIdx.x < HD / Q8_BLOCK) {  // the head's HD / 32 scales of K and of V
            const int nsc = kv_dim / Q8_BLOCK, i = kh * (HD / Q8_BLOCK) + threadIdx.x;
            ring_ks[ring_row * nsc + i] = nw.ks[(size_t)u * nsc + i];
            ring_vs[ring_row * nsc + i] = nw.vs[(size_t)u * nsc + i];
        }
    }
}

// CudaBackend.n_splits sizes the grid at 8 blocks per SM (one wave); without GQA the kernel fits in 64 registers
#define ATT_MIN_BLOCKS(G) ((G) == 1 ? 8 : 1)
#define ATT_ENTRY(NAME, HD, G, KVT, ROPE, C, CLUSTER)                                                         \
    extern "C" __global__ void CLUSTER __launch_bounds__(ATT_THREADS, ATT_MIN_BLOCKS(G)) NAME(                 \
        const float* __restrict__ q, const float* __restrict__ q_sink, StepMeta meta, void* ring_k, void* ring_v, \
        __half* ring_ks, __half* ring_vs, const void* __restrict__ new_k, const void* __restrict__ new_v,      \
        const __half* __restrict__ new_ks, const __half* __restrict__ new_vs, const float* __restrict__ raw_k,  \
        const float* __restrict__ raw_v, const float4* __restrict__ rope, int n_rot, float* __restrict__ part_ml, float* __restrict__ part_acc, int* __restrict__ done,            \
        float* __restrict__ out, int n_kv_heads, int sinks, int window, int max_positions, float scale,         \
        int8_t* __restrict__ xq, float2* __restrict__ xds, int8_t* __restrict__ xd, float2* __restrict__ dsd,    \
        int* __restrict__ xs16, int Kp, int split_keys, int half_from) {                                       \
        const SplitOut o{part_ml, part_acc, done, out,                                                          \
                         RowQuant{xq, xds, xd, dsd, xs16, n_kv_heads * G * HD, Kp}};                             \
        attention_split<HD, G, KVT, ROPE, C>(q, q_sink, meta, ring_k, ring_v, ring_ks, ring_vs,                 \
                                             NewKV{new_k, new_v, new_ks, new_vs, raw_k, raw_v, rope, n_rot}, o,    \
                                             n_kv_heads, sinks, window, max_positions, scale, split_keys,          \
                                             half_from);                                                           \
    }

// attention_split_<HD>_<G>_<kv>: new keys staged; attention_split_rope_<HD>_<G>_<kv>: q and the new k rotated here;
// attention_split_rope_c4_<HD>_<G>_<kv>: the same launched in clusters of ATT_CLUSTER (4) blocks (CudaBackend: decode
// steps of short contexts)
#define ATT_CLUSTER 4
#define ATT_NO_CLUSTER
#define ATT_IN_CLUSTERS __cluster_dims__(ATT_CLUSTER, 1, 1)
#define ATT_ENTRIES(HD, G)                                                                                     \
    ATT_ENTRY(attention_split_##HD##_##G##_f16, HD, G, 0, false, 1, ATT_NO_CLUSTER)                            \
    ATT_ENTRY(attention_split_##HD##_##G##_q8, HD, G, 1, false, 1, ATT_NO_CLUSTER)                             \
    ATT_ENTRY(attention_split_rope_##HD##_##G##_f16, HD, G, 0, true, 1, ATT_NO_CLUSTER)                        \
    ATT_ENTRY(attention_split_rope_##HD##_##G##_q8, HD, G, 1, true, 1, ATT_NO_CLUSTER)                         \
    ATT_ENTRY(attention_split_rope_c4_##HD##_##G##_f16, HD, G, 0, true, ATT_CLUSTER, ATT_IN_CLUSTERS)          \
    ATT_ENTRY(attention_split_rope_c4_##HD##_##G##_q8, HD, G, 1, true, ATT_CLUSTER, ATT_IN_CLUSTERS)
ATT_ENTRIES(64, 1) ATT_ENTRIES(64, 2) ATT_ENTRIES(64, 3) ATT_ENTRIES(64, 4) ATT_ENTRIES(64, 8)
ATT_ENTRIES(128, 1) ATT_ENTRIES(128, 2) ATT_ENTRIES(128, 3) ATT_ENTRIES(128, 4) ATT_ENTRIES(128, 8)

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
