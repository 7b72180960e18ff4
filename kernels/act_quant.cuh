// The int8 activation quantization of the dp4a matmul path: one and two passes (quantize_act_q8, _q8x2 in
// quantize_act.cu) share this body. (Fusing it into add_rms_norm / silu_mul was measured neutral on an H200:
// 2.547 vs 2.546 ms per batch-1 decode step, so the separate launches stay.)
//
// x f32 (n_rows, K) -> xq int8 (n_rows, K) and xds float2 (n_rows, K/32), per 32 consecutive values b:
// d = max|x| / 127, xq = round_half_even(x / d) computed as x * (1/d) (0 when d == 0), xds[b] = (d, d *
// sum(xq[32b:32b+32])) (q8_1 style). The rows are contiguous: one flat sequence of 32-value blocks.
// PASSES = 2 (--decode-activations int8x2): x ~ d1 q1 + d2 q2, q2 quantizing the residual x - d1 q1 with the fixed
// scale d2 = d1 / 256 (exact; |x - d1 q1| <= d1 / 2, so |q2| <= 128, clamped to 127), written res_blocks blocks
// after the first pass (the vector matmul reads the two passes as extra columns). The fixed ratio lets a kernel
// add the passes as integers, 256 q1.w + q2.w (matmul_dec.cu).
// Decode copy (PASSES = 2, one row, xd not null): both passes again in the order matmul_dec.cu's lanes read them,
// pass p at xd + p * Kp, the 16-value chunk c of 64-value unit u at (u/32)*2048 + c*512 + (u%32)*16; and
// dsd[b] = (d2, d1 sum(q1) + d2 sum(q2)) per 32 values, xs16[i] = 256 sum(q1) + sum(q2) per 16 values.
#pragma once

#include "common.cuh"

// Quantize the float4 v = values 4 t .. 4 t + 3 of the flat array. The 8 lanes of a 32-value block (lanes 8j ..
// 8j + 7 of a warp, t / 8 = the block) call it together; lanes with ok false join the shuffles, store nothing.
template <int PASSES>
__device__ __forceinline__ void quantize_f4(float4 v, size_t t, bool ok, int8_t* __restrict__ xq,
                                            float2* __restrict__ xds, size_t res_blocks,
                                            int8_t* __restrict__ xd = nullptr, float2* __restrict__ dsd = nullptr,
                                            int* __restrict__ xs16 = nullptr, int Kp = 0) {
    const size_t b = t >> 3;
    float r[4] = {v.x, v.y, v.z, v.w};
    float d = 0.f, id = 0.f, total = 0.f;  // this pass's scale and its inverse; sum of the quantized values so far
    int sum16 = 0;                         // 256 sum(q1) + sum(q2) over this lane's 16 values
#pragma unroll
    for (int pass = 0; pass < PASSES; ++pass) {
        if (pass == 0) {
            float amax = fmaxf(fmaxf(fabsf(r[0]), fabsf(r[1])), fmaxf(fabsf(r[2]), fabsf(r[3])));
#pragma unroll
            for (int o = 1; o < 8; o <<= 1) amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, o));
            d = amax / 127.f;
            id = d > 0.f ? 1.f / d : 0.f;
        } else {
            d *= 1.f / 256.f;  // powers of two: exact
            id *= 256.f;
        }
        int q[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            q[i] = __float2int_rn(r[i] * id);
            if (pass > 0) q[i] = max(-127, min(127, q[i]));
        }
        int sum = q[0] + q[1] + q[2] + q[3];
