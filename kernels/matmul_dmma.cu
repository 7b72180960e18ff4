// The decode matmul of a few sequences on int8 tensor cores: out_m (n, N_m) f32 = x (n, K) . W_m (N_m, K)^T for
// n <= 4 rows of two-pass int8 activations (--decode-activations int8x2) and Q4_K or Q6_K weights, up to 3
// matrices of one type sharing x (Q/K/V, gate/up), one launch.
//
// Why: matmul_dec.cu's column entries sum each column's two passes with dp4a, so their integer work grows with the
// columns and they stop being bound by the weight bytes from about 3 columns on. Here one mma.sync per 16 rows x
// 32 (Q4_K) or 16 (Q6_K) values takes all 8 columns of 4 sequences x 2 passes at once: the weights are unpacked once
// per row and the products cost the same for 1 or 4 sequences.
//
// Math (act_quant.cuh): per 32 values x ~ d2 (256 q1 + q2), d2 = d1 / 256; the B operand's column 2s holds q1 of
// sequence s and column 2s + 1 its q2, so a lane's C pair (columns 2t, 2t + 1) gives I = 256 c_2t + c_2t+1 =
// sum w (256 q1 + q2) exactly (|I| < 2^24 for Q4_K; Q6_K rounds as matmul_dec.cu's does).
//   Q4_K (y = d sc_b q - dmin m_b per 32-value sub-block b, q 0..15 as signed bytes): one m16n8k32 per sub-block;
//     row += d sc_b d2 I - dmin m_b X, X = the sub-block's sum of x (dsd).
//   Q6_K (y = d sc_c (q - 32) per 16-value chunk c, q 0..63): one m16n8k16 per chunk; row += d sc_c d2 (I - 32 S),
//     S = 256 sum q1 + sum q2 over the chunk (xs16).
// Fragments (PTX ISA, mma .s8): lane = 4 g + t holds A rows g and g + 8 at k 4t..4t+3 (and 16 + 4t..: k32), B column g
// at the same k, C rows g, g + 8 x columns 2t, 2t + 1. Four consecutive k are four consecutive quant bytes of a row
// (Q4_K: low nibbles = sub-block 2j, high = 2j + 1 of qs[32j, 32j + 32); Q6_K: chunk c of unit j as matmul_dec.cu
// reads it), one 32-bit shared load; B: four consecutive bytes of x's row in xq.
//
// Layout of the work: a block of 4 warps owns groups of 16 consecutive rows (numbered over the concatenated row ranges
// of W_0..W_2, group g = blockIdx.x, + gridDim.x, ...); warp w sums the 256-value blocks [w nbk / 4, (w + 1) nbk / 4)
// of each row, with STAGES blocks of the 16 rows in flight (cp.async.bulk, one copy per row; the first issued before
// griddepcontrol.wait: the weights are constant); the four warps' sums meet in shared memory and are added in warp
// order (deterministic). Activations: the plain two-pass arrays xq (2 R, K) int8 (pass p of row s at row p R + s) and,
// per row s, dsd + s K/32 (d2, X) and xs16 + s K/16 (S), as quantize_act_q8x2_rows writes them.
// Entries: matmul_dmma_<type>_s<STAGES>(q0, s0, out0, N0, q1, s1, out1, N1, q2, s2, out2, N2, K, xq, R, dsd, xs16,
// n); s (Q6_K's d per block) is read by Q6_K only.
#include "async_copy.cuh"
#include "pdl.cuh"
#include "quant_blocks.cuh"

