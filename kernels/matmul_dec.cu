// The batch-1 decode matmul of Q4_K (and, pipelined variant only, Q6_K) weights with two-pass int8 activations
// (--decode-activations int8x2 at one row, the default decode path at batch 1): out_m (N_m) f32 = W_m (N_m, K) . x
// for up to 3 matrices W_0..W_2 of one type sharing x (Q/K/V, gate/up), one launch. Its column entries (c<NC>, below)
// take 2-4 rows of x, a few sequences' decode step: out_m (n, N_m).
//
// Why not the paired vector kernel (matmul_vec.cu, which runs the two passes as two columns): measured on an H200 it
// issues 2.3 instructions per weight with 11.7 % occupancy and is bound by latency, not by the weight bytes
// (bench/RESULTS.md, fourth round). This kernel does the same arithmetic with fewer instructions (inner loop: 1.6-1.8
// per Q4_K weight against 1.9) and, in its shared-memory variant, many more bytes in flight (fifth round):
//   * the two passes share one integer sum. quantize_act_q8x2 quantizes the residual with d2 = d1 / 256 exactly,
//     so per 32 values  x . w = d2 * (256 * (q1 . w) + q2 . w): the dp4a chain of pass 1, a shift by 8, the
//     chain of pass 2 into the same accumulator, then one float scaling (not one per pass);
//   * a high nibble is used in place as the byte 16 * h (one mask, no shift) with an unsigned x signed dp4a; the
//     factor 16 leaves the integer sum by a shift;
//   * the activations come from a copy in the order the lanes read them (below), so each activation load of a
//     warp is 512 contiguous bytes instead of 32 pieces 64 bytes apart;
//   * the (scale, min) pair of both sub-blocks of a unit is decoded once for both passes.
// Integer ranges: per sub-block |256 * q1.w + q2.w| <= 257 * 32 * 15 * 127 < 2^24; times a 6-bit scale < 2^30.
//
// Weights: the file's 144-byte Q4_K blocks (quant_blocks.cuh). Unit u of a row (64 values) = the 32 bytes
// qs[32j, 32j+32) of block u/4, j = u%4: low nibbles = sub-block 2j (values 64u + 0..31), high nibbles =
// sub-block 2j+1 (values 64u + 32..63); its 16-byte halves q0, q1 hold values 0..15 / 16..31 of each sub-block.
// Activations (quantize_act.cu, the decode copy): per pass p (0, 1) at xd + p * Kp (Kp = K rounded up to 2048),
// the 16-value chunk c (0..3) of unit u at (u/32)*2048 + c*512 + (u%32)*16: chunks 0, 1 = sub-block 2j, chunks
// 2, 3 = sub-block 2j+1. dsd (K/32) float2 = (d2, sum of the quantized x) per 32 values; xs16 (K/16) int32 =
// 256 sum(q1) + sum(q2) per 16 values (Q6_K's offset of 32, below).
// Q6_K (repacked 208-byte blocks ql | qh | scales, d apart: quant_blocks.cuh): unit u (64 values, j = u%4, h = j/2)
// = low (j even) or high (j odd) nibbles of ql[64h, 64h+64) + 2 bits of qh[32h, 32h+32) shifted by 4(j%2) (values
// 0..31) or 4(j%2)+2 (32..63), scales[4j, 4j+4) one per chunk; y = d sc (q - 32): the quants enter dp4a unsigned
// (0..63) and 32 xs16 is subtracted per chunk. Per chunk |I - 32 X| < 2^26: converted to float before the scale.
//
// Launch shape of the register variant: 128 threads = 4 warps per block; a warp owns RT consecutive rows, lane l takes
// units l, l+32, ... of each; blocks are numbered over the concatenated row ranges of W_0..W_2: grid.x = sum
// ceil(N_m / (4 RT)). Each lane keeps the next unit's weight loads in flight while it computes the current one,
// and the first ones are issued before griddepcontrol.wait: weights are constant, only x depends on the previous
// kernel, so under programmatic launch their DRAM latency overlaps that kernel (kernels/pdl.cuh). The shared-memory
// variant (below) has its own grid.
//
// Entries: matmul_dec_q4_k_r<RT>p1 (the register variant: each row's weights loaded one unit ahead, the first before
// the wait; loading them at use or two units ahead was slower), _r<RT>s<STAGES> (the shared-memory variant below),
// matmul_dec_q6_k_r<RT>s<STAGES>, _r2k2s2 (both types: the K of each row split between two warps, for long rows),
// matmul_dec_q4_k_q6_k_r2s2 (W_0, W_1 Q4_K, W_2 Q6_K: Q, K and V of a Q4_K_M layer in one launch; its stages are
// sized for Q6_K rows, and each warp takes its group's type). Signature: (q0, s0, out0, N0, q1, s1, out1, N1, q2, s2,
// out2, N2, K, xd int8, dsd float2, xs16 int32, Kp); s (Q6_K's d per block) and xs16 are read by Q6_K only. The
// column entries _r2s2c<NC> and _r2k2s2c<NC> (both types, and matmul_dec_q4_k_q6_k_r2s2c<NC>) add ncols: the rows of x
// (group_dot). And matmul_dec_glu_q4_k_w<W>s<STAGES>, with a signature of its own: gate and up of a feed-forward with
// silu and the quantization of its output (dec_glu_body, below).
#include "act_quant.cuh"
#include "async_copy.cuh"
#include "pdl.cuh"
#include "quant_blocks.cuh"

