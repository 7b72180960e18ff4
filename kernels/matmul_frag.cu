// K-quant matrix x few vectors on tensor cores (batched decode, 2..64 rows): out (M, N) f32 = x (M, K) @ W.T for
// Q4_K and Q6_K weights, x in f16 (cuda_matmul.py's to_f16). By default it takes Q4_K at 3-8 rows and Q6_K at
// 3-32 rows; more rows go to matmul_pipe.cu (cuda_matmul.PIPE_MIN_ROWS). Unlike matmul_tiled.cu, the weights never pass
// through shared memory and are never dequantized to f16: each warp loads its 16 weight rows straight into
// mma.sync A fragments as the integer quants (exact in f16), and the per-sub-block scales are applied to the
// f32 MMA results afterwards (the llama.cpp MMQ idea, with f16 activations instead of int8, so the rounding is
// the tiled path's: x to f16, nothing else).
//
// Math: Q4_K (y = d sc_b q - dmin m_b per 32-value sub-block b): sum_k y x = d sum_k (sc_b q) x - dmin sum_b m_b
// (sum_b x). sc_b q <= 63 * 15 is an integer exact in f16, so the A fragments carry sc_b q, and one C per
// 256-value block collects the first sum over 16 mma.m16n8k16 steps (f16 in, f32 out); the second sum is one
// more MMA per block with A = the 6-bit mins and B = the sub-block sums of x split into f16 hi + lo parts (the
// f32 sum to ~2^-22). Q6_K (y = d sc_b (q - 32) per 16 values, sc_b int8: sc_b (q - 32) may not be exact in
// f16): C per 16-value step, folded into the accumulators with d sc_b.
// Fragment layout (PTX ISA, mma.m16n8k16 .row.col f16): lane = 4 g + t holds A rows g and g+8 at logical k
// {2t, 2t+1, 2t+8, 2t+9}, B column g at the same k, C rows g, g+8 x columns 2t, 2t+1. The k order inside a
// 16-value step is ours to choose (the sum does not care) as long as A and B agree: logical (2t, 2t+1, 2t+8,
// 2t+9) = physical (4t, 4t+2, 4t+1, 4t+3) of the step, so a lane's four values are four consecutive quants,
// one 32-bit load per row: bytes 0 and 2 form half2 A register 0 (low halves of the word), bytes 1 and 3
// register 2. Quants become f16 without a conversion: (q | 0x6400) is the half 1024 + q, minus 1024.
//
// Shared memory per 256-value block of K: x as xs[step (16)][column (M_pad)][16] half, each lane's 4 values
// stored as (4t, 4t+2, 4t+1, 4t+3) so one 8-byte load gives both B registers (conflict-free: lanes read words
// 8 g + 2 t); Q4_K also sums16[column][16]: the 8 sub-block sums of the same f16 values as hi, lo halves, lane t's
// 4 at 4t: (hi 2t, hi 2t+1, lo 2t, lo 2t+1), the B fragment of the mins' MMA.
//
// Launch: 256 threads = 8 warps x 16 weight rows = 128 rows per block; grid (ceil(N/128), 1, S), split-K as in
// matmul_tiled.cu (block z covers K values [z ksplit, min(K, (z+1) ksplit)), ksplit a multiple of 256; with
// S > 1 it writes its partial to out + z M N and splitk_reduce sums them). NT = column tiles of 8 (M <= 8 NT).
// Entries: matmul_frag_<type>_n<NT>(q, s, N, K, xh, M, out, ksplit), NT in {1, 2, 4, 8}.
#include "quant_blocks.cuh"
#include "pdl.cuh"

__device__ __forceinline__ void mma16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// two quants in the low bits of each 16-bit half of v (< 1024) -> half2 of (q - bias), exact
__device__ __forceinline__ uint32_t q2h(uint32_t v, float bias) {
    const uint32_t m = v | 0x64006400u;
    const __half2 h = __hsub2(*reinterpret_cast<const __half2*>(&m), __float2half2_rn(1024.f + bias));
    return *reinterpret_cast<const uint32_t*>(&h);
}

