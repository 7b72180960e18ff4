// K-quant matrix x many vectors on tensor cores, software-pipelined (prefill): out (M, N) f32 = x (M, K) @ W.T for
// Q4_K and Q6_K weights and M from about 64 rows up. matmul_tiled.cu dequantizes each weight tile to f16 in
// shared memory; here the quantized tile itself is copied to shared memory (4.5 / 6.5 bits a weight, cp.async,
// STAGES tiles in flight) and each warp turns its quants into mma.sync A fragments in registers, one f16 FMA
// per two weights, so the shared-memory traffic of the weights is a quarter of an f16 tile and no thread waits
// for a dequantize pass.
//
// Math (per 32-value sub-block b of Q4_K: y = d sc_b q - dmin m_b; per 16 values of Q6_K: y = d sc_b (q - 32)):
// the A fragment holds f16(q * f16(d sc_b) - f16(dmin m_b)) (Q4_K) or f16((q - 32) * f16(d sc_b)) (Q6_K): the
// weight rounded to f16 as in the tiled kernel, with the two scale products rounded to f16 first. x arrives in
// f16 (to_f16_pairs below); accumulation is f32 in the MMA.
//
// Fragment order (PTX ISA, mma.m16n8k16 .row.col f16): lane 4 g + t holds A rows g, g+8 at logical k {2t, 2t+1}
// (registers 0, 1) and {2t+8, 2t+9} (registers 2, 3), B column g at the same k. A lane's four quants of a
// 16-value step are one 32-bit word (bytes = physical values 4t .. 4t+3); bytes 0 and 2 masked together give
// register 0 (physical 4t, 4t+2), bytes 1 and 3 register 2 (4t+1, 4t+3). So logical 2i <- physical 4i... in
// short: logical k i < 8 holds physical 2i, logical 8 + i holds physical 2i + 1. x is stored in that order
// (to_f16_pairs writes each 16-value group as its 8 even values, then its 8 odd ones), so plain ldmatrix
// loads of x give the matching B fragments.
//
// Tiles: a block computes 128 weight rows x PM x rows (PM = 128: 8 warps = 4 along the weight rows, 32 each:
// two m16 tiles, x 2 along x, 64 each: eight n8 tiles, 64 f32 accumulators a thread; smaller PM below at
// MMP_ENTRY). Per stage, 128 K values (half a k-quant block): x as xs[PM rows][136] f16 (8 halves of padding: the 8 row addresses of an ldmatrix hit
// distinct banks), the weights as ws[128 rows][ROW_BYTES] (Q4_K: the 16-byte header + 64 quant bytes; Q6_K: 64
// ql + 32 qh + the 16 scale bytes, and d as a 4-byte word copied around it). Row strides of 80 / 112 bytes put
// the 8 rows g of a fragment load in distinct banks.
//
// Split-K as in matmul_tiled.cu: grid.z = S blocks per output tile, block z covering K values [z ksplit,
// min(K, (z + 1) ksplit)) (ksplit a multiple of 256); with S > 1 each writes a partial and splitk_reduce_multi
// sums them. Launch: 256 threads, grid (ceil(M / PM), weight-row tiles of every matrix, S) (x tiles fastest: the
// blocks sharing a weight tile run together and read it from DRAM once), dynamic shared memory STAGES x stage
// bytes (pipe_smem_bytes in cuda_matmul.py). Entries: see MMP_ENTRY.
#include "async_copy.cuh"
#include "quant_blocks.cuh"
#include "pdl.cuh"