namespace {

constexpr int WARPS = 4;
constexpr int BLOCK_BYTES = 144;  // Q4_K: (d, dmin) f16, 12 scale bytes, 128 quant bytes per 256 values

struct Unit { int4 hdr, q0, q1; };  // one unit of one row: its block's header and 32 quant bytes

// unsigned bytes of a . signed bytes of b, + c
__device__ __forceinline__ int dp4a_us(uint32_t a, int b, int c) {
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// unit j of the block whose header is at h
__device__ __forceinline__ Unit load_unit(const uint8_t* h, int j) {
    return Unit{ld16(h), ld16(h + 16 + 32 * j), ld16(h + 32 + 32 * j)};
}

struct Act {
    int4 c[2][4];  // the unit's activation chunks per pass
    float4 ds;     // (d2, sum) of its two 32-blocks
    int4 x16;      // Q6_K: 256 sum(q1) + sum(q2) of each chunk
};

// Unit u's activations; xa = this lane's place in the 32-unit group of u (xd + (u/32)*2048 + (u%32)*16)
template <bool X16>
__device__ __forceinline__ Act load_act(const int8_t* xa, int Kp, const float4* __restrict__ dsd,
                                        const int4* __restrict__ xs16, int u) {
    Act a;
#pragma unroll
    for (int p = 0; p < 2; ++p)
#pragma unroll
        for (int c = 0; c < 4; ++c) a.c[p][c] = __ldg(reinterpret_cast<const int4*>(xa + (size_t)p * Kp + c * 512));
    a.ds = __ldg(dsd + u);
    if (X16) a.x16 = __ldg(xs16 + u);
    return a;
}

// Per-lane constants of the (scale, min) unpacking: a lane always sees the same j = u % 4 (u = lane + 32 i)
struct SubBlocks {
    uint32_t sel;  // byte_perm selector of bytes 2(j%2), 2(j%2)+1 of a header word
    bool upper;    // j >= 2: sub-blocks 4..7, whose 6-bit fields are split over two words
};

// Unit u's contribution to one row: d * sum_s d2_s sc_s I_s - dmin * sum_s m_s S_s over its sub-blocks s = 2j, 2j+1
// (I_s the combined integer sum, S_s the sum of the quantized x).
__device__ __forceinline__ float unit_dot(const Unit& w, const Act& a, SubBlocks sb) {
    uint32_t lo[8], hi[8];  // words of q0 then q1: low nibbles as 0..15, high nibbles as 16 * (0..15)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const uint32_t v0 = static_cast<uint32_t>(word(w.q0, i)), v1 = static_cast<uint32_t>(word(w.q1, i));
        lo[i] = v0 & 0x0F0F0F0Fu, lo[4 + i] = v1 & 0x0F0F0F0Fu;
        hi[i] = v0 & 0xF0F0F0F0u, hi[4 + i] = v1 & 0xF0F0F0F0u;
    }
    int s_lo = 0, s_hi = 0;
#pragma unroll
    for (int p = 0; p < 2; ++p) {
        if (p == 1) s_lo <<= 8, s_hi <<= 8;  // pass 1 counts 256 times pass 2 (d1 = 256 d2)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            s_lo = __dp4a(static_cast<int>(lo[i]), word(a.c[p][0], i), s_lo);
            s_lo = __dp4a(static_cast<int>(lo[4 + i]), word(a.c[p][1], i), s_lo);
            s_hi = dp4a_us(hi[i], word(a.c[p][2], i), s_hi);
            s_hi = dp4a_us(hi[4 + i], word(a.c[p][3], i), s_hi);
        }
    }
    s_hi >>= 4;  // exact: every high-nibble byte carried a factor 16
    // (scale, min) of sub-blocks 2j, 2j+1 as byte pairs, from the header words .y, .z, .w = scale bytes b[0..3],
    // b[4..7], b[8..11] (ggml's get_scale_min_k4: sub-block s < 4: scale = b[s] & 63, min = b[s+4] & 63; s >= 4:
    // scale = (b[s+4] & 15) | (b[s-4] >> 6) << 4, min = (b[s+4] >> 4) | (b[s] >> 6) << 4)
    const uint32_t b03 = __byte_perm(w.hdr.y, 0, sb.sel), b47 = __byte_perm(w.hdr.z, 0, sb.sel),
                   b811 = __byte_perm(w.hdr.w, 0, sb.sel);
    const uint32_t sc = sb.upper ? (b811 & 0x0F0Fu) | ((b03 >> 2) & 0x3030u) : b03 & 0x3F3Fu;
    const uint32_t m = sb.upper ? ((b811 >> 4) & 0x0F0Fu) | ((b47 >> 2) & 0x3030u) : b47 & 0x3F3Fu;
    const float2 dd = __half22float2(*reinterpret_cast<const __half2*>(&w.hdr.x));  // (d, dmin)
    const float dot = a.ds.x * static_cast<float>(s_lo * static_cast<int>(sc & 0xFFu)) +
                      a.ds.z * static_cast<float>(s_hi * static_cast<int>(sc >> 8));
    const float mins = a.ds.y * u2f(m & 0xFFu) + a.ds.w * u2f(m >> 8);
    return dd.x * dot - dd.y * mins;
}