// Per type: the words a lane loads for one row of one 256-value block, and the A registers + scales of one step.
struct FQ4K {  // 144-byte blocks: d, dmin (half2), 12 bytes of 6-bit scales/mins, qs[128]
    static constexpr bool PER_BLOCK = true;  // scales folded into A: one C per block (block_math below)
    struct W { int4 hdr; uint32_t q[8]; };  // q[2j + h]: qs bytes 32j + 16h + 4t .. +3
    __device__ static W load(const WPtrs& w, int row, int blk, int t) {
        const uint8_t* base = w.q + ((size_t)row * (w.K / 256) + blk) * 144;
        W r;
        r.hdr = ld16(base);
#pragma unroll
        for (int i = 0; i < 8; ++i) r.q[i] = __ldg(reinterpret_cast<const uint32_t*>(base + 16 + 16 * i + 4 * t));
        return r;
    }
    // A registers of step s (0..15; sub-block s / 2 = 2j + nib, half h = s % 2), times the sub-block's 6-bit
    // scale: sc * q <= 63 * 15 < 2048 is an integer, exact in f16
    __device__ static void a_regs(const W& r, int s, uint32_t sc2, uint32_t& lo, uint32_t& hi) {
        const int sb = s >> 1, j = sb >> 1, nib = 4 * (sb & 1), h = s & 1;
        const uint32_t v = r.q[2 * j + h] >> nib;
        const __half2 sc = *reinterpret_cast<const __half2*>(&sc2);
        uint32_t a = q2h(v & 0x000F000Fu, 0.f), b = q2h((v >> 8) & 0x000F000Fu, 0.f);
        const __half2 la = __hmul2(*reinterpret_cast<const __half2*>(&a), sc);
        const __half2 hb = __hmul2(*reinterpret_cast<const __half2*>(&b), sc);
        lo = *reinterpret_cast<const uint32_t*>(&la);
        hi = *reinterpret_cast<const uint32_t*>(&hb);
    }
    // the 6-bit scales of the 8 sub-blocks as half2 (sc, sc), and the mins of sub-blocks 2t, 2t+1 as half2
    __device__ static void decode(const W& r, int t, uint32_t (&sc2)[8], uint32_t& m2) {
        const ScalesMinsK4 p = scales_mins_k4(r.hdr);
#pragma unroll
        for (int sb = 0; sb < 8; ++sb) {  // byte sb % 4 into the low byte of both halves
            const uint32_t i = sb & 3;
            sc2[sb] = q2h(__byte_perm(sb < 4 ? p.sc_lo : p.sc_hi, 0u, i | 0x40u | (i << 8) | 0x4000u), 0.f);
        }
        const uint32_t i = 2 * (t & 1);  // bytes i, i + 1 of the low (t < 2) or high word: sub-blocks 2t, 2t + 1
        m2 = q2h(__byte_perm(t < 2 ? p.m_lo : p.m_hi, 0u, i | 0x40u | ((i + 1) << 8) | 0x4000u), 0.f);
    }
    // sum_k y x over the block for rows a, b: d * sum (sc q) x  -  dmin * sum_sb m_sb (sum_sb x); the second sum is
    // one more MMA with A = the mins (k = 2t, 2t+1 and again 2t+8, 2t+9) and B = the f16 hi and lo parts of the
    // sub-block sums of x (hi + lo = the f32 sum to ~2^-22)
    template <int NT, int MP>
    __device__ static void block_math(const W& wa, const W& wb, const half* xs, const half* sums16, int g, int t,
                                      float (&acc)[NT][4]) {
        uint32_t sca[8], scb[8], ma, mb;
        decode(wa, t, sca, ma);
        decode(wb, t, scb, mb);
        float c[NT][4], cm[NT][4];
#pragma unroll
        for (int i = 0; i < NT; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) c[i][e] = cm[i][e] = 0.f;
#pragma unroll
        for (int s = 0; s < 16; ++s) {
            uint32_t a0, a1, a2, a3;
            a_regs(wa, s, sca[s >> 1], a0, a2);
            a_regs(wb, s, scb[s >> 1], a1, a3);
#pragma unroll
            for (int i = 0; i < NT; ++i) {
                const uint2 bv = *reinterpret_cast<const uint2*>(&xs[(s * MP + 8 * i + g) * 16 + 4 * t]);
                mma16816(c[i], a0, a1, a2, a3, bv.x, bv.y);
            }
        }
#pragma unroll
        for (int i = 0; i < NT; ++i) {
            const uint2 bv = *reinterpret_cast<const uint2*>(&sums16[(8 * i + g) * 16 + 4 * t]);
            mma16816(cm[i], ma, mb, ma, mb, bv.x, bv.y);
        }
        const float2 da = __half22float2(*reinterpret_cast<const __half2*>(&wa.hdr.x));  // (d, dmin)
        const float2 db = __half22float2(*reinterpret_cast<const __half2*>(&wb.hdr.x));
#pragma unroll
        for (int i = 0; i < NT; ++i) {
            acc[i][0] += da.x * c[i][0] - da.y * cm[i][0];
            acc[i][1] += da.x * c[i][1] - da.y * cm[i][1];
            acc[i][2] += db.x * c[i][2] - db.y * cm[i][2];
            acc[i][3] += db.x * c[i][3] - db.y * cm[i][3];
        }
    }
};