namespace {

constexpr int PN = 128;       // weight rows (output columns) per block
constexpr int PK = 128;       // K values per stage
constexpr int XLD = PK + 8;   // x row stride in shared memory (halves)


__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t h2_bits(__half2 h) { return *reinterpret_cast<const uint32_t*>(&h); }
__device__ __forceinline__ __half2 bits_h2(uint32_t u) { return *reinterpret_cast<const __half2*>(&u); }

// two values < 1024 in the low bits of each 16-bit half of v -> half2 (v_lo - bias, v_hi - bias), exact
__device__ __forceinline__ __half2 u16x2_to_h2(uint32_t v, float bias) {
    return __hsub2(bits_h2(v | 0x64006400u), __float2half2_rn(1024.f + bias));
}

// byte i of w (as an unsigned value) in both halves: half2 (w_i, w_i)
__device__ __forceinline__ __half2 byte_h2(uint32_t w, int i, float bias = 0.f) {
    return u16x2_to_h2(__byte_perm(w, 0u, i | 0x40u | (i << 8) | 0x4000u), bias);
}

// ---------------------------------------------------------------------------------------------------
struct PQ4K {  // file blocks of 144 bytes: d, dmin (half2) | 12 bytes of 6-bit scales and mins | qs[128]
    static constexpr int ROW_BYTES = 80, CHUNKS = 5, D_BYTES = 0;
    // chunk c (16 bytes) of weight row `row` for stage kt (values 128 kt .. +128: half kt % 2 of block kt / 2):
    // 0 the header, 1..4 the half's 64 quant bytes (sub-blocks 4 h .. 4 h + 3)
    __device__ static const uint8_t* chunk(const WPtrs& w, int row, int kt, int c) {
        const uint8_t* blk = w.q + ((size_t)row * (w.K >> 8) + (kt >> 1)) * 144;
        return c == 0 ? blk : blk + 16 + 64 * (kt & 1) + 16 * (c - 1);
    }
    __device__ static void copy_d(const WPtrs&, int, int, uint32_t*) {}
    // per row and stage: for the 4 sub-blocks, half2 (d sc, d sc) and half2 (-dmin m, -dmin m)
    struct S { __half2 dsc[4], ndm[4]; };
    __device__ static S scales(const uint8_t* row, const uint32_t*, int kt, int) {
        const int4 hdr = *reinterpret_cast<const int4*>(row);
        const ScalesMinsK4 p = scales_mins_k4(hdr);
        const uint32_t sc = (kt & 1) ? p.sc_hi : p.sc_lo, m = (kt & 1) ? p.m_hi : p.m_lo;
        const __half2 dd = bits_h2(static_cast<uint32_t>(hdr.x));
        const __half2 d = __low2half2(dd), ndmin = __hneg2(__high2half2(dd));
        S r;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            r.dsc[i] = __hmul2(byte_h2(sc, i), d);
            r.ndm[i] = __hmul2(byte_h2(m, i), ndmin);
        }
        return r;
    }
    // A registers of step s (0..7: sub-block s / 2, its values 16 (s % 2) .. +16) for one row: lo = logical k
    // (2t, 2t+1), hi = (2t+8, 2t+9)
    __device__ static void a_regs(const uint8_t* row, const S& sc, int s, int t, uint32_t& lo, uint32_t& hi) {
        const int sb = s >> 1;
        const uint32_t v = *reinterpret_cast<const uint32_t*>(row + 16 + 32 * (sb >> 1) + 16 * (s & 1) + 4 * t) >>
                           (4 * (sb & 1));
        lo = h2_bits(__hfma2(u16x2_to_h2(v & 0x000F000Fu, 0.f), sc.dsc[sb], sc.ndm[sb]));
        hi = h2_bits(__hfma2(u16x2_to_h2((v >> 8) & 0x000F000Fu, 0.f), sc.dsc[sb], sc.ndm[sb]));
    }
};