// the block's rows start at block_row0 of the matrix q (N rows)
template <int RT>
__device__ __forceinline__ void dec_body(const uint8_t* __restrict__ q, float* __restrict__ out, int N, int K,
                                         int block_row0, const int8_t* __restrict__ xd,
                                         const float4* __restrict__ dsd, int Kp) {
    constexpr int STEP = 8 * BLOCK_BYTES;  // 32 units = 8 blocks of a row per iteration
    const int lane = threadIdx.x & 31;
    const int row0 = block_row0 + (threadIdx.x >> 5) * RT;
    const int units = K >> 6;
    const int j = lane & 3;
    const SubBlocks sb{(2u * (j & 1)) | ((2u * (j & 1) + 1) << 4), j >= 2};
    const uint8_t* hp[RT];  // this lane's block header in each of its rows; its quants at + 16 + 32 j
#pragma unroll
    for (int t = 0; t < RT; ++t)  // rows past N reload row N-1, not stored
        hp[t] = q + (size_t)min(row0 + t, N - 1) * (K >> 8) * BLOCK_BYTES + (lane >> 2) * BLOCK_BYTES;
    const bool live = row0 < N;

    Unit next[RT];  // the next unit of each row, loaded one iteration ahead (the first before the wait)
    if (live && lane < units) {
#pragma unroll
        for (int t = 0; t < RT; ++t) next[t] = load_unit(hp[t], j);
    }
    pdl_start();  // x is the previous kernel's output: everything below may read it

    float acc[RT];
#pragma unroll
    for (int t = 0; t < RT; ++t) acc[t] = 0.f;
    if (live) {
        const int8_t* xa = xd + lane * 16;
#pragma unroll 2
        for (int u = lane; u < units; u += 32) {
            Unit w[RT];
#pragma unroll
            for (int t = 0; t < RT; ++t) w[t] = next[t];
            if (u + 32 < units) {
#pragma unroll
                for (int t = 0; t < RT; ++t) next[t] = load_unit(hp[t] + STEP, j);
            }
#pragma unroll
            for (int t = 0; t < RT; ++t) hp[t] += STEP;
            const Act a = load_act<false>(xa, Kp, dsd, nullptr, u);
            xa += 2048;
#pragma unroll
            for (int t = 0; t < RT; ++t) acc[t] += unit_dot(w[t], a, sb);
        }
    }
#pragma unroll
    for (int t = 0; t < RT; ++t) acc[t] = warp_sum(acc[t]);
    if (lane == 0) {
#pragma unroll
        for (int t = 0; t < RT; ++t)
            if (row0 + t < N) out[row0 + t] = acc[t];
    }
}

// --- shared-memory (TMA) variant ---------------------------------------------------------------------------------
// The register variant above keeps only one unit per row in flight (in registers), and ncu shows them waiting
// on those loads (H200, 22016x4096: 14 cycles per issued instruction, 9.5 of them on L1TEX loads, DRAM 57 % busy).
// Here the rows are copied by the bulk-copy engine (cp.async.bulk, completing on an mbarrier) into shared memory:
// the bytes in flight are bounded by shared memory, not registers, and the first copies are issued before
// griddepcontrol.wait, so under programmatic launch they overlap the previous kernels. The grid is only as large as
// fits on the GPU at once, and each warp walks groups of RT rows g = first, first + stride, ... (stride = the grid's
// warps, the groups numbered over the concatenated row ranges of W_0..W_2) with STAGES groups in flight: while it
// computes one group from shared memory (per quarter warp the 16-byte reads of 8 lanes fall in 8 distinct bank
// groups), the copies of the next STAGES - 1 are on their way; the stage it frees gets the group STAGES strides
// ahead. (Copying each warp's rows once at block start, with a grid of every row, left the copy engine idle while a
// wave of blocks computed: 22016x4096 16.4 us against 15.4 here.)

__device__ __forceinline__ void bulk_init(uint64_t* bar) {  // one arrival per phase (the copy's issuer)
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_addr(bar)) : "memory");
}

// bar's current phase completes once `bytes` more have landed (the copies below count them off)
__device__ __forceinline__ void bulk_expect(uint64_t* bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}

// copy `bytes` (a multiple of 16, both addresses 16-byte aligned) to shared memory, counted off bar's expected bytes
__device__ __forceinline__ void bulk_copy_only(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 ::"r"(smem_addr(dst)), "l"(src), "r"(bytes), "r"(smem_addr(bar)) : "memory");
}

// one copy that completes bar's current phase
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
    bulk_expect(bar, bytes);
    bulk_copy_only(dst, src, bytes, bar);
}

__device__ __forceinline__ void bulk_wait(uint64_t* bar, uint32_t parity) {  // until phase `parity` completes
    asm volatile("{\n\t.reg .pred done;\n\tWAIT:\n\t"
                 "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n\t"
                 "@!done bra WAIT;\n\t}" ::"r"(smem_addr(bar)), "r"(parity) : "memory");
}

// Lane 0 of the calling warp: its STAGES barriers set up and the copies of its first groups first, first + stride,
// ... (fewer than STAGES when there are not as many below `groups`) started by issue(stage, group); before the wait
template <int STAGES, class Issue>
__device__ __forceinline__ void start_stages(uint64_t* bars, int first, int stride, int groups,
                                             const Issue& issue) {
    if ((threadIdx.x & 31) == 0) {
#pragma unroll
        for (int s = 0; s < STAGES; ++s) bulk_init(&bars[s]);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#pragma unroll
        for (int s = 0; s < STAGES; ++s)
            if (first + s * stride < groups) issue(s, first + s * stride);
    }
    __syncwarp();
}

// Lane 0, once its warp has read stage s: the copy of group `next` into it, where there is one (the warp's reads
// ordered before the copy's writes)
template <class Issue>
__device__ __forceinline__ void restage(int s, int next, int groups, const Issue& issue) {
    if (next < groups) {
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        issue(s, next);
    }
}

__device__ __forceinline__ int4 lds16(const uint8_t* p) { return *reinterpret_cast<const int4*>(p); }

// The weight types of the pipelined variant: row bytes per 256 values, and a unit's contribution to a row from its
// block in shared memory (Q6_K also reads its block's d from s_row, the row's scales in global memory).
struct DecQ4K {
    static constexpr int BYTES = 144;
    static constexpr bool X16 = false;
    __device__ static float dot(const uint8_t* blk, int j, SubBlocks sb, const Act& a, const uint8_t*, int) {
        return unit_dot(Unit{lds16(blk), lds16(blk + 16 + 32 * j), lds16(blk + 32 + 32 * j)}, a, sb);
    }
};