struct FQ6K {  // repacked 208-byte blocks ql[128] | qh[64] | scales int8[16], d (half) in the scale region
    static constexpr bool PER_BLOCK = false;
    struct W { uint32_t ql[8], qh[4]; int4 sc; float d; };
    // step s: value 16 s + 4 t + e; hh = s / 8, qd = (s % 8) / 2, l0 = 16 (s % 2)
    // ql word i = 4 hh + 2 (qd & 1) + (s % 2) at byte 64 hh + 32 (qd & 1) + l0 + 4t; qh word 2 hh + (s % 2)
    __device__ static W load(const WPtrs& w, int row, int blk, int t) {
        const size_t bi = (size_t)row * (w.K / 256) + blk;
        const uint8_t* base = w.q + bi * 208;
        W r;
#pragma unroll
        for (int i = 0; i < 8; ++i) r.ql[i] = __ldg(reinterpret_cast<const uint32_t*>(base + 16 * i + 4 * t));
#pragma unroll
        for (int i = 0; i < 4; ++i) r.qh[i] = __ldg(reinterpret_cast<const uint32_t*>(base + 128 + 16 * i + 4 * t));
        r.sc = ld16(base + 192);
        r.d = ldh(w.s, bi);
        return r;
    }
    __device__ static void a_regs(const W& r, int s, uint32_t& lo, uint32_t& hi) {
        const int hh = s >> 3, qd = (s & 7) >> 1, half16 = s & 1;
        const uint32_t l = (r.ql[4 * hh + 2 * (qd & 1) + half16] >> (4 * (qd >> 1))) & 0x0F0F0F0Fu;
        const uint32_t q = l | (((r.qh[2 * hh + half16] >> (2 * qd)) & 0x03030303u) << 4);
        lo = q2h(q & 0x00FF00FFu, 32.f);
        hi = q2h((q >> 8) & 0x00FF00FFu, 32.f);
    }
    // per 16-value sub-block (one step): C from 0, then acc += d * sc_b * C (the int8 scale times q - 32 can
    // exceed f16's exact integers, so it stays out of the MMA)
    template <int NT, int MP>
    __device__ static void block_math(const W& wa, const W& wb, const half* xs, const half*, int g, int t,
                                      float (&acc)[NT][4]) {
#pragma unroll
        for (int s = 0; s < 16; ++s) {
            float c[NT][4];
#pragma unroll
            for (int i = 0; i < NT; ++i) c[i][0] = c[i][1] = c[i][2] = c[i][3] = 0.f;
            uint32_t a0, a1, a2, a3;
            a_regs(wa, s, a0, a2);
            a_regs(wb, s, a1, a3);
#pragma unroll
            for (int i = 0; i < NT; ++i) {
                const uint2 bv = *reinterpret_cast<const uint2*>(&xs[(s * MP + 8 * i + g) * 16 + 4 * t]);
                mma16816(c[i], a0, a1, a2, a3, bv.x, bv.y);
            }
            const float sa = wa.d * static_cast<float>(static_cast<int8_t>(byte_of(wa.sc, s)));
            const float sb = wb.d * static_cast<float>(static_cast<int8_t>(byte_of(wb.sc, s)));
#pragma unroll
            for (int i = 0; i < NT; ++i) {
                acc[i][0] += sa * c[i][0];
                acc[i][1] += sa * c[i][1];
                acc[i][2] += sb * c[i][2];
                acc[i][3] += sb * c[i][3];
            }
        }
    }
};