struct PQ6K {  // upload layout: q blocks of 208 bytes ql[128] | qh[64] | scales int8[16], d (half) in the s region
    static constexpr int ROW_BYTES = 112, CHUNKS = 7, D_BYTES = 4 * PN;
    // 0..3 the half's ql bytes 64 h .. +64, 4..5 its qh bytes 128 + 32 h .. +32, 6 the 16 scale bytes
    __device__ static const uint8_t* chunk(const WPtrs& w, int row, int kt, int c) {
        const uint8_t* blk = w.q + ((size_t)row * (w.K >> 8) + (kt >> 1)) * 208;
        const int h = kt & 1;
        return c < 4 ? blk + 64 * h + 16 * c : c < 6 ? blk + 128 + 32 * h + 16 * (c - 4) : blk + 192;
    }
    // d of (row, block kt / 2): the aligned 4-byte word holding that half (its parity picks the half later)
    __device__ static void copy_d(const WPtrs& w, int row, int kt, uint32_t* dst) {
        const size_t i = (size_t)row * (w.K >> 8) + (kt >> 1);
        cp_async<4>(dst, w.s + 2 * (i & ~(size_t)1));
    }
    // per row and stage: half2 (d, d) and the half's 8 int8 scales, each + 128 (as unsigned bytes)
    struct S { __half2 d; uint32_t sc[2]; };
    __device__ static S scales(const uint8_t* row, const uint32_t* dword, int kt, int parity) {
        const uint32_t dw = *dword;
        const int4 scv = *reinterpret_cast<const int4*>(row + 96);
        S r;
        r.d = bits_h2(__byte_perm(dw, 0u, parity ? 0x3232u : 0x1010u));
        r.sc[0] = static_cast<uint32_t>((kt & 1) ? scv.z : scv.x) ^ 0x80808080u;
        r.sc[1] = static_cast<uint32_t>((kt & 1) ? scv.w : scv.y) ^ 0x80808080u;
        return r;
    }
    // A registers of step s (0..7: values 16 s .. +16 of the half, quarter qd = s / 2 of ggml's 128-value
    // layout: ql bytes l + 32 (qd % 2) >> 4 (qd / 2), qh bytes l >> 2 qd, l = 16 (s % 2) + 4 t + e; scale s)
    __device__ static void a_regs(const uint8_t* row, const S& sc, int s, int t, uint32_t& lo, uint32_t& hi) {
        const int qd = s >> 1, l0 = 16 * (s & 1);
        const uint32_t l = (*reinterpret_cast<const uint32_t*>(row + 32 * (qd & 1) + l0 + 4 * t) >> (4 * (qd >> 1))) &
                           0x0F0F0F0Fu;
        const uint32_t h = (*reinterpret_cast<const uint32_t*>(row + 64 + l0 + 4 * t) >> (2 * qd)) & 0x03030303u;
        const uint32_t q = l | (h << 4);
        const __half2 dsc = __hmul2(byte_h2(sc.sc[s >> 2], s & 3, 128.f), sc.d);
        lo = h2_bits(__hmul2(u16x2_to_h2(q & 0x00FF00FFu, 32.f), dsc));
        hi = h2_bits(__hmul2(u16x2_to_h2((q >> 8) & 0x00FF00FFu, 32.f), dsc));
    }
};

}  // namespace

// one block: weight rows [128 nt, +128) of w (nt = its tile), x rows [PM blockIdx.x, +PM), K split blockIdx.z
template <class P, int STAGES, int MT, int NT>
__device__ __forceinline__ void mmp_body(const WPtrs& w, int nt, const half* __restrict__ xp, int M,
                                         float* __restrict__ out, int ksplit) {
    constexpr int WARPS_W = PN / (16 * MT), WARPS_X = 8 / WARPS_W;  // warps along the weight rows, along x
    constexpr int PM = WARPS_X * 8 * NT;                             // x rows per block
    constexpr int X_BYTES = PM * XLD * 2, W_BYTES = PN * P::ROW_BYTES;
    constexpr int STAGE_BYTES = X_BYTES + W_BYTES + P::D_BYTES;
    static_assert(STAGE_BYTES % 16 == 0 && NT % 2 == 0 && PM >= 16, "stage layout");
    extern __shared__ __align__(16) uint8_t smem[];

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int wn = warp / WARPS_X, wm = warp % WARPS_X;  // this warp: weight rows 16 MT wn .., x rows 8 NT wm ..
    const int m0 = blockIdx.x * PM, n0 = nt * PN;
    const int K = w.K, N = w.N, nbk = K >> 8;
    const int kt0 = blockIdx.z * ksplit / PK, kt1 = min(K, (blockIdx.z + 1) * ksplit) / PK;

    // issue the copies of stage kt into slot `slot` (every thread: PM / 16 x pieces, its share of weight pieces)
    auto load = [&](int slot, int kt) {
        uint8_t* st = smem + slot * STAGE_BYTES;
        half* xs = reinterpret_cast<half*>(st);
#pragma unroll
        for (int i = 0; i < PM * PK / 8 / 256; ++i) {
            const int idx = i * 256 + tid, r = idx >> 4, c = idx & 15, gm = m0 + r;
            cp_async16(xs + r * XLD + 8 * c, xp + (size_t)min(gm, M - 1) * K + (size_t)kt * PK + 8 * c, gm < M ? 16 : 0);
        }
        uint8_t* ws = st + X_BYTES;
        for (int idx = tid; idx < PN * P::CHUNKS; idx += 256) {
            const int r = idx / P::CHUNKS, c = idx - r * P::CHUNKS;  // rows past N copy row N-1, never stored
            cp_async16(ws + r * P::ROW_BYTES + 16 * c, P::chunk(w, min(n0 + r, N - 1), kt, c));
        }
        if (P::D_BYTES && tid < PN) P::copy_d(w, min(n0 + tid, N - 1), kt, reinterpret_cast<uint32_t*>(ws + W_BYTES) + tid);
    };

    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.f;

    // ldmatrix.x4 row address of this lane: matrix lane / 8 = (x rows +8?, k +8?), row lane % 8
    const uint32_t x_lane = (8 * NT * wm + ((lane >> 4) << 3) + (lane & 7)) * XLD + ((lane >> 3) & 1) * 8;
    int rows[2 * MT];  // this lane's weight rows in the block: m-tile i, row g (+8)
#pragma unroll
    for (int r = 0; r < 2 * MT; ++r) rows[r] = 16 * MT * wn + 16 * (r >> 1) + g + 8 * (r & 1);

    const int n_kt = kt1 - kt0;
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < n_kt) load(s, kt0 + s);
        cp_async_commit();
    }
    for (int i = 0; i < n_kt; ++i) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // stage i landed for every thread; slot (i - 1) % STAGES is free again
        if (i + STAGES - 1 < n_kt) load((i + STAGES - 1) % STAGES, kt0 + i + STAGES - 1);
        cp_async_commit();

        const int kt = kt0 + i;
        const uint8_t* st = smem + (i % STAGES) * STAGE_BYTES;
        const uint32_t xs = smem_addr(st) + 2 * x_lane;
        const uint8_t* ws = st + X_BYTES;
        const uint32_t* dws = reinterpret_cast<const uint32_t*>(ws + W_BYTES);
        typename P::S sc[2 * MT];