struct DecQ6K {
    static constexpr int BYTES = 208;
    static constexpr bool X16 = true;
    __device__ static float dot(const uint8_t* blk, int j, SubBlocks, const Act& a, const uint8_t* s_row, int b) {
        const int h = j >> 1, nsh = 4 * (j & 1);  // nibble of ql; qh's 2-bit field of values 0..31 at 2 * 2(j%2)
        int4 ql[4], qh[2];
#pragma unroll
        for (int c = 0; c < 4; ++c) ql[c] = lds16(blk + 64 * h + 16 * c);
#pragma unroll
        for (int c = 0; c < 2; ++c) qh[c] = lds16(blk + 128 + 32 * h + 16 * c);
        const uint32_t sc4 = *reinterpret_cast<const uint32_t*>(blk + 192 + 4 * j);  // int8 scale of each chunk
        float v[4];
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const int sh = nsh + 2 * (c >> 1);  // values 16c..16c+15: qh bytes 16(c%2).. shifted by this
            uint32_t q[4];
#pragma unroll
            for (int i = 0; i < 4; ++i)
                q[i] = ((static_cast<uint32_t>(word(ql[c], i)) >> nsh) & 0x0F0F0F0Fu) |
                       (((static_cast<uint32_t>(word(qh[c & 1], i)) >> sh) << 4) & 0x30303030u);
            int s_c = 0;
#pragma unroll
            for (int p = 0; p < 2; ++p) {
                if (p == 1) s_c <<= 8;
#pragma unroll
                for (int i = 0; i < 4; ++i) s_c = dp4a_us(q[i], word(a.c[p][c], i), s_c);
            }
            const int sc = static_cast<int8_t>((sc4 >> (8 * c)) & 0xFFu);
            v[c] = static_cast<float>(s_c - 32 * word(a.x16, c)) * static_cast<float>(sc);
        }
        const float d = __half2float(__ldg(reinterpret_cast<const __half*>(s_row) + b));
        return d * (a.ds.x * (v[0] + v[1]) + a.ds.z * (v[2] + v[3]));
    }
};

// Group g of RT consecutive rows of a launch over the concatenated row ranges of W_0..W_2: its matrix and first row
struct Group { const uint8_t* q; const uint8_t* s; float* out; int N, row0; };
template <int RT>
__device__ __forceinline__ Group group_of(int g, const uint8_t* q0, const uint8_t* s0, float* o0, int N0,
                                         const uint8_t* q1, const uint8_t* s1, float* o1, int N1,
                                         const uint8_t* q2, const uint8_t* s2, float* o2, int N2) {
    const int g0 = (N0 + RT - 1) / RT, g1 = (N1 + RT - 1) / RT;
    if (g < g0) return Group{q0, s0, o0, N0, g * RT};
    if (g < g0 + g1) return Group{q1, s1, o1, N1, (g - g0) * RT};
    return Group{q2, s2, o2, N2, (g - g0 - g1) * RT};
}

// The RT sums per column of one group whose rows (weight type W) are in shared memory at `rows` (row_bytes apart);
// j, sb: the lane's unit constants. NC columns (x rows) of which the first ncols are live (NC > 1: the entries ending
// in c<NC>, a few sequences' decode step): column c's decode copy at xd + 2 c Kp, its dsd and xs16 c K/64 float4 /
// int4 further. Each column's sums are those of the one-column code, in the same order.
template <int RT, int NC = 1> struct Sums { float v[NC][RT]; };
// (units u0 .. u1 - 1 of the rows, u0 a multiple of 4: `rows` holds their blocks from u0 / 4 on)
template <class W, int RT, int NC = 1>
__device__ __forceinline__ Sums<RT, NC> group_dot(const Group& gr, const uint8_t* rows, int row_bytes, int u0, int u1,
                                                  int nbk, int j, SubBlocks sb, const int8_t* __restrict__ xd,
                                                  const float4* __restrict__ dsd, const int4* __restrict__ xs16,
                                                  int Kp, int ncols = 1) {
    const int lane = threadIdx.x & 31;
    Sums<RT, NC> acc;
#pragma unroll
    for (int c = 0; c < NC; ++c)
#pragma unroll
        for (int t = 0; t < RT; ++t) acc.v[c][t] = 0.f;
    const int8_t* xa = xd + ((u0 + lane) >> 5) * 2048 + ((u0 + lane) & 31) * 16;
    const uint8_t* hp = rows + (lane >> 2) * W::BYTES;
#pragma unroll 2
    for (int u = u0 + lane; u < u1; u += 32) {
        const int8_t* xu = xa;
        xa += 2048;
#pragma unroll
        for (int c = 0; c < NC; ++c) {
            if (NC > 1 && c >= ncols) break;  // (warp-uniform)
            const size_t cu = (size_t)c * nbk * 4;  // column c's dsd / xs16 offset, in units
            const Act a = load_act<W::X16>(xu + (size_t)c * 2 * Kp, Kp, dsd + cu, xs16 + cu, u);
#pragma unroll
            for (int t = 0; t < RT; ++t) {
                const int row = min(gr.row0 + t, gr.N - 1);
                acc.v[c][t] += W::dot(hp + (size_t)t * row_bytes, j, sb, a, gr.s + (size_t)row * nbk * 2, u >> 2);
            }
        }
        hp += 8 * W::BYTES;
    }
    return acc;
}

template <class A, class B> struct SameType { static constexpr bool value = false; };
template <class A> struct SameType<A, A> { static constexpr bool value = true; };