template <class F, int NT>
__device__ __forceinline__ void mmf_body(const WPtrs& w, const half* __restrict__ xh, int M, float* __restrict__ out,
                                         int ksplit) {
    constexpr int MP = 8 * NT;  // padded columns
    __shared__ __align__(16) half xs[16 * MP * 16];
    __shared__ __align__(16) half sums16[MP * 16];  // Q4_K: per column, the 8 sub-block sums as hi, lo halves
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int K = w.K, N = w.N;
    const int row0 = blockIdx.x * 128 + warp * 16;
    const int ra = min(row0 + g, N - 1), rb = min(row0 + g + 8, N - 1);  // rows past N load row N-1, never stored
    const int kbeg = blockIdx.z * ksplit, kend = min(K, kbeg + ksplit);
    if (gridDim.z > 1) out += (size_t)blockIdx.z * M * N;

    float acc[NT][4];
#pragma unroll
    for (int i = 0; i < NT; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;

    const int b0 = kbeg >> 8, b1 = kend >> 8;  // 256-value blocks of this split
    typename F::W wa, wb;
    if (b0 < b1) {
        wa = F::load(w, ra, b0, t);
        wb = F::load(w, rb, b0, t);
    }
    for (int blk = b0; blk < b1; ++blk) {
        // stage x[:, 256 blk .. +256) (4-value groups: thread -> (column, group), 64 groups per column)
        for (int e = tid; e < MP * 64; e += 256) {
            const int n = e >> 6, grp = e & 63;  // grp: values 4 grp .. +3 = step grp / 4, lane t = grp % 4
            uint2 v = make_uint2(0u, 0u);
            if (n < M) v = __ldg(reinterpret_cast<const uint2*>(xh + (size_t)n * K + 256 * blk + 4 * grp));
            uint2 p;  // (v0, v2, v1, v3)
            p.x = __byte_perm(v.x, v.y, 0x5410);
            p.y = __byte_perm(v.x, v.y, 0x7632);
            *reinterpret_cast<uint2*>(&xs[((grp >> 2) * MP + n) * 16 + 4 * (grp & 3)]) = p;
            if (F::PER_BLOCK) {  // sub-block sums: a sub-block's 8 groups are 8 consecutive threads
                const float2 f0 = __half22float2(*reinterpret_cast<const __half2*>(&v.x));
                const float2 f1 = __half22float2(*reinterpret_cast<const __half2*>(&v.y));
                float sum = (f0.x + f0.y) + (f1.x + f1.y);
#pragma unroll
                for (int o = 1; o < 8; o <<= 1) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, o);
                if ((grp & 7) == 0) {  // sub-block sb = grp / 8 -> slot 4 (sb / 2) + sb % 2 (hi), + 2 (lo)
                    const int sb = grp >> 3;
                    const half hi = __float2half_rn(sum);
                    sums16[n * 16 + 4 * (sb >> 1) + (sb & 1)] = hi;
                    sums16[n * 16 + 4 * (sb >> 1) + 2 + (sb & 1)] = __float2half_rn(sum - __half2float(hi));
                }
            }
        }
        __syncthreads();
        typename F::W na = wa, nb = wb;
        if (blk + 1 < b1) {  // next block's weights in flight during this block's math
            na = F::load(w, ra, blk + 1, t);
            nb = F::load(w, rb, blk + 1, t);
        }
        F::template block_math<NT, MP>(wa, wb, xs, sums16, g, t, acc);
        wa = na;
        wb = nb;
        __syncthreads();  // xs is rewritten for the next block
    }

#pragma unroll
    for (int i = 0; i < NT; ++i) {
        const int col = 8 * i + 2 * t;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int m = col + (e & 1), n = row0 + g + 8 * (e >> 1);
            if (m < M && n < N) out[(size_t)m * N + n] = acc[i][e];
        }
    }
}

