// GGML weight block types on the GPU: the upload layout, and per type the two device operations the
// matmul kernels are built from.
//
// Upload layout (service/backends/cuda_matmul.py repacks at upload; information identical to the file,
// only scales split from quants so that every quant load is an aligned 16-byte load):
//   W is (N rows, K cols); nb = K/32 blocks of 32 values per row for the legacy types, nbk = K/256 for k-quants.
//   F32  q: float (N, K)                      F16  q: half (N, K)
//   Q8_0 q: int8 (N, K)                       s: half d (N, nb)
//   Q4_0 q: uint8 (N, nb, 16) ggml qs order   s: half d (N, nb)             y = d*(q-8)
//   Q4_1 q: as Q4_0                           s: half2 (d, m) (N, nb)       y = d*q + m
//   Q5_0 q: as Q4_0   h: u32 qh (N, nb)       s: half d (N, nb)             y = d*(q-16)
//   Q5_1 q: as Q4_0   h: u32 qh (N, nb)       s: half2 (d, m) (N, nb)       y = d*q + m
//   Q4_K q: the file's 144-byte blocks (N, nbk, 144) (already 16-byte multiples)
//   Q5_K q: the file's 176-byte blocks (N, nbk, 176)
//   Q6_K q: (N, nbk, 208) = ql[128] | qh[64] | scales int8[16]   s: half d (N, nbk)
//   Legacy qs order: byte i (0..15) holds value i in its low nibble and value i+16 in its high nibble.
//
// Activations for the dp4a path (quantize_act.cu): per row of x, xq int8 (K) and xds float2 (K/32) with
// xds[b] = (d, d * sum(xq[32b:32b+32])), x ~= d * xq (q8_1 style, as llama.cpp's MMVQ).
//
// Per type T:
//   T::VU                  values per "unit" of the vector kernel (16 or 32 bytes of weight loads plus
//                          shared headers), T::UPB units per weight block, T::Q8 whether the unit consumes
//                          q8 activations (else f32)
//   T::U  T::load_u(w, row, u)             issue the unit's weight loads
//   T::A  T::load_a(XCol, u)               the unit's activation loads (shared by every row a thread handles)
//   float T::dot(U, A, sub)                the unit's partial dot product; sub = u % UPB (constant per thread)
//   T::C  T::load_c(w, row, kc)            the loads of the 32 values [32kc, 32kc+32) of a row
//   void T::dequant_c(C, float v[32])      ... dequantized to float (get_rows, the tiled matmul)
#pragma once

#include "common.cuh"

struct XCol {                    // one activation row (one column of the product)
    const int8_t* __restrict__ q;   // (K,) int8
    const float2* __restrict__ ds;  // (K/32,) (d, d*sum q)
    const float* __restrict__ f;    // (K,) f32 (F16/F32 weights)
};

// Expand 4 bits (b0..b3 of `bits`) to bit 4 of the 4 bytes of a word (5th quant bit of Q5_0/Q5_1).
__device__ __forceinline__ int expand_hbits(uint32_t bits) {
    return static_cast<int>(((bits & 1u) << 4) | ((bits & 2u) << 11) | ((bits & 4u) << 18) | ((bits & 8u) << 25));
}

// 6-bit scale and min of sub-block j of a Q4_K/Q5_K block; sc = bytes 4..15 of the block header
__device__ __forceinline__ void scale_min_k4(const int4& hdr, int j, float& sc, float& m) {
    // scales[k] = byte 4 + k of the header
    if (j < 4) {
        sc = static_cast<float>(byte_of(hdr, 4 + j) & 63u);
        m = static_cast<float>(byte_of(hdr, 8 + j) & 63u);
    } else {
        sc = static_cast<float>((byte_of(hdr, 8 + j) & 0xFu) | ((byte_of(hdr, j) >> 6) << 4));
        m = static_cast<float>((byte_of(hdr, 8 + j) >> 4) | ((byte_of(hdr, 4 + j) >> 6) << 4));
    }
}