// W_0, W_1 of type WA, W_2 of type WB (WA == WB: one type); a stage holds RT rows of the larger type
template <class WA, class WB, int RT, int STAGES, int NC = 1>
__device__ __forceinline__ void dec_pipe_body(const uint8_t* q0, const uint8_t* s0, float* o0, int N0,
                                              const uint8_t* q1, const uint8_t* s1, float* o1, int N1,
                                              const uint8_t* q2, const uint8_t* s2, float* o2, int N2, int K,
                                              const int8_t* __restrict__ xd, const float4* __restrict__ dsd,
                                              const int4* __restrict__ xs16, int Kp, int ncols = 1) {
    constexpr bool MIXED = !SameType<WA, WB>::value;
    constexpr int MAX_BYTES = WA::BYTES > WB::BYTES ? WA::BYTES : WB::BYTES;
    extern __shared__ __align__(128) uint8_t wsm[];  // (WARPS, STAGES, RT, row bytes of the larger type)
    __shared__ __align__(8) uint64_t bar[WARPS][STAGES];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int nbk = K >> 8;
    const int max_row_bytes = nbk * MAX_BYTES;
    const int groups_a = (N0 + RT - 1) / RT + (N1 + RT - 1) / RT;  // those of W_0 and W_1
    const int groups = groups_a + (N2 + RT - 1) / RT;
    const int stride = gridDim.x * WARPS, first = blockIdx.x * WARPS + warp;
    uint8_t* stages = wsm + (size_t)warp * STAGES * RT * max_row_bytes;
    auto row_bytes = [&](int g) { return MIXED ? nbk * (g >= groups_a ? WB::BYTES : WA::BYTES) : max_row_bytes; };
    auto issue = [&](int s, int g) {  // the copy of group g into stage s (its rows are contiguous: one copy)
        const Group gr = group_of<RT>(g, q0, s0, o0, N0, q1, s1, o1, N1, q2, s2, o2, N2);
        const int rb = row_bytes(g);
        bulk_copy(stages + (size_t)s * RT * max_row_bytes, gr.q + (size_t)gr.row0 * rb, min(RT, gr.N - gr.row0) * rb,
                  &bar[warp][s]);
    };
    start_stages<STAGES>(bar[warp], first, stride, groups, issue);
    pdl_start();  // x is the previous kernel's output: everything below may read it

    const int units = K >> 6;
    const int j = lane & 3;
    const SubBlocks sb{(2u * (j & 1)) | ((2u * (j & 1) + 1) << 4), j >= 2};
    uint32_t parity = 0;  // bit s: the phase of stage s's barrier to wait for next
    int s = 0;
    for (int g = first; g < groups; g += stride) {
        const Group gr = group_of<RT>(g, q0, s0, o0, N0, q1, s1, o1, N1, q2, s2, o2, N2);
        const int live = min(RT, gr.N - gr.row0);  // rows past N: shared memory left as it was, sums not stored
        bulk_wait(&bar[warp][s], (parity >> s) & 1u);
        parity ^= 1u << s;
        const uint8_t* rows = stages + (size_t)s * RT * max_row_bytes;
        Sums<RT, NC> acc = MIXED && g >= groups_a  // (warp-uniform)
            ? group_dot<WB, RT, NC>(gr, rows, row_bytes(g), 0, units, nbk, j, sb, xd, dsd, xs16, Kp, ncols)
            : group_dot<WA, RT, NC>(gr, rows, row_bytes(g), 0, units, nbk, j, sb, xd, dsd, xs16, Kp, ncols);
#pragma unroll
        for (int c = 0; c < NC; ++c)
#pragma unroll
            for (int t = 0; t < RT; ++t) acc.v[c][t] = warp_sum(acc.v[c][t]);
        __syncwarp();  // every lane is done reading stage s
        if (lane == 0) {
#pragma unroll
            for (int c = 0; c < NC; ++c)
#pragma unroll
                for (int t = 0; t < RT; ++t)
                    if (t < live && (NC == 1 || c < ncols)) gr.out[(size_t)c * gr.N + gr.row0 + t] = acc.v[c][t];
            restage(s, g + STAGES * stride, groups, issue);
        }
        s = s + 1 == STAGES ? 0 : s + 1;
    }
}

// --- K split between the two warps of a pair (long rows) --------------------------------------------------------
// At K = 11008 a warp's stages of whole rows leave room for few resident warps (r2s2: one block per SM). Here the two
// warps of a pair (warps 2p, 2p + 1 of the block) share each group of RT rows: warp 2p + h copies and sums the units
// [0, um) (h = 0) or [um, units) (h = 1) of each row, um = units / 2 rounded up to a whole block, then warp 2p + 1
// leaves its RT sums in shared memory and warp 2p adds them to its own (in that order) and stores the rows. The
// pairs walk the groups as the warps of dec_pipe_body do; one named barrier (id 1 + p) per group, the sums' buffer
// alternating between groups so that the next group's write waits on nothing.
__device__ __forceinline__ void pair_sync(int pair) {
    asm volatile("bar.sync %0, 64;" ::"r"(1 + pair) : "memory");
}

