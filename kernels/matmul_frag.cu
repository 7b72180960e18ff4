// K-quant matrix x few vectors on tensor cores (batched decode, 2..64 rows): out (M, N) f32 = x (M, K) @ W.T for
// Q4_K and Q6_K weights, x in f16 (cuda_matmul.py's to_f16). Unlike matmul_tiled.cu, the weights never pass
// through shared memory and are never dequantized to f16: each warp loads its 16 weight rows straight into
// mma.sync A fragments as the integer quants (exact in f16), and the per-sub-block scales are applied to the
// f32 MMA results afterwards (the llama.cpp MMQ idea, with f16 activations instead of int8, so the rounding is
// the tiled path's: x to f16, nothing else).
//
// Math: per weight row r and sub-block b (Q4_K: 32 values, y = d*sc_b*q - dmin*m_b; Q6_K: 16 values,
// y = d*sc_b*(q - 32)):  sum_k y_k x_k = (d sc_b) * sum_b q x  -  (dmin m_b) * sum_b x.  One
// mma.m16n8k16 (f16 in, f32 out) computes sum q x over 16 values for 16 rows x 8 columns; C starts at 0 per
// sub-block and is folded into the accumulators with the row's scale; sum_b x comes from shared memory.
//
// Fragment layout (PTX ISA, mma.m16n8k16 .row.col f16): lane = 4 g + t holds A rows g and g+8 at logical k
// {2t, 2t+1, 2t+8, 2t+9}, B column g at the same k, C rows g, g+8 x columns 2t, 2t+1. The k order inside a
// 16-value step is ours to choose (the sum does not care) as long as A and B agree: logical (2t, 2t+1, 2t+8,
// 2t+9) = physical (4t, 4t+2, 4t+1, 4t+3) of the step, so a lane's four values are four consecutive quants,
// one 32-bit load per row: bytes 0 and 2 form half2 A register 0 (low halves of the word), bytes 1 and 3
// register 2. Quants become f16 without a conversion: (q | 0x6400) is the half 1024 + q, minus 1024.
//
// Shared memory per 256-value block of K: x as xs[step (16)][column (M_pad)][16] half, each lane's 4 values
// stored as (4t, 4t+2, 4t+1, 4t+3) so one 8-byte load gives both B registers (conflict-free: lanes read words
// 8 g + 2 t); Q4_K also sums[sub-block (8)][column] f32 of the same f16 values.
//
// Launch: 256 threads = 8 warps x 16 weight rows = 128 rows per block; grid (ceil(N/128), 1, S), split-K as in
// matmul_tiled.cu (block z covers K values [z ksplit, min(K, (z+1) ksplit)), ksplit a multiple of 256; with
// S > 1 it writes its partial to out + z M N and splitk_reduce sums them). NT = column tiles of 8 (M <= 8 NT).
// Entries: matmul_frag_<type>_n<NT>(q, s, N, K, xh, M, out, ksplit), NT in {1, 2, 4, 8}.
#include "quant_blocks.cuh"

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
    static constexpr int STEPS_PER_SB = 2, NSB = 8;
    struct W { int4 hdr; uint32_t q[8]; };  // q[2j + h]: qs bytes 32j + 16h + 4t .. +3
    __device__ static W load(const WPtrs& w, int row, int blk, int t) {
        const uint8_t* base = w.q + ((size_t)row * (w.K / 256) + blk) * 144;
        W r;
        r.hdr = ld16(base);
#pragma unroll
        for (int i = 0; i < 8; ++i) r.q[i] = __ldg(reinterpret_cast<const uint32_t*>(base + 16 + 16 * i + 4 * t));
        return r;
    }
    // step s (0..15) of the block: sub-block s / 2 = 2j + nib, half h = s % 2
    __device__ static void a_regs(const W& r, int s, uint32_t& lo, uint32_t& hi) {
        const int sb = s >> 1, j = sb >> 1, nib = 4 * (sb & 1), h = s & 1;
        const uint32_t v = r.q[2 * j + h] >> nib;
        lo = q2h(v & 0x000F000Fu, 0.f);
        hi = q2h((v >> 8) & 0x000F000Fu, 0.f);
    }
    __device__ static void scales(const W& r, int sb, float& dsc, float& dm) {
        const float2 dd = __half22float2(*reinterpret_cast<const __half2*>(&r.hdr.x));
        float sc, m;
        scale_min_k4(r.hdr, sb, sc, m);
        dsc = dd.x * sc;
        dm = dd.y * m;
    }
};