// All 8 (scale, min) pairs of a Q4_K/Q5_K header at once, one byte each: sc[0..3] = bytes of sc_lo, sc[4..7] of
// sc_hi, likewise the mins (scale_min_k4's unpacking, four sub-blocks per word operation)
struct ScalesMinsK4 { uint32_t sc_lo, sc_hi, m_lo, m_hi; };
__device__ __forceinline__ ScalesMinsK4 scales_mins_k4(const int4& hdr) {
    const uint32_t y = hdr.y, z = hdr.z, w = hdr.w;  // header bytes 4..7, 8..11, 12..15
    return ScalesMinsK4{y & 0x3F3F3F3Fu, (w & 0x0F0F0F0Fu) | ((y >> 2) & 0x30303030u),
                        z & 0x3F3F3F3Fu, ((w >> 4) & 0x0F0F0F0Fu) | ((z >> 2) & 0x30303030u)};
}

// ---------------------------------------------------------------------------------------------------
struct TF32 {
    static constexpr int VU = 4, UPB = 1;
    static constexpr bool Q8 = false;
    struct U { int4 q; };
    using A = float4;
    struct C { int4 v[8]; };
    __device__ static U load_u(const WPtrs& w, int row, int u) {
        return U{ld16_stream(w.q + ((size_t)row * w.K + (size_t)u * 4) * 4)};
    }
    __device__ static A load_a(const XCol& x, int u) { return __ldg(reinterpret_cast<const float4*>(x.f) + u); }
    __device__ static float dot(const U& r, const A& a, int) {
        return __int_as_float(r.q.x) * a.x + __int_as_float(r.q.y) * a.y + __int_as_float(r.q.z) * a.z +
               __int_as_float(r.q.w) * a.w;
    }
    __device__ static C load_c(const WPtrs& w, int row, int kc) {
        C c;
        const uint8_t* p = w.q + ((size_t)row * w.K + (size_t)kc * 32) * 4;
#pragma unroll
        for (int i = 0; i < 8; ++i) c.v[i] = ld16(p + 16 * i);
        return c;
    }
    __device__ static void dequant_c(const C& c, float* v) {
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            v[4 * i + 0] = __int_as_float(c.v[i].x);
            v[4 * i + 1] = __int_as_float(c.v[i].y);
            v[4 * i + 2] = __int_as_float(c.v[i].z);
            v[4 * i + 3] = __int_as_float(c.v[i].w);
        }
    }
};

// ---------------------------------------------------------------------------------------------------
struct TF16 {
    static constexpr int VU = 8, UPB = 1;
    static constexpr bool Q8 = false;
    struct U { int4 q; };
    struct A { float4 a, b; };
    struct C { int4 v[4]; };
    __device__ static U load_u(const WPtrs& w, int row, int u) {
        return U{ld16_stream(w.q + ((size_t)row * w.K + (size_t)u * 8) * 2)};
    }
    __device__ static A load_a(const XCol& x, int u) {
        return A{__ldg(reinterpret_cast<const float4*>(x.f) + 2 * u), __ldg(reinterpret_cast<const float4*>(x.f) + 2 * u + 1)};
    }
    __device__ static float dot(const U& r, const A& x, int) {
        const float4& a = x.a;
        const float4& b = x.b;
        const float2 w0 = __half22float2(*reinterpret_cast<const __half2*>(&r.q.x));
        const float2 w1 = __half22float2(*reinterpret_cast<const __half2*>(&r.q.y));
        const float2 w2 = __half22float2(*reinterpret_cast<const __half2*>(&r.q.z));
        const float2 w3 = __half22float2(*reinterpret_cast<const __half2*>(&r.q.w));
        return w0.x * a.x + w0.y * a.y + w1.x * a.z + w1.y * a.w + w2.x * b.x + w2.y * b.y + w3.x * b.z + w3.y * b.w;
    }
    __device__ static C load_c(const WPtrs& w, int row, int kc) {
        C c;
        const uint8_t* p = w.q + ((size_t)row * w.K + (size_t)kc * 32) * 2;
#pragma unroll
        for (int i = 0; i < 4; ++i) c.v[i] = ld16(p + 16 * i);
        return c;
    }
    __device__ static void dequant_c(const C& c, float* v) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int wd = word(c.v[i], j);
                const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&wd));
                v[8 * i + 2 * j] = f.x;
                v[8 * i + 2 * j + 1] = f.y;
            }
        }
    }
};