namespace {

constexpr int WARPS = 8, ROWS = 16, SEQS = 4;

__device__ __forceinline__ void mma_k32(int (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                        uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_k16(int (&c)[4], uint32_t a0, uint32_t a1, uint32_t b0) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
                 : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                 : "r"(a0), "r"(a1), "r"(b0));
}

__device__ __forceinline__ uint32_t lds32(const uint8_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

// What a lane reads of x: B column g = (sequence g / 2, pass g % 2) of xq (zeros past the n live sequences), and
// for its C columns' sequence t the per-32 (d2, X) and per-16 S.
struct XView {
    const uint8_t* b;    // its B row of xq
    bool live;           // sequence g / 2 < n
    const float2* dsd;   // sequence t's
    const int* xs16;
};

__device__ __forceinline__ uint32_t b_word(const XView& x, int k) {  // x's bytes k .. k + 3 of the B row
    return x.live ? __ldg(reinterpret_cast<const uint32_t*>(x.b + k)) : 0u;
}

// One 256-value block of rows g and g + 8 (ra, rb in shared memory) at K offset k0 into their sums
struct DmmaQ4K {
    static constexpr int BYTES = 144;
    __device__ static void block(const uint8_t* ra, const uint8_t* rb, const uint8_t*, const uint8_t*, int t,
                                 const XView& x, int k0, float& acc_a, float& acc_b) {
        const int4 ha = *reinterpret_cast<const int4*>(ra), hb = *reinterpret_cast<const int4*>(rb);
        const ScalesMinsK4 pa = scales_mins_k4(ha), pb = scales_mins_k4(hb);
        const float2 da = __half22float2(*reinterpret_cast<const __half2*>(&ha.x));  // (d, dmin)
        const float2 db = __half22float2(*reinterpret_cast<const __half2*>(&hb.x));
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const uint32_t wa0 = lds32(ra + 16 + 32 * j + 4 * t), wa2 = lds32(ra + 32 + 32 * j + 4 * t);
            const uint32_t wb0 = lds32(rb + 16 + 32 * j + 4 * t), wb2 = lds32(rb + 32 + 32 * j + 4 * t);
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int sb = 2 * j + h, k = k0 + 32 * sb, sh = 4 * h;
                int c[4] = {0, 0, 0, 0};
                mma_k32(c, (wa0 >> sh) & 0x0F0F0F0Fu, (wb0 >> sh) & 0x0F0F0F0Fu, (wa2 >> sh) & 0x0F0F0F0Fu,
                        (wb2 >> sh) & 0x0F0F0F0Fu, b_word(x, k + 4 * t), b_word(x, k + 16 + 4 * t));
                const float2 xs = __ldg(x.dsd + (k >> 5));
                const int byte = 8 * (sb & 3);
                const float sca = (float)(((sb < 4 ? pa.sc_lo : pa.sc_hi) >> byte) & 0xFFu);
                const float ma = (float)(((sb < 4 ? pa.m_lo : pa.m_hi) >> byte) & 0xFFu);
                const float scb = (float)(((sb < 4 ? pb.sc_lo : pb.sc_hi) >> byte) & 0xFFu);
                const float mb = (float)(((sb < 4 ? pb.m_lo : pb.m_hi) >> byte) & 0xFFu);
                acc_a += da.x * sca * xs.x * (float)(256 * c[0] + c[1]) - da.y * ma * xs.y;
                acc_b += db.x * scb * xs.x * (float)(256 * c[2] + c[3]) - db.y * mb * xs.y;
            }
        }
    }
};

struct DmmaQ6K {  // repacked blocks ql[128] | qh[64] | scales int8[16]; d per block in s
    static constexpr int BYTES = 208;
    __device__ static void block(const uint8_t* ra, const uint8_t* rb, const uint8_t* sa, const uint8_t* sb, int t,
                                 const XView& x, int k0, float& acc_a, float& acc_b) {
        const float da = __half2float(__ldg(reinterpret_cast<const __half*>(sa)));
        const float db = __half2float(__ldg(reinterpret_cast<const __half*>(sb)));
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int hh = j >> 1, nsh = 4 * (j & 1);
#pragma unroll
            for (int c4 = 0; c4 < 4; ++c4) {  // chunk: values 16 c4 .. of unit j
                const int sh = nsh + 2 * (c4 >> 1), k = k0 + 64 * j + 16 * c4;
                const int ql = 64 * hh + 16 * c4 + 4 * t, qh = 128 + 32 * hh + 16 * (c4 & 1) + 4 * t;
                const uint32_t qa = ((lds32(ra + ql) >> nsh) & 0x0F0F0F0Fu) | (((lds32(ra + qh) >> sh) << 4) & 0x30303030u);
                const uint32_t qb = ((lds32(rb + ql) >> nsh) & 0x0F0F0F0Fu) | (((lds32(rb + qh) >> sh) << 4) & 0x30303030u);
                int c[4] = {0, 0, 0, 0};
                mma_k16(c, qa, qb, b_word(x, k + 4 * t));
                const float d2 = __ldg(x.dsd + (k >> 5)).x;
                const int s16 = 32 * __ldg(x.xs16 + (k >> 4));
                const float sca = (float)static_cast<int8_t>(ra[192 + 4 * j + c4]);
                const float scb = (float)static_cast<int8_t>(rb[192 + 4 * j + c4]);
                acc_a += da * sca * d2 * (float)(256 * c[0] + c[1] - s16);
                acc_b += db * scb * d2 * (float)(256 * c[2] + c[3] - s16);
            }
        }
    }
};