struct FQ6K {  // repacked 208-byte blocks ql[128] | qh[64] | scales int8[16], d (half) in the scale region
    static constexpr int STEPS_PER_SB = 1, NSB = 16;
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
    __device__ static void scales(const W& r, int sb, float& dsc, float& dm) {
        dsc = r.d * static_cast<float>(static_cast<int8_t>(byte_of(r.sc, sb)));
        dm = 0.f;
    }
};

template <class F, int NT>
__device__ __forceinline__ void mmf_body(const WPtrs& w, const half* __restrict__ xh, int M, float* __restrict__ out,
                                         int ksplit) {
    constexpr int MP = 8 * NT;  // padded columns
    __shared__ __align__(16) half xs[16 * MP * 16];
    __shared__ float sums[8 * MP];  // Q4_K: per 32-value sub-block and column
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
            if (F::STEPS_PER_SB == 2) {  // sub-block sums: 8 groups = 8 consecutive threads
                const float2 f0 = __half22float2(*reinterpret_cast<const __half2*>(&v.x));
                const float2 f1 = __half22float2(*reinterpret_cast<const __half2*>(&v.y));
                float s = (f0.x + f0.y) + (f1.x + f1.y);
#pragma unroll
                for (int o = 1; o < 8; o <<= 1) s += __shfl_xor_sync(0xFFFFFFFFu, s, o);
                if ((grp & 7) == 0) sums[(grp >> 3) * MP + n] = s;
            }
        }
        __syncthreads();
        typename F::W na = wa, nb = wb;
        if (blk + 1 < b1) {  // next block's weights in flight during this block's math
            na = F::load(w, ra, blk + 1, t);
            nb = F::load(w, rb, blk + 1, t);
        }
#pragma unroll
        for (int sb = 0; sb < F::NSB; ++sb) {
            float c[NT][4];
#pragma unroll
            for (int i = 0; i < NT; ++i) c[i][0] = c[i][1] = c[i][2] = c[i][3] = 0.f;
#pragma unroll
            for (int h = 0; h < F::STEPS_PER_SB; ++h) {
                const int s = sb * F::STEPS_PER_SB + h;
                uint32_t a0, a2, a1, a3;
                F::a_regs(wa, s, a0, a2);  // row g: k (2t, 2t+1) and (2t+8, 2t+9)
                F::a_regs(wb, s, a1, a3);  // row g + 8
#pragma unroll
                for (int i = 0; i < NT; ++i) {
                    const uint2 bv = *reinterpret_cast<const uint2*>(&xs[(s * MP + 8 * i + g) * 16 + 4 * t]);
                    mma16816(c[i], a0, a1, a2, a3, bv.x, bv.y);
                }
            }
            float dsa, dma, dsb, dmb;
            F::scales(wa, sb, dsa, dma);
            F::scales(wb, sb, dsb, dmb);
#pragma unroll
            for (int i = 0; i < NT; ++i) {
                float x0 = 0.f, x1 = 0.f;
                if (F::STEPS_PER_SB == 2) {
                    x0 = sums[sb * MP + 8 * i + 2 * t];
                    x1 = sums[sb * MP + 8 * i + 2 * t + 1];
                }
                acc[i][0] += dsa * c[i][0] - dma * x0;
                acc[i][1] += dsa * c[i][1] - dma * x1;
                acc[i][2] += dsb * c[i][2] - dmb * x0;
                acc[i][3] += dsb * c[i][3] - dmb * x1;
            }
        }
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

#define MMF_ENTRY(suffix, F, NT)                                                                               \
    extern "C" __global__ void __launch_bounds__(256) matmul_frag_##suffix##_n##NT(                            \
        const uint8_t* q, const uint8_t* s, int N, int K, const half* xh, int M, float* out, int ksplit) {     \
        mmf_body<F, NT>(WPtrs{q, s, nullptr, N, K}, xh, M, out, ksplit);                                       \
    }
#define MMF_TYPE(suffix, F) MMF_ENTRY(suffix, F, 1) MMF_ENTRY(suffix, F, 2) MMF_ENTRY(suffix, F, 4) MMF_ENTRY(suffix, F, 8)
MMF_TYPE(q4_k, FQ4K)
MMF_TYPE(q6_k, FQ6K)