// Few rows (M <= 8, one column tile), the weights ahead: each warp's first AHEAD blocks of weights are loaded into
// registers before pdl_wait (weights are constant, so under programmatic launch their DRAM latency overlaps the
// kernel before), x of the whole split is staged into shared memory once after it (one barrier, none in the loop),
// and each block's weights are reloaded AHEAD blocks on before its math. Same sums, in the same order, as mmf_body
// with NT = 1. Dynamic shared memory: (kend - kbeg) / 256 blocks x (16 steps x 8 columns x 16 + 8 x 16) halves.
template <class F, int AHEAD>
__device__ __forceinline__ void mmf_ahead_body(const WPtrs& w, const half* __restrict__ xh, int M,
                                               float* __restrict__ out, int ksplit) {
    constexpr int MP = 8, XS = 16 * MP * 16, SS = MP * 16;  // halves per block of x, of sub-block sums
    extern __shared__ __align__(16) half xsm[];             // (blocks, XS) then (blocks, SS)
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int K = w.K, N = w.N;
    const int row0 = blockIdx.x * 128 + warp * 16;
    const int ra = min(row0 + g, N - 1), rb = min(row0 + g + 8, N - 1);  // rows past N load row N-1, never stored
    const int kbeg = blockIdx.z * ksplit, kend = min(K, kbeg + ksplit);
    const int b0 = kbeg >> 8, nb = (kend >> 8) - b0;  // this split's 256-value blocks
    half* sums = xsm + (size_t)nb * XS;
    if (gridDim.z > 1) out += (size_t)blockIdx.z * M * N;

    typename F::W ra_w[AHEAD], rb_w[AHEAD];  // the ring: block i's weights in slot i % AHEAD
#pragma unroll
    for (int i = 0; i < AHEAD; ++i)
        if (i < nb) {
            ra_w[i] = F::load(w, ra, b0 + i, t);
            rb_w[i] = F::load(w, rb, b0 + i, t);
        }
    pdl_start();  // x is the previous kernel's output

    // x[:, kbeg .. kend) into shared memory: element e = (block, column, 4-value group), as mmf_body stages one block
    // (written out here: the two loops sharing one helper changed this entry's SASS and its 6-sequence decode step
    // went from -2.2 % to +0.4 % against the n1 entry on an H200, bench/decode_ab.py +frag:0)
    for (int e = tid; e < nb * MP * 64; e += 256) {
        const int bl = e / (MP * 64), n = (e >> 6) % MP, grp = e & 63;
        uint2 v = make_uint2(0u, 0u);
        if (n < M) v = __ldg(reinterpret_cast<const uint2*>(xh + (size_t)n * K + 256 * (b0 + bl) + 4 * grp));
        uint2 p;  // (v0, v2, v1, v3)
        p.x = __byte_perm(v.x, v.y, 0x5410);
        p.y = __byte_perm(v.x, v.y, 0x7632);
        *reinterpret_cast<uint2*>(&xsm[(size_t)bl * XS + ((grp >> 2) * MP + n) * 16 + 4 * (grp & 3)]) = p;
        if (F::PER_BLOCK) {
            const float2 f0 = __half22float2(*reinterpret_cast<const __half2*>(&v.x));
            const float2 f1 = __half22float2(*reinterpret_cast<const __half2*>(&v.y));
            float sum = (f0.x + f0.y) + (f1.x + f1.y);
#pragma unroll
            for (int o = 1; o < 8; o <<= 1) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, o);
            if ((grp & 7) == 0) {
                const int sb = grp >> 3;
                half* s16 = sums + (size_t)bl * SS + n * 16 + 4 * (sb >> 1) + (sb & 1);
                const half hi = __float2half_rn(sum);
                s16[0] = hi;
                s16[2] = __float2half_rn(sum - __half2float(hi));
            }
        }
    }
    __syncthreads();

    float acc[1][4] = {{0.f, 0.f, 0.f, 0.f}};
    for (int base = 0; base < nb; base += AHEAD) {
#pragma unroll
        for (int i = 0; i < AHEAD; ++i) {
            const int bl = base + i;
            if (bl < nb) {
                const typename F::W wa = ra_w[i], wb = rb_w[i];
                if (bl + AHEAD < nb) {
                    ra_w[i] = F::load(w, ra, b0 + bl + AHEAD, t);
                    rb_w[i] = F::load(w, rb, b0 + bl + AHEAD, t);
                }
                F::template block_math<1, MP>(wa, wb, xsm + (size_t)bl * XS, sums + (size_t)bl * SS, g, t, acc);
            }
        }
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        const int m = 2 * t + (e & 1), n = row0 + g + 8 * (e >> 1);
        if (m < M && n < N) out[(size_t)m * N + n] = acc[0][e];
    }
}

#define MMF_AHEAD_ENTRY(suffix, F, AHEAD)                                                                      \
    extern "C" __global__ void __launch_bounds__(256) matmul_frag_##suffix##_n1a##AHEAD(                       \
        const uint8_t* q, const uint8_t* s, int N, int K, const half* xh, int M, float* out, int ksplit) {     \
        mmf_ahead_body<F, AHEAD>(WPtrs{q, s, nullptr, N, K}, xh, M, out, ksplit);                              \
    }
MMF_AHEAD_ENTRY(q4_k, FQ4K, 2)  // cuda_matmul.FRAG_AHEAD
MMF_AHEAD_ENTRY(q6_k, FQ6K, 2)

#define MMF_ENTRY(suffix, F, NT)                                                                               \
    extern "C" __global__ void __launch_bounds__(256) matmul_frag_##suffix##_n##NT(                            \
        const uint8_t* q, const uint8_t* s, int N, int K, const half* xh, int M, float* out, int ksplit) {     \
        pdl_start();                                                                                           \
        mmf_body<F, NT>(WPtrs{q, s, nullptr, N, K}, xh, M, out, ksplit);                                       \
    }
#define MMF_TYPE(suffix, F) MMF_ENTRY(suffix, F, 1) MMF_ENTRY(suffix, F, 2) MMF_ENTRY(suffix, F, 4) MMF_ENTRY(suffix, F, 8)
MMF_TYPE(q4_k, FQ4K)
MMF_TYPE(q6_k, FQ6K)