// ---------------------------------------------------------------------------------------------------
struct TQ8_0 {
    static constexpr int VU = 32, UPB = 1;
    static constexpr bool Q8 = true;
    struct U { int4 a, b; float d; };
    struct A { int4 x0, x1; float dx; };
    using C = U;  // (dx: only the scale of x's block is needed, no sum term)
    __device__ static U load_u(const WPtrs& w, int row, int u) {
        const size_t bi = (size_t)row * (w.K / 32) + u;
        const uint8_t* p = w.q + bi * 32;
        U r;
        r.a = ld16_stream(p);
        r.b = ld16_stream(p + 16);
        r.d = ldh(w.s, bi);
        return r;
    }
    __device__ static A load_a(const XCol& x, int u) {
        const int4* xp = reinterpret_cast<const int4*>(x.q + u * 32);
        return A{__ldg(xp), __ldg(xp + 1), __ldg(reinterpret_cast<const float*>(x.ds + u))};
    }
    __device__ static float dot(const U& r, const A& a, int) {
        int s = dp4a4(r.a.x, r.a.y, r.a.z, r.a.w, a.x0, 0);
        s = dp4a4(r.b.x, r.b.y, r.b.z, r.b.w, a.x1, s);
        return r.d * a.dx * static_cast<float>(s);
    }
    __device__ static C load_c(const WPtrs& w, int row, int kc) {
        const size_t bi = (size_t)row * (w.K / 32) + kc;
        C r;
        r.a = ld16(w.q + bi * 32);
        r.b = ld16(w.q + bi * 32 + 16);
        r.d = ldh(w.s, bi);
        return r;
    }
    __device__ static void dequant_c(const C& c, float* v) {
#pragma unroll
        for (int i = 0; i < 16; ++i) {
            v[i] = c.d * static_cast<float>(static_cast<int8_t>(byte_of(c.a, i)));
            v[16 + i] = c.d * static_cast<float>(static_cast<int8_t>(byte_of(c.b, i)));
        }
    }
};