template <class W, int RT, int STAGES, int NC = 1>
__device__ __forceinline__ void dec_pipe_k2_body(const uint8_t* q0, const uint8_t* s0, float* o0, int N0,
                                                 const uint8_t* q1, const uint8_t* s1, float* o1, int N1,
                                                 const uint8_t* q2, const uint8_t* s2, float* o2, int N2, int K,
                                                 const int8_t* __restrict__ xd, const float4* __restrict__ dsd,
                                                 const int4* __restrict__ xs16, int Kp, int ncols = 1) {
    extern __shared__ __align__(128) uint8_t wsm[];  // (WARPS, STAGES, RT, the longer half's bytes)
    __shared__ __align__(8) uint64_t bar[WARPS][STAGES];
    __shared__ float part[WARPS / 2][2][NC][RT];  // warp 2p + 1's sums, by pair, group parity and column
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int pair = warp >> 1, h = warp & 1;
    const int nbk = K >> 8, units = K >> 6;
    const int um = ((units / 2 + 3) / 4) * 4;          // the halves' boundary, a whole block
    const int b0 = h ? um / 4 : 0, nb = h ? nbk - um / 4 : um / 4;  // this warp's blocks of each row
    const int row_bytes = nbk * W::BYTES, half_bytes = (um / 4) * W::BYTES;  // a stage row: the longer half
    const int groups = (N0 + RT - 1) / RT + (N1 + RT - 1) / RT + (N2 + RT - 1) / RT;
    const int stride = gridDim.x * (WARPS / 2), first = blockIdx.x * (WARPS / 2) + pair;
    uint8_t* stages = wsm + (size_t)warp * STAGES * RT * half_bytes;
    auto issue = [&](int s, int g) {  // this warp's half of group g's rows into stage s
        const Group gr = group_of<RT>(g, q0, s0, o0, N0, q1, s1, o1, N1, q2, s2, o2, N2);
        const int live = min(RT, gr.N - gr.row0);
        bulk_expect(&bar[warp][s], live * nb * W::BYTES);
        for (int t = 0; t < live && nb > 0; ++t)  // (K = 256: the second half is empty)
            bulk_copy_only(stages + ((size_t)s * RT + t) * half_bytes,
                           gr.q + (size_t)(gr.row0 + t) * row_bytes + b0 * W::BYTES, nb * W::BYTES, &bar[warp][s]);
    };
    start_stages<STAGES>(bar[warp], first, stride, groups, issue);
    pdl_start();  // x is the previous kernel's output: everything below may read it

    const int j = lane & 3;
    const SubBlocks sb{(2u * (j & 1)) | ((2u * (j & 1) + 1) << 4), j >= 2};
    uint32_t parity = 0;
    int s = 0, round = 0;
    for (int g = first; g < groups; g += stride, ++round) {
        const Group gr = group_of<RT>(g, q0, s0, o0, N0, q1, s1, o1, N1, q2, s2, o2, N2);
        const int live = min(RT, gr.N - gr.row0);
        bulk_wait(&bar[warp][s], (parity >> s) & 1u);
        parity ^= 1u << s;
        Sums<RT, NC> acc = group_dot<W, RT, NC>(gr, stages + (size_t)s * RT * half_bytes, half_bytes, h ? um : 0,
                                                h ? units : um, nbk, j, sb, xd, dsd, xs16, Kp, ncols);
#pragma unroll
        for (int c = 0; c < NC; ++c)
#pragma unroll
            for (int t = 0; t < RT; ++t) acc.v[c][t] = warp_sum(acc.v[c][t]);
        __syncwarp();  // every lane is done reading stage s
        if (lane == 0) {
            if (h == 1) {
#pragma unroll
                for (int c = 0; c < NC; ++c)
#pragma unroll
                    for (int t = 0; t < RT; ++t) part[pair][round & 1][c][t] = acc.v[c][t];
            }
            restage(s, g + STAGES * stride, groups, issue);
        }
        pair_sync(pair);  // warp 2p + 1's sums are written (and the group before's were read)
        if (h == 0 && lane == 0) {
#pragma unroll
            for (int c = 0; c < NC; ++c)
#pragma unroll
                for (int t = 0; t < RT; ++t)
                    if (t < live && (NC == 1 || c < ncols))
                        gr.out[(size_t)c * gr.N + gr.row0 + t] = acc.v[c][t] + part[pair][round & 1][c][t];
        }
        s = s + 1 == STAGES ? 0 : s + 1;
    }
}

// --- gate and up with silu and the quantization of its output (a Q4_K_M feed-forward at batch 1) ----------------
// og = W_g . x, ou = W_u . x (N rows each, Q4_K), h = silu(og) * ou = og / (1 + exp(-og)) * ou as elementwise.cu
// computes it, and h's two-pass quantization with the decode copy (RowQuant: what silu_mul_quant_x2 writes), in one
// launch instead of the matmul's and silu_mul's. The quantization needs 32 consecutive values of h, so a block of W
// warps owns chunks of 32 rows (c = blockIdx.x, blockIdx.x + gridDim.x, ...): in round k (0 .. 32 / W - 1) of a chunk
// warp w sums the 2 rows 32c + W k + 2(w/2) + {0, 1} of W_g (w even) or W_u (w odd), with its next STAGES groups of
// rows in flight as in dec_pipe_body (here a warp's groups are its rounds, chunk after chunk). Each row's sum goes to
// og / ou and to shared memory; after a chunk's rounds warp 0 makes the chunk's 32 values of h, one per lane, and
// quantizes them. N % 32 == 0.
template <int W, int STAGES>
__device__ __forceinline__ void dec_glu_body(const uint8_t* qg, float* og, const uint8_t* qu, float* ou, int N, int K,
                                             const int8_t* __restrict__ xd, const float4* __restrict__ dsd, int Kp,
                                             float* h, const RowQuant& hq) {
    constexpr int RT = 2, ROUNDS = 32 / (W / 2 * RT);
    extern __shared__ __align__(128) uint8_t wsm[];  // (W, STAGES, RT, row bytes)
    __shared__ __align__(8) uint64_t bar[W][STAGES];
    __shared__ float sums[2][32];  // W_g's and W_u's sums of the chunk's rows
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int up = warp & 1, nbk = K >> 8, row_bytes = nbk * BLOCK_BYTES;
    const uint8_t* q = up ? qu : qg;
    float* o = up ? ou : og;
    const int chunks = N / 32;
    const int groups = blockIdx.x < chunks ? ((chunks - 1 - blockIdx.x) / gridDim.x + 1) * ROUNDS : 0;  // block-wide
    auto first_row = [&](int g) {  // of this warp's group g: round g % ROUNDS of its (g / ROUNDS)-th chunk
        return (blockIdx.x + g / ROUNDS * gridDim.x) * 32 + g % ROUNDS * W + (warp >> 1) * RT;
    };
    uint8_t* stages = wsm + (size_t)warp * STAGES * RT * row_bytes;
    auto issue = [&](int s, int g) {
        bulk_copy(stages + (size_t)s * RT * row_bytes, q + (size_t)first_row(g) * row_bytes, RT * row_bytes,
                  &bar[warp][s]);
    };
    start_stages<STAGES>(bar[warp], 0, 1, groups, issue);
    pdl_start();  // x is the previous kernel's output: everything below may read it

    const int j = lane & 3;
    const SubBlocks sb{(2u * (j & 1)) | ((2u * (j & 1) + 1) << 4), j >= 2};
    uint32_t parity = 0;
    int s = 0;
    for (int g = 0; g < groups; ++g) {
        const int r = first_row(g);
        bulk_wait(&bar[warp][s], (parity >> s) & 1u);
        parity ^= 1u << s;
        Sums<RT> acc = group_dot<DecQ4K, RT>(Group{q, nullptr, o, N, r}, stages + (size_t)s * RT * row_bytes,
                                             row_bytes, 0, K >> 6, nbk, j, sb, xd, dsd, nullptr, Kp);
#pragma unroll
        for (int t = 0; t < RT; ++t) acc.v[0][t] = warp_sum(acc.v[0][t]);
        __syncwarp();  // every lane is done reading stage s
        if (lane == 0) {
#pragma unroll
            for (int t = 0; t < RT; ++t) o[r + t] = sums[up][(r & 31) + t] = acc.v[0][t];
            restage(s, g + STAGES, groups, issue);
        }
        s = s + 1 == STAGES ? 0 : s + 1;
        if (g % ROUNDS == ROUNDS - 1) {  // the chunk's rows are summed
            __syncthreads();
            if (warp == 0) {
                const int i = (r & ~31) + lane;
                const float gv = sums[0][lane], v = gv / (1.0f + expf(-gv)) * sums[1][lane];
                h[i] = v;
                quantize_lane_x2(v, i, hq);
            }
            __syncthreads();  // sums is the next chunk's
        }
    }
}

}  // namespace