#pragma unroll
        for (int r = 0; r < 2 * MT; ++r) {
            const int parity = ((min(n0 + rows[r], N - 1) * nbk) + (kt >> 1)) & 1;
            sc[r] = P::scales(ws + rows[r] * P::ROW_BYTES, dws + rows[r], kt, parity);
        }
#pragma unroll
        for (int s = 0; s < PK / 16; ++s) {
            uint32_t b[NT][2];
#pragma unroll
            for (int p = 0; p < NT / 2; ++p)
                ldmatrix_x4(xs + 2 * (16 * p * XLD + 16 * s), b[2 * p][0], b[2 * p][1], b[2 * p + 1][0],
                            b[2 * p + 1][1]);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                uint32_t a[4];
                P::a_regs(ws + rows[2 * mt] * P::ROW_BYTES, sc[2 * mt], s, t, a[0], a[2]);
                P::a_regs(ws + rows[2 * mt + 1] * P::ROW_BYTES, sc[2 * mt + 1], s, t, a[1], a[3]);
#pragma unroll
                for (int j = 0; j < NT; ++j) mma16816(acc[mt][j], a, b[j][0], b[j][1]);
            }
        }
    }
    cp_async_wait<0>();

    // C fragment (m-tile mt, n-tile j): element e is weight row 16 mt + g + 8 (e / 2), x row 8 j + 2 t + e % 2
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int m = m0 + 8 * NT * wm + 8 * j + 2 * t + (e & 1);
                const int n = n0 + 16 * MT * wn + 16 * mt + g + 8 * (e >> 1);
                if (m < M && n < N) out[(size_t)m * N + n] = acc[mt][j][e];
            }
}