// ---------------------------------------------------------------------------------------------------
// Q4_0 / Q4_1 / Q5_0 / Q5_1 share one structure: 16 bytes of nibbles per 32-block (+ u32 high bits),
// d (and m) in the scale region.  HAS_MIN: y = d*q + m, else y = d*(q - OFFSET).
template <bool HAS_MIN, bool HAS_HIGH>
struct TLegacy {
    static constexpr int VU = 32, UPB = 1;
    static constexpr bool Q8 = true;
    static constexpr float OFFSET = HAS_HIGH ? 16.f : 8.f;
    struct U { int4 q; float d, m; uint32_t qh; };
    struct A { int4 x0, x1; float2 ds; };
    using C = U;
    __device__ static U load_impl(const WPtrs& w, int row, int u, bool stream) {
        const size_t bi = (size_t)row * (w.K / 32) + u;
        U r;
        r.q = stream ? ld16_stream(w.q + bi * 16) : ld16(w.q + bi * 16);
        if (HAS_MIN) {
            const float2 dm = ldh2(w.s, bi);
            r.d = dm.x;
            r.m = dm.y;
        } else {
            r.d = ldh(w.s, bi);
            r.m = 0.f;
        }
        r.qh = HAS_HIGH ? __ldg(reinterpret_cast<const uint32_t*>(w.h) + bi) : 0u;
        return r;
    }
    __device__ static U load_u(const WPtrs& w, int row, int u) { return load_impl(w, row, u, true); }
    __device__ static C load_c(const WPtrs& w, int row, int kc) { return load_impl(w, row, kc, false); }
    __device__ static A load_a(const XCol& x, int u) {
        const int4* xp = reinterpret_cast<const int4*>(x.q + u * 32);
        return A{__ldg(xp), __ldg(xp + 1), __ldg(x.ds + u)};
    }
    __device__ static float dot(const U& r, const A& a, int) {
        int lo[4], hi[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int v = word(r.q, i);
            lo[i] = v & 0x0F0F0F0F;
            hi[i] = (v >> 4) & 0x0F0F0F0F;
            if (HAS_HIGH) {
                lo[i] |= expand_hbits(r.qh >> (4 * i));
                hi[i] |= expand_hbits(r.qh >> (4 * i + 16));
            }
        }
        int s = dp4a4(lo[0], lo[1], lo[2], lo[3], a.x0, 0);
        s = dp4a4(hi[0], hi[1], hi[2], hi[3], a.x1, s);
        const float2 ds = a.ds;
        // sum_i (d q_i + m) dx qx_i = d dx sumi + m (dx sum qx);  sum_i d (q_i - o) dx qx_i = d (dx sumi - o dx sum qx)
        return HAS_MIN ? r.d * ds.x * static_cast<float>(s) + r.m * ds.y
                       : r.d * (ds.x * static_cast<float>(s) - OFFSET * ds.y);
    }
    __device__ static void dequant_c(const C& c, float* v) {
#pragma unroll
        for (int i = 0; i < 16; ++i) {
            const uint32_t b = byte_of(c.q, i);
            uint32_t q0 = b & 0xFu, q1 = b >> 4;
            if (HAS_HIGH) {
                q0 |= ((c.qh >> i) & 1u) << 4;
                q1 |= ((c.qh >> (i + 16)) & 1u) << 4;
            }
            if (HAS_MIN) {
                v[i] = c.d * u2f(q0) + c.m;
                v[16 + i] = c.d * u2f(q1) + c.m;
            } else {
                v[i] = c.d * u2f(q0, OFFSET);
                v[16 + i] = c.d * u2f(q1, OFFSET);
            }
        }
    }
};
using TQ4_0 = TLegacy<false, false>;
using TQ4_1 = TLegacy<true, false>;
using TQ5_0 = TLegacy<false, true>;
using TQ5_1 = TLegacy<true, true>;