// The entries ending in "f" (cuda_matmul.PREFETCH_ENTRIES) are twins of the default configurations for one matrix,
// with two more arguments: pf, pf_kb name weights to prefetch into L2. Each block, when it is done, prefetches its
// share of them from one thread (cuda_matmul.CudaMatmul.prefetch_kb: the weights that follow an output or down
// projection in memory, which the matmul after the next norm reads). The entries without the "f" are the same code
// as before the twins were added.
__device__ __forceinline__ void prefetch_next(const uint8_t* next, int kb) {
    if (next == nullptr || kb <= 0 || threadIdx.x != 0) return;
    const unsigned share = ((static_cast<unsigned>(kb) << 10) / gridDim.x + 15) & ~15u;
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(next + (size_t)share * blockIdx.x), "r"(share)
                 : "memory");
}

#define DEC_ARGS                                                                                              \
    const uint8_t *q0, const uint8_t *s0, float *o0, int N0, const uint8_t *q1, const uint8_t *s1, float *o1,  \
        int N1, const uint8_t *q2, const uint8_t *s2, float *o2, int N2, int K, const int8_t *xd,             \
        const float2 *dsd, const int *xs16, int Kp
#define PF_ARGS const uint8_t *pf, int pf_kb
#define DEC_BODY(RT)                                                                                          \
    /* a group of 4 RT rows per block */                                                                      \
    const Group g = group_of<WARPS * RT>(blockIdx.x, q0, s0, o0, N0, q1, s1, o1, N1, q2, s2, o2, N2);         \
    dec_body<RT>(g.q, g.out, g.N, K, g.row0, xd, reinterpret_cast<const float4*>(dsd), Kp);
#define DEC_ENTRY(RT)                                                                                         \
    extern "C" __global__ void __launch_bounds__(128) matmul_dec_q4_k_r##RT##p1(DEC_ARGS) { DEC_BODY(RT) }
#define DEC_ENTRY_PF(RT)                                                                                      \
    extern "C" __global__ void __launch_bounds__(128) matmul_dec_q4_k_r##RT##p1f(DEC_ARGS, PF_ARGS) {         \
        DEC_BODY(RT)                                                                                          \
        prefetch_next(pf, pf_kb);                                                                             \
    }
// (N2: W_2's rows as given, or 0; NC columns of x, NCOLS of them live: 1, 1 but in the column entries below)
#define DEC_PIPE_BODY(WA, WB, RT, STAGES, N2, NC, NCOLS)                                                      \
    dec_pipe_body<WA, WB, RT, STAGES, NC>(q0, s0, o0, N0, q1, s1, o1, N1, q2, s2, o2, N2, K, xd,              \
                                          reinterpret_cast<const float4*>(dsd),                               \
                                          reinterpret_cast<const int4*>(xs16), Kp, NCOLS);
#define DEC_PIPE_ENTRY2(suffix, WA, WB, RT, STAGES, MIN_BLOCKS)                                               \
    extern "C" __global__ void __launch_bounds__(128, MIN_BLOCKS)                                             \
        matmul_dec_##suffix##_r##RT##s##STAGES(DEC_ARGS) { DEC_PIPE_BODY(WA, WB, RT, STAGES, N2, 1, 1) }
// (W_2 taken as empty: compiled so, the r2s2 twins fit their cap of 96 registers; walking three matrices, they spill)
#define DEC_PIPE_ENTRY_PF(suffix, W, RT, STAGES, MIN_BLOCKS)                                                  \
    extern "C" __global__ void __launch_bounds__(128, MIN_BLOCKS)                                             \
        matmul_dec_##suffix##_r##RT##s##STAGES##f(DEC_ARGS, PF_ARGS) {                                        \
        DEC_PIPE_BODY(W, W, RT, STAGES, 0, 1, 1)                                                              \
        prefetch_next(pf, pf_kb);                                                                             \
    }
#define DEC_PIPE_ENTRY(suffix, W, RT, STAGES, MIN_BLOCKS) DEC_PIPE_ENTRY2(suffix, W, W, RT, STAGES, MIN_BLOCKS)
#define DEC_K2_BODY(W, RT, STAGES, NC, NCOLS)                                                                 \
    dec_pipe_k2_body<W, RT, STAGES, NC>(q0, s0, o0, N0, q1, s1, o1, N1, q2, s2, o2, N2, K, xd,                \
                                        reinterpret_cast<const float4*>(dsd),                                 \
                                        reinterpret_cast<const int4*>(xs16), Kp, NCOLS);