#pragma unroll
        for (int o = 1; o < 4; o <<= 1) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, o);
        sum16 = 256 * sum16 + sum;  // (pass 1's 16-value sum, then 256 times it plus pass 2's)
        sum += __shfl_xor_sync(0xFFFFFFFFu, sum, 4);
        total += d * static_cast<float>(sum);
        if (ok) {
            const char4 q4 = make_char4(static_cast<signed char>(q[0]), static_cast<signed char>(q[1]),
                                        static_cast<signed char>(q[2]), static_cast<signed char>(q[3]));
            const size_t at = (size_t)pass * res_blocks * 8 + t;  // the residual pass lands res_blocks further on
            reinterpret_cast<char4*>(xq)[at] = q4;
            if ((t & 7) == 0) xds[(size_t)pass * res_blocks + b] = make_float2(d, d * static_cast<float>(sum));
            if (PASSES > 1 && xd != nullptr) {
                const size_t u = t >> 4;  // 64-value unit; chunk (t / 4) % 4, word t % 4 of it
                const size_t pos = (u >> 5) * 2048 + ((t >> 2) & 3) * 512 + (u & 31) * 16 + (t & 3) * 4;
                *reinterpret_cast<char4*>(xd + (size_t)pass * Kp + pos) = q4;
            }
        }
        if (PASSES > 1) {
#pragma unroll
            for (int i = 0; i < 4; ++i) r[i] -= d * static_cast<float>(q[i]);  // the residual for the next pass
        }
    }
    if (PASSES > 1 && xd != nullptr && ok && (t & 7) == 0) dsd[b] = make_float2(d, total);
    if (PASSES > 1 && xd != nullptr && ok && (t & 3) == 0) xs16[t >> 2] = sum16;
}

// Row r of a few decode rows' two-pass quantization (quantize_act_q8x2_rows and the *_x2_rows producers): its xq /
// xds rows (the residual pass res_blocks blocks on, as quantize_f4 writes it) and its decode copy, the rows' copies side
// by side (xd + 2 r Kp, dsd + r K/32, xs16 + r K/16); quantize_f4<2>(v, t, ok, ...) with t counted within the row
struct RowsQuant {
    int8_t* xq;
    float2* xds;
    int8_t* xd;
    float2* dsd;
    int* xs16;
    __device__ RowsQuant(int8_t* xq_, float2* xds_, int8_t* xd_, float2* dsd_, int* xs16_, size_t r, int K, int Kp)
        : xq(xq_ + r * K), xds(xds_ + r * (K / 32)), xd(xd_ + 2 * r * Kp), dsd(dsd_ + r * (K / 32)),
          xs16(xs16_ + r * (K / 16)) {}
};

// The same two-pass quantization with the decode copy for one row of K values held one per lane: the 32 lanes of
// the calling warp hold the 32-value block starting at i - lane (i = this lane's value index, a multiple of 32 at
// lane 0); writes what quantize_f4<2> writes for those values (xq / xds with the residual row K values / K/32
// blocks on, xd / dsd / xs16 when xd is not null).
struct RowQuant {
    int8_t* xq;
    float2* xds;
    int8_t* xd;
    float2* dsd;
    int* xs16;
    int K, Kp;
};

__device__ __forceinline__ void quantize_lane_x2(float x, int i, const RowQuant& o) {
    const int lane = threadIdx.x & 31;
    float amax = fabsf(x);
#pragma unroll
    for (int s = 1; s < 32; s <<= 1) amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, s));
    float d = amax / 127.f;
    float id = d > 0.f ? 1.f / d : 0.f;
    float r = x, total = 0.f;
    int sum16 = 0;
    const int u = i >> 6;  // 64-value unit of the decode copy; chunk (i / 16) % 4, byte i % 16 of it
    const size_t pos = (size_t)(u >> 5) * 2048 + ((i >> 4) & 3) * 512 + (u & 31) * 16 + (i & 15);
#pragma unroll
    for (int pass = 0; pass < 2; ++pass) {
        if (pass == 1) {
            d *= 1.f / 256.f;  // powers of two: exact
            id *= 256.f;
        }
        int q = __float2int_rn(r * id);
        if (pass == 1) q = max(-127, min(127, q));
        int sum = q;
#pragma unroll
        for (int s = 1; s < 16; s <<= 1) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, s);
        sum16 = 256 * sum16 + sum;  // this half-warp's 16 values
        sum += __shfl_xor_sync(0xFFFFFFFFu, sum, 16);
        total += d * static_cast<float>(sum);
        o.xq[(size_t)pass * o.K + i] = static_cast<int8_t>(q);
        if (lane == 0) o.xds[(size_t)pass * (o.K / 32) + (i >> 5)] = make_float2(d, d * static_cast<float>(sum));
        if (o.xd != nullptr) o.xd[(size_t)pass * o.Kp + pos] = static_cast<int8_t>(q);
        r -= d * static_cast<float>(q);  // the residual for the second pass
    }
    if (o.xd != nullptr) {
        if (lane == 0) o.dsd[i >> 5] = make_float2(d, total);
        if ((lane & 15) == 0) o.xs16[i >> 4] = sum16;
    }
}