// ---------------------------------------------------------------------------------------------------
// Q4_K / Q5_K: 256-value blocks, header (d, dmin, scales[12]) = the block's first 16 bytes.
// Vector unit j (0..3) of a block: the 32 bytes qs[32j, 32j+32): low nibbles = the 32 values of sub-block
// 2j, high nibbles = those of sub-block 2j+1. Q5_K adds qh[0..32): bit s of qh[i] is the 5th bit of value i
// of sub-block s. The (scale, min) pair of both sub-blocks is decoded once per unit with 16-bit operations.
// STREAM: weight quants through the L1-non-allocating path. Default off: a unit's two 16-byte loads each
// touch half of the same 32-byte sectors across the warp, and with L1 allocation the second half is an L1 hit
// (H200, bench/matmul_bench.py: 5-11 % faster on the 7B shapes than streaming; "st:" variants measure it).
template <bool HIGH, bool STREAM = false>
struct TQK45 {
    static constexpr int VU = 64, UPB = 4;
    static constexpr bool Q8 = true;
    static constexpr int BB = HIGH ? 176 : 144;  // block bytes
    static constexpr int QS = HIGH ? 48 : 16;    // offset of qs in the block
    struct U { int4 hdr, q0, q1, h0, h1; };
    struct A { int4 a0, a1, b0, b1; float4 ds; };  // sub-block 2j values 0..15, 16..31; 2j+1 likewise; (d, d*sum) x2
    __device__ static U load_u(const WPtrs& w, int row, int u) {
        const int b = u >> 2, j = u & 3;
        const uint8_t* base = w.q + ((size_t)row * (w.K / 256) + b) * BB;
        U r;
        r.hdr = ld16(base);  // shared by the 4 units of a block: L1 keeps it
        r.q0 = STREAM ? ld16_stream(base + QS + 32 * j) : ld16(base + QS + 32 * j);
        r.q1 = STREAM ? ld16_stream(base + QS + 32 * j + 16) : ld16(base + QS + 32 * j + 16);
        if (HIGH) {
            r.h0 = ld16(base + 16);
            r.h1 = ld16(base + 32);
        } else {
            r.h0 = r.h1 = make_int4(0, 0, 0, 0);
        }
        return r;
    }
    __device__ static A load_a(const XCol& x, int u) {
        const int b = u >> 2, j = u & 3;
        const int4* xp = reinterpret_cast<const int4*>(x.q + b * 256 + 64 * j);
        return A{__ldg(xp), __ldg(xp + 1), __ldg(xp + 2), __ldg(xp + 3),
                 __ldg(reinterpret_cast<const float4*>(x.ds + b * 8 + 2 * j))};
    }
    // 16-bit word k (0..5) of the 12 scale bytes
    __device__ static uint32_t sc16(const int4& hdr, int k) {
        return (static_cast<uint32_t>(word(hdr, 1 + (k >> 1))) >> (16 * (k & 1))) & 0xFFFFu;
    }
    __device__ static float dot(const U& r, const A& a, int j) {
        const int s0 = 2 * j, s1 = 2 * j + 1;
        int si0 = 0, si1 = 0;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int v0 = word(r.q0, i), v1 = word(r.q1, i);
            int lo0 = v0 & 0x0F0F0F0F, hi0 = (v0 >> 4) & 0x0F0F0F0F;
            int lo1 = v1 & 0x0F0F0F0F, hi1 = (v1 >> 4) & 0x0F0F0F0F;
            if (HIGH) {
                const uint32_t g0 = static_cast<uint32_t>(word(r.h0, i)), g1 = static_cast<uint32_t>(word(r.h1, i));
                lo0 |= static_cast<int>(((g0 >> s0) & 0x01010101u) << 4);
                hi0 |= static_cast<int>(((g0 >> s1) & 0x01010101u) << 4);
                lo1 |= static_cast<int>(((g1 >> s0) & 0x01010101u) << 4);
                hi1 |= static_cast<int>(((g1 >> s1) & 0x01010101u) << 4);
            }
            si0 = __dp4a(lo0, word(a.a0, i), si0);
            si0 = __dp4a(lo1, word(a.a1, i), si0);
            si1 = __dp4a(hi0, word(a.b0, i), si1);
            si1 = __dp4a(hi1, word(a.b1, i), si1);
        }
        // (scale, min) of sub-blocks 2j, 2j+1 as byte pairs (ggml get_scale_min_k4, two at a time)
        const uint32_t lo_sc = sc16(r.hdr, j) & 0x3F3Fu, lo_m = sc16(r.hdr, j + 2) & 0x3F3Fu;
        const uint32_t up = sc16(r.hdr, (j + 2) % 6);  // j >= 2 only
        const uint32_t hi_sc = (up & 0x0F0Fu) | ((sc16(r.hdr, (j + 4) % 6) & 0xC0C0u) >> 2);
        const uint32_t hi_m = ((up >> 4) & 0x0F0Fu) | ((sc16(r.hdr, j) & 0xC0C0u) >> 2);
        const uint32_t sc = j < 2 ? lo_sc : hi_sc, m = j < 2 ? lo_m : hi_m;
        const float2 dd = __half22float2(*reinterpret_cast<const __half2*>(&r.hdr.x));  // (d, dmin)
        return dd.x * (a.ds.x * static_cast<float>(si0 * static_cast<int>(sc & 0xFFu)) +
                       a.ds.z * static_cast<float>(si1 * static_cast<int>(sc >> 8))) -
               dd.y * (a.ds.y * static_cast<float>(m & 0xFFu) + a.ds.w * static_cast<float>(m >> 8));
    }
    struct C { int4 hdr, q0, q1, h0, h1; };
    __device__ static C load_c(const WPtrs& w, int row, int kc) {
        const int b = kc >> 3, s = kc & 7, j = s >> 1;
        const uint8_t* base = w.q + ((size_t)row * (w.K / 256) + b) * BB;
        C c;
        c.hdr = ld16(base);
        c.q0 = ld16(base + QS + 32 * j);
        c.q1 = ld16(base + QS + 32 * j + 16);
        if (HIGH) {
            c.h0 = ld16(base + 16);
            c.h1 = ld16(base + 32);
        } else {
            c.h0 = c.h1 = make_int4(0, 0, 0, 0);
        }
        return c;
    }
    // dequant_c needs the sub-block index s = kc % 8
    __device__ static void dequant_c(const C& c, int s, float* v) {
        const float2 dd = __half22float2(*reinterpret_cast<const __half2*>(&c.hdr.x));
        float sc, m;
        scale_min_k4(c.hdr, s, sc, m);
        const float d = dd.x * sc, dm = dd.y * m;
        const int shift = 4 * (s & 1);
#pragma unroll
        for (int i = 0; i < 16; ++i) {
            uint32_t q0 = (byte_of(c.q0, i) >> shift) & 0xFu;
            uint32_t q1 = (byte_of(c.q1, i) >> shift) & 0xFu;
            if (HIGH) {
                q0 |= ((byte_of(c.h0, i) >> s) & 1u) << 4;
                q1 |= ((byte_of(c.h1, i) >> s) & 1u) << 4;
            }
            v[i] = d * u2f(q0) - dm;
            v[16 + i] = d * u2f(q1) - dm;
        }
    }
};
using TQ4_K = TQK45<false>;
using TQ5_K = TQK45<true>;
using TQ4_K_ST = TQK45<false, true>;

