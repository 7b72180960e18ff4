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