// Group g of 16 rows over the concatenated row ranges of W_0..W_2: its matrix and first row
struct Group { const uint8_t* q; const uint8_t* s; float* out; int N, row0; };
__device__ __forceinline__ Group group_of(int g, const uint8_t* q0, const uint8_t* s0, float* o0, int N0,
                                         const uint8_t* q1, const uint8_t* s1, float* o1, int N1,
                                         const uint8_t* q2, const uint8_t* s2, float* o2, int N2) {
    const int g0 = (N0 + ROWS - 1) / ROWS, g1 = (N1 + ROWS - 1) / ROWS;
    if (g < g0) return Group{q0, s0, o0, N0, g * ROWS};
    if (g < g0 + g1) return Group{q1, s1, o1, N1, (g - g0) * ROWS};
    return Group{q2, s2, o2, N2, (g - g0 - g1) * ROWS};
}

template <class W, int STAGES, int CH>
__device__ __forceinline__ void dmma_body(const uint8_t* q0, const uint8_t* s0, float* o0, int N0,
                                          const uint8_t* q1, const uint8_t* s1, float* o1, int N1,
                                          const uint8_t* q2, const uint8_t* s2, float* o2, int N2, int K,
                                          const int8_t* __restrict__ xq, int R, const float2* __restrict__ dsd,
                                          const int* __restrict__ xs16, int n) {
    constexpr int RS = CH * W::BYTES + 16;  // a row's bytes in a stage (+16: the 8 rows a load touches in 8 bank groups)
    extern __shared__ __align__(128) uint8_t wsm[];  // (WARPS, STAGES, ROWS, RS)
    __shared__ __align__(8) uint64_t bar[WARPS][STAGES];
    __shared__ float part[WARPS][ROWS][SEQS];  // each warp's sums of the group
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g8 = lane >> 2, t = lane & 3;
    const int nbk = K >> 8, row_bytes = nbk * W::BYTES;
    const int kb0 = warp * nbk / WARPS, nk = (warp + 1) * nbk / WARPS - kb0;  // this warp's blocks of every row
    const int nch = (nk + CH - 1) / CH;  // ... in chunks of up to CH blocks
    const int groups = (N0 + ROWS - 1) / ROWS + (N1 + ROWS - 1) / ROWS + (N2 + ROWS - 1) / ROWS;
    const int mine = blockIdx.x < groups ? (groups - 1 - blockIdx.x) / gridDim.x + 1 : 0;  // the block's groups
    const int items = mine * nch;  // (group, chunk) pairs of this warp, in order
    uint8_t* stages = wsm + (size_t)warp * STAGES * ROWS * RS;
    auto chunk = [&](int ch) { return min(CH, nk - ch * CH); };  // blocks in chunk ch
    auto issue = [&](int s, int it) {  // item it's 16 row pieces into stage s
        const Group gr = group_of(blockIdx.x + it / nch * gridDim.x, q0, s0, o0, N0, q1, s1, o1, N1, q2, s2, o2, N2);
        const int ch = it % nch, bytes = chunk(ch) * W::BYTES;
        const size_t off = (size_t)(kb0 + ch * CH) * W::BYTES;
        bulk_expect(&bar[warp][s], ROWS * bytes);
        for (int r = 0; r < ROWS; ++r)  // rows past N: row N - 1 again, not stored
            bulk_copy_only(stages + ((size_t)s * ROWS + r) * RS,
                           gr.q + (size_t)min(gr.row0 + r, gr.N - 1) * row_bytes + off, bytes, &bar[warp][s]);
    };
    if (lane == 0) {
#pragma unroll
        for (int s = 0; s < STAGES; ++s) bulk_init(&bar[warp][s]);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#pragma unroll
        for (int s = 0; s < STAGES; ++s)
            if (s < items) issue(s, s);
    }
    __syncwarp();
    pdl_start();  // x is the previous kernel's output: everything below may read it

    const int bs = g8 >> 1;  // the sequence of this lane's B column
    const XView x{reinterpret_cast<const uint8_t*>(xq) + ((size_t)(g8 & 1) * R + bs) * K, bs < n,
                  dsd + (size_t)t * (K >> 5), xs16 + (size_t)t * (K >> 4)};
    int it = 0;
    for (int i = 0; i < mine; ++i) {
        const Group gr = group_of(blockIdx.x + i * gridDim.x, q0, s0, o0, N0, q1, s1, o1, N1, q2, s2, o2, N2);
        const int ra = min(gr.row0 + g8, gr.N - 1), rb = min(gr.row0 + g8 + 8, gr.N - 1);
        float acc_a = 0.f, acc_b = 0.f;
        for (int ch = 0; ch < nch; ++ch, ++it) {
            const int s = it % STAGES;
            bulk_wait(&bar[warp][s], (it / STAGES) & 1u);
            const uint8_t* st = stages + (size_t)s * ROWS * RS;
            for (int c = 0; c < chunk(ch); ++c) {
                const int kb = kb0 + ch * CH + c;
                W::block(st + g8 * RS + c * W::BYTES, st + (g8 + 8) * RS + c * W::BYTES,
                         gr.s + ((size_t)ra * nbk + kb) * 2, gr.s + ((size_t)rb * nbk + kb) * 2, t, x, 256 * kb,
                         acc_a, acc_b);
            }
            __syncwarp();  // every lane is done reading stage s
            if (lane == 0 && it + STAGES < items) {
                asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
                issue(s, it + STAGES);
            }
        }
        part[warp][g8][t] = acc_a;
        part[warp][g8 + 8][t] = acc_b;
        __syncthreads();
        if (threadIdx.x < ROWS * SEQS) {
            const int r = threadIdx.x >> 2, sq = threadIdx.x & 3;
            float v = part[0][r][sq];
#pragma unroll
            for (int w = 1; w < WARPS; ++w) v += part[w][r][sq];
            if (gr.row0 + r < gr.N && sq < n) gr.out[(size_t)sq * gr.N + gr.row0 + r] = v;
        }
        __syncthreads();  // part is the next group's
    }
}

}  // namespace

#define DMMA_ENTRY(suffix, W, STAGES, MIN_BLOCKS)                                                             \
    extern "C" __global__ void __launch_bounds__(32 * WARPS, MIN_BLOCKS) matmul_dmma_##suffix##_s##STAGES(    \
        const uint8_t* q0, const uint8_t* s0, float* o0, int N0, const uint8_t* q1, const uint8_t* s1,         \
        float* o1, int N1, const uint8_t* q2, const uint8_t* s2, float* o2, int N2, int K, const int8_t* xq,  \
        int R, const float2* dsd, const int* xs16, int n) {                                                   \
        dmma_body<W, STAGES, 2>(q0, s0, o0, N0, q1, s1, o1, N1, q2, s2, o2, N2, K, xq, R, dsd, xs16, n);      \
    }
DMMA_ENTRY(q4_k, DmmaQ4K, 2, 2)
DMMA_ENTRY(q4_k, DmmaQ4K, 3, 2)
DMMA_ENTRY(q6_k, DmmaQ6K, 2, 2)
DMMA_ENTRY(q6_k, DmmaQ6K, 3, 1)