#define DEC_K2_ENTRY(suffix, W, RT, STAGES, MIN_BLOCKS)                                                       \
    extern "C" __global__ void __launch_bounds__(128, MIN_BLOCKS)                                             \
        matmul_dec_##suffix##_r##RT##k2s##STAGES(DEC_ARGS) { DEC_K2_BODY(W, RT, STAGES, 1, 1) }
#define DEC_K2_ENTRY_PF(suffix, W, RT, STAGES, MIN_BLOCKS)                                                    \
    extern "C" __global__ void __launch_bounds__(128, MIN_BLOCKS)                                             \
        matmul_dec_##suffix##_r##RT##k2s##STAGES##f(DEC_ARGS, PF_ARGS) {                                      \
        DEC_K2_BODY(W, RT, STAGES, 1, 1)                                                                      \
        prefetch_next(pf, pf_kb);                                                                             \
    }

// cuda_matmul.DEC_VARIANTS
DEC_ENTRY(1)
DEC_ENTRY(2)
DEC_ENTRY(4)
DEC_PIPE_ENTRY(q4_k, DecQ4K, 1, 2, 6)
DEC_PIPE_ENTRY(q4_k, DecQ4K, 2, 2, 5)
DEC_PIPE_ENTRY(q4_k, DecQ4K, 1, 4, 6)
DEC_PIPE_ENTRY(q4_k, DecQ4K, 2, 3, 5)
DEC_PIPE_ENTRY(q6_k, DecQ6K, 1, 2, 6)
DEC_PIPE_ENTRY(q6_k, DecQ6K, 2, 2, 5)
DEC_K2_ENTRY(q4_k, DecQ4K, 2, 2, 4)
DEC_K2_ENTRY(q6_k, DecQ6K, 2, 2, 3)
// W_0, W_1 Q4_K and W_2 Q6_K (a Q4_K_M layer's Q, K and V): cuda_matmul.DEC_MIXED
DEC_PIPE_ENTRY2(q4_k_q6_k, DecQ4K, DecQ6K, 2, 2, 4)
// the prefetching twins of the default configurations (cuda_matmul.DEC_CONFIG): PREFETCH_ENTRIES
DEC_ENTRY_PF(4)
DEC_PIPE_ENTRY_PF(q4_k, DecQ4K, 2, 2, 5)
DEC_PIPE_ENTRY_PF(q6_k, DecQ6K, 2, 2, 5)
DEC_K2_ENTRY_PF(q6_k, DecQ6K, 2, 2, 3)

// A few sequences' decode step (cuda_matmul.DEC_COLS): the default configurations over NC columns of x, the first
// ncols live (group_dot); outputs (ncols, N_m) row-major
#define DEC_PIPE_ENTRY_C(suffix, WA, WB, RT, STAGES, NC, MIN_BLOCKS)                                          \
    extern "C" __global__ void __launch_bounds__(128, MIN_BLOCKS) matmul_dec_##suffix##_r##RT##s##STAGES##c##NC( \
        DEC_ARGS, int ncols) {                                                                                \
        DEC_PIPE_BODY(WA, WB, RT, STAGES, N2, NC, ncols)                                                      \
    }
#define DEC_K2_ENTRY_C(suffix, W, RT, STAGES, NC, MIN_BLOCKS)                                                 \
    extern "C" __global__ void __launch_bounds__(128, MIN_BLOCKS) matmul_dec_##suffix##_r##RT##k2s##STAGES##c##NC( \
        DEC_ARGS, int ncols) {                                                                                \
        DEC_K2_BODY(W, RT, STAGES, NC, ncols)                                                                 \
    }
#define DEC_ENTRIES_C(NC, MB, MB_MIXED)                                                                       \
    DEC_PIPE_ENTRY_C(q4_k, DecQ4K, DecQ4K, 2, 2, NC, MB)                                                      \
    DEC_PIPE_ENTRY_C(q6_k, DecQ6K, DecQ6K, 2, 2, NC, MB)                                                      \
    DEC_PIPE_ENTRY_C(q4_k_q6_k, DecQ4K, DecQ6K, 2, 2, NC, MB_MIXED)                                           \
    DEC_K2_ENTRY_C(q4_k, DecQ4K, 2, 2, NC, 3)                                                                 \
    DEC_K2_ENTRY_C(q6_k, DecQ6K, 2, 2, NC, 3)
DEC_ENTRIES_C(2, 4, 4)
DEC_ENTRIES_C(4, 4, 3)

// gate / up + silu + quantization (dec_glu_body): cuda_matmul.GLU_CONFIGS, w<W>s<STAGES>. hq: h's quantization (xq,
// xds, xd, dsd, xs16 of an N-wide row, Kp of N)
#define DEC_GLU_ENTRY(W, STAGES)                                                                              \
    extern "C" __global__ void __launch_bounds__(32 * W) matmul_dec_glu_q4_k_w##W##s##STAGES(                 \
        const uint8_t* qg, float* og, const uint8_t* qu, float* ou, int N, int K, const int8_t* xd,           \
        const float2* dsd, int Kp, float* h, int8_t* xq, float2* xds, int8_t* hxd, float2* hdsd, int* hxs16,    \
        int hKp) {                                                                                            \
        dec_glu_body<W, STAGES>(qg, og, qu, ou, N, K, xd, reinterpret_cast<const float4*>(dsd), Kp, h,        \
                                RowQuant{xq, xds, hxd, hdsd, hxs16, N, hKp});                                 \
    }
DEC_GLU_ENTRY(4, 2)
DEC_GLU_ENTRY(8, 1)
DEC_GLU_ENTRY(8, 2)
