// Activation quantization for the dp4a matmul path: x f32 (n_rows, K) -> xq int8 (n_rows, K) and
// xds float2 (n_rows, K/32), per 32 consecutive values b: d = max|x| / 127, xq = round_half_even(x / d)
// computed as x * (1/d) (0 when d == 0), xds[b] = (d, d * sum(xq[32b:32b+32])) (q8_1 style).
// The rows are contiguous, so the whole (n_rows, K) array is one flat sequence of nblocks = n_rows*K/32 blocks.
//
// Launch shape: one thread per 4 values (a float4), 8 threads per block of 32 (max and sum by shuffles within
// the 8 lanes), 256 threads per CUDA block; grid.x = ceil(nblocks * 8 / 256).
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256) quantize_act_q8(const float* __restrict__ x,
                                                                 int8_t* __restrict__ xq,
                                                                 float2* __restrict__ xds, int nblocks) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;  // float4 index
    const int b = t >> 3;
    const bool ok = b < nblocks;
    const float4 v = ok ? __ldg(reinterpret_cast<const float4*>(x) + t) : make_float4(0.f, 0.f, 0.f, 0.f);
    float amax = fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)));
#pragma unroll
    for (int o = 1; o < 8; o <<= 1) amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, o));
    const float d = amax / 127.f;
    const float id = d > 0.f ? 1.f / d : 0.f;
    const int q0 = __float2int_rn(v.x * id), q1 = __float2int_rn(v.y * id);
    const int q2 = __float2int_rn(v.z * id), q3 = __float2int_rn(v.w * id);
    int sum = q0 + q1 + q2 + q3;
#pragma unroll
    for (int o = 1; o < 8; o <<= 1) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, o);
    if (ok) {
        reinterpret_cast<char4*>(xq)[t] = make_char4(static_cast<signed char>(q0), static_cast<signed char>(q1),
                                                     static_cast<signed char>(q2), static_cast<signed char>(q3));
        if ((t & 7) == 0) xds[b] = make_float2(d, d * static_cast<float>(sum));
    }
}

// Two-pass variant for the precise int8 path (--decode-activations int8x2): x ~ d1*q1 + d2*q2, where q1 is the
// block's int8 quantization above and q2 quantizes the residual r = x - d1*q1 the same way. The residual rows are
// written res_blocks blocks (res_rows >= n_rows rows) after the first-pass rows, so the vector matmul treats them
// as extra columns and its paired entries store W.(d1 q1) + W.(d2 q2) (matmul_vec.cu). Integer work doubles,
// weight bytes read do not; the rounding error falls ~100x (bench/int8_activation_error.py). Same launch shape.
extern "C" __global__ void __launch_bounds__(256) quantize_act_q8x2(const float* __restrict__ x,
                                                                   int8_t* __restrict__ xq,
                                                                   float2* __restrict__ xds, int nblocks,
                                                                   int res_blocks) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;  // float4 index
    const int b = t >> 3;
    const bool ok = b < nblocks;
    const float4 v = ok ? __ldg(reinterpret_cast<const float4*>(x) + t) : make_float4(0.f, 0.f, 0.f, 0.f);
    float r[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int pass = 0; pass < 2; ++pass) {
        float amax = fmaxf(fmaxf(fabsf(r[0]), fabsf(r[1])), fmaxf(fabsf(r[2]), fabsf(r[3])));
#pragma unroll
        for (int o = 1; o < 8; o <<= 1) amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, o));
        const float d = amax / 127.f;
        const float id = d > 0.f ? 1.f / d : 0.f;
        int q[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) q[i] = __float2int_rn(r[i] * id);
        int sum = q[0] + q[1] + q[2] + q[3];
#pragma unroll
        for (int o = 1; o < 8; o <<= 1) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, o);
        if (ok) {
            const size_t at = (size_t)pass * res_blocks * 8 + t;  // the residual pass lands res_blocks further on
            reinterpret_cast<char4*>(xq)[at] = make_char4(static_cast<signed char>(q[0]), static_cast<signed char>(q[1]),
                                                          static_cast<signed char>(q[2]), static_cast<signed char>(q[3]));
            if ((t & 7) == 0) xds[(size_t)pass * res_blocks + b] = make_float2(d, d * static_cast<float>(sum));
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) r[i] -= d * static_cast<float>(q[i]);  // the residual for pass 1
    }
}