// ---------------------------------------------------------------------------------------------------
// Q6_K (repacked 208-byte block ql[128] | qh[64] | scales[16], d apart). Value v = 128h + w (w in 0..127):
// 4 low bits = nibble (w >= 64 ? high : low) of ql[64h + w%64], 2 high bits = (qh[32h + w%32] >> 2*(w/32)) & 3,
// y = d * scales[v/16] * (q - 32).
// Vector unit l (0..7): h = l/4, l0 = 16*(l%4): ql[64h + l0, +16) -> values 128h + l0 + i (low nibbles) and
// 128h + 64 + l0 + i (high nibbles); qh[32h + l0%32, +16) shifted by 2*(l0/32) and 2*(l0/32) + 4.
struct TQ6_K {
    static constexpr int VU = 32, UPB = 8;
    static constexpr bool Q8 = true;
    struct U { int4 ql, qh, sc; float d; };
    struct A { int4 xa, xb; float dx0, dx1; };
    __device__ static U load_u(const WPtrs& w, int row, int u) {
        const int b = u >> 3, l = u & 7, h = l >> 2, l0 = 16 * (l & 3);
        const size_t bi = (size_t)row * (w.K / 256) + b;
        const uint8_t* base = w.q + bi * 208;
        U r;
        r.ql = ld16_stream(base + 64 * h + l0);
        r.qh = ld16(base + 128 + 32 * h + (l0 & 31));
        r.sc = ld16(base + 192);
        r.d = ldh(w.s, bi);
        return r;
    }
    __device__ static A load_a(const XCol& x, int u) {
        const int b = u >> 3, l = u & 7, h = l >> 2, l0 = 16 * (l & 3);
        const int v_lo = 128 * h + l0, v_hi = 128 * h + 64 + l0;  // first value of each half-unit in the block
        return A{__ldg(reinterpret_cast<const int4*>(x.q + b * 256 + v_lo)),
                 __ldg(reinterpret_cast<const int4*>(x.q + b * 256 + v_hi)),
                 __ldg(x.ds + b * 8 + (v_lo >> 5)).x, __ldg(x.ds + b * 8 + (v_hi >> 5)).x};
    }
    __device__ static float dot(const U& r, const A& a, int l) {
        const int h = l >> 2, l0 = 16 * (l & 3);
        const int sh = 2 * (l0 >> 5);
        const int v_lo = 128 * h + l0, v_hi = 128 * h + 64 + l0;
        int lo[4], hi[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const uint32_t q = static_cast<uint32_t>(word(r.ql, i));
            const uint32_t hb = static_cast<uint32_t>(word(r.qh, i));
            lo[i] = static_cast<int>(__vsub4((q & 0x0F0F0F0Fu) | (((hb >> sh) & 0x03030303u) << 4), 0x20202020u));
            hi[i] = static_cast<int>(__vsub4(((q >> 4) & 0x0F0F0F0Fu) | (((hb >> (sh + 4)) & 0x03030303u) << 4),
                                             0x20202020u));
        }
        const int si0 = dp4a4(lo[0], lo[1], lo[2], lo[3], a.xa, 0);
        const int si1 = dp4a4(hi[0], hi[1], hi[2], hi[3], a.xb, 0);
        const float sc0 = static_cast<float>(static_cast<int8_t>(byte_of(r.sc, v_lo >> 4)));
        const float sc1 = static_cast<float>(static_cast<int8_t>(byte_of(r.sc, v_hi >> 4)));
        return r.d * (sc0 * a.dx0 * static_cast<float>(si0) + sc1 * a.dx1 * static_cast<float>(si1));
    }
    struct C { int4 ql0, ql1, qh0, qh1, sc; float d; };
    __device__ static C load_c(const WPtrs& w, int row, int kc) {
        const int b = kc >> 3, c8 = kc & 7, h = c8 >> 2, w0 = 32 * (c8 & 3);
        const size_t bi = (size_t)row * (w.K / 256) + b;
        const uint8_t* base = w.q + bi * 208;
        C c;
        c.ql0 = ld16(base + 64 * h + (w0 & 63));
        c.ql1 = ld16(base + 64 * h + (w0 & 63) + 16);
        c.qh0 = ld16(base + 128 + 32 * h);
        c.qh1 = ld16(base + 128 + 32 * h + 16);
        c.sc = ld16(base + 192);
        c.d = ldh(w.s, bi);
        return c;
    }
    // c8 = kc % 8
    __device__ static void dequant_c(const C& c, int c8, float* v) {
        const int h = c8 >> 2, w0 = 32 * (c8 & 3);
        const int nshift = w0 >= 64 ? 4 : 0, hshift = 2 * (w0 >> 5);
        const float d0 = c.d * static_cast<float>(static_cast<int8_t>(byte_of(c.sc, (128 * h + w0) >> 4)));
        const float d1 = c.d * static_cast<float>(static_cast<int8_t>(byte_of(c.sc, ((128 * h + w0) >> 4) + 1)));
#pragma unroll
        for (int i = 0; i < 16; ++i) {
            const uint32_t q0 = ((byte_of(c.ql0, i) >> nshift) & 0xFu) | (((byte_of(c.qh0, i) >> hshift) & 3u) << 4);
            const uint32_t q1 = ((byte_of(c.ql1, i) >> nshift) & 0xFu) | (((byte_of(c.qh1, i) >> hshift) & 3u) << 4);
            v[i] = d0 * u2f(q0, 32.f);  // q - 32, exact
            v[16 + i] = d1 * u2f(q1, 32.f);
        }
    }
};