// matmul_pipe_<type>_m<PM>_s<STAGES>: PM x rows per block from the warp tile (MT m16 tiles of weight rows x NT n8
// tiles of x rows): m128 = 4 x 2 warps of 32 x 64, m64 / m32 / m16 = 8 x 1 warps of 16 x 64 / 32 / 16.
// Up to 3 matrices W_0..W_2 of one type sharing x (Q/K/V, gate/up) in one launch: grid.y runs over their
// concatenated 128-row tiles (unused slots have N_m = 0). With S = gridDim.z > 1 splits, block z writes its
// partial of matrix m to part + z M Ntot + M (N_0 + .. + N_{m-1}), Ntot = N_0 + N_1 + N_2, and
// splitk_reduce_multi sums them; with S = 1 it writes out_m.
#define MMP_ENTRY(suffix, P, PM, MT, NT, STAGES)                                                                \
    extern "C" __global__ void __launch_bounds__(256) matmul_pipe_##suffix##_m##PM##_s##STAGES(                  \
        const uint8_t* q0, const uint8_t* s0, float* o0, int N0, const uint8_t* q1, const uint8_t* s1, float* o1, \
        int N1, const uint8_t* q2, const uint8_t* s2, float* o2, int N2, int K, const half* xp, int M,           \
        float* part, int ksplit) { pdl_start();                                                                \
        const int nb0 = (N0 + PN - 1) / PN, nb1 = (N1 + PN - 1) / PN;                                          \
        int nt = blockIdx.y;                                                                                    \
        const uint8_t *q = q0, *s = s0;                                                                         \
        float* o = o0;                                                                                          \
        int N = N0, before = 0;                                                                                 \
        if (nt >= nb0) {                                                                                        \
            nt -= nb0;                                                                                          \
            if (nt < nb1) {                                                                                     \
                q = q1, s = s1, o = o1, N = N1, before = N0;                                                    \
            } else {                                                                                            \
                nt -= nb1;                                                                                      \
                q = q2, s = s2, o = o2, N = N2, before = N0 + N1;                                               \
            }                                                                                                   \
        }                                                                                                       \
        if (gridDim.z > 1) o = part + ((size_t)blockIdx.z * (N0 + N1 + N2) + before) * M;                       \
        mmp_body<P, STAGES, MT, NT>(WPtrs{q, s, nullptr, N, K}, nt, xp, M, o, ksplit);                          \
    }
#define MMP_TYPE(suffix, P)                 \
    MMP_ENTRY(suffix, P, 128, 2, 8, 3)      \
    MMP_ENTRY(suffix, P, 128, 2, 8, 4)      \
    MMP_ENTRY(suffix, P, 64, 1, 8, 3)       \
    MMP_ENTRY(suffix, P, 64, 1, 8, 4)       \
    MMP_ENTRY(suffix, P, 32, 1, 4, 3)       \
    MMP_ENTRY(suffix, P, 32, 1, 4, 4)       \
    MMP_ENTRY(suffix, P, 32, 1, 4, 6)       \
    MMP_ENTRY(suffix, P, 16, 1, 2, 3)       \
    MMP_ENTRY(suffix, P, 16, 1, 2, 4)       \
    MMP_ENTRY(suffix, P, 16, 1, 2, 6)
MMP_TYPE(q4_k, PQ4K)
MMP_TYPE(q6_k, PQ6K)

// x f32 (n,) -> f16 (n,) in the pair order of the fragments above: each 16-value group is written as its 8 even
// values, then its 8 odd ones (round to nearest even, as to_f16); n a multiple of 16.
extern "C" __global__ void __launch_bounds__(256) to_f16_pairs(const float* __restrict__ x, half* __restrict__ y,
                                                               int n16) {
    pdl_start();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;  // 16-value group
    if (i < n16) {
        const float4* src = reinterpret_cast<const float4*>(x) + 4 * i;
        uint32_t ev[4], od[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const float4 v = __ldg(src + j);
            ev[j] = h2_bits(__floats2half2_rn(v.x, v.z));
            od[j] = h2_bits(__floats2half2_rn(v.y, v.w));
        }
        uint4* dst = reinterpret_cast<uint4*>(y) + 2 * i;
        dst[0] = make_uint4(ev[0], ev[1], ev[2], ev[3]);
        dst[1] = make_uint4(od[0], od[1], od[2], od[3]);
    }
}

// out_m (M N_m) = sum_{z < S} part[z] over the matrices of one matmul_pipe launch: part[z] is (M Ntot,) with matrix m
// at M (N_0 + .. + N_{m-1}); i indexes that concatenation; z ascending (same order every run).
extern "C" __global__ void __launch_bounds__(256) splitk_reduce_multi(const float* __restrict__ part, float* out0,
                                                                     int mn0, float* out1, int mn1, float* out2,
                                                                     int mn2, int S) {
    pdl_start();
    const int i = blockIdx.x * blockDim.x + threadIdx.x, mn = mn0 + mn1 + mn2;
    if (i < mn) {
        float sum = part[i];
        for (int z = 1; z < S; ++z) sum += part[(size_t)z * mn + i];
        if (i < mn0) out0[i] = sum;
        else if (i < mn0 + mn1) out1[i - mn0] = sum;
        else out2[i - mn0 - mn1] = sum;
    }
}