// Uniform dequant entry: the k-quants need the chunk's position in its block, the others ignore it.
template <class T> struct Deq {
    __device__ static void run(const typename T::C& c, int kc, float* v) { T::dequant_c(c, v); }
};
template <> struct Deq<TQ4_K> {
    __device__ static void run(const TQ4_K::C& c, int kc, float* v) { TQ4_K::dequant_c(c, kc & 7, v); }
};
template <> struct Deq<TQ5_K> {
    __device__ static void run(const TQ5_K::C& c, int kc, float* v) { TQ5_K::dequant_c(c, kc & 7, v); }
};
template <> struct Deq<TQ6_K> {
    __device__ static void run(const TQ6_K::C& c, int kc, float* v) { TQ6_K::dequant_c(c, kc & 7, v); }
};

// X-macro of every type: X(suffix, struct)
#define FOR_EACH_WTYPE(X) \
    X(f32, TF32)          \
    X(f16, TF16)          \
    X(q8_0, TQ8_0)        \
    X(q4_0, TQ4_0)        \
    X(q4_1, TQ4_1)        \
    X(q5_0, TQ5_0)        \
    X(q5_1, TQ5_1)        \
    X(q4_k, TQ4_K)        \
    X(q5_k, TQ5_K)        \
    X(q6_k, TQ6_K)
