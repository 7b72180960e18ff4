// Activation quantization for the dp4a matmul path (the math: act_quant.cuh): x f32 (n_rows, K) -> xq int8
// (n_rows, K) and xds float2 (n_rows, K/32), nblocks = n_rows*K/32 blocks of 32 values.
//
// Launch shape: one thread per 4 values (a float4), 8 threads per block of 32 (max and sum by shuffles within
// the 8 lanes), 256 threads per CUDA block; grid.x = ceil(nblocks * 8 / 256).
#include "act_quant.cuh"
#include "pdl.cuh"

extern "C" __global__ void __launch_bounds__(256) quantize_act_q8(const float* __restrict__ x,
                                                                 int8_t* __restrict__ xq,
                                                                 float2* __restrict__ xds, int nblocks) {
    pdl_start();
    const int t = blockIdx.x * blockDim.x + threadIdx.x;  // float4 index
    const bool ok = (t >> 3) < nblocks;
    const float4 v = ok ? __ldg(reinterpret_cast<const float4*>(x) + t) : make_float4(0.f, 0.f, 0.f, 0.f);
    quantize_f4<1>(v, t, ok, xq, xds, 0);
}

// Two-pass variant for the precise int8 path (--decode-activations int8x2, act_quant.cuh): the residual rows are
// written res_blocks blocks (res_rows >= n_rows rows) after the first-pass rows, so the vector matmul treats them
// as extra columns and its paired entries store W.(d1 q1) + W.(d2 q2) (matmul_vec.cu). Integer work doubles,
// weight bytes read do not; the rounding error falls ~100x (bench/int8_activation_error.py). Same launch shape.
// With xd not null (one row only) it also writes the decode copy matmul_dec.cu reads (xd int8 (2, Kp), dsd float2
// (K/32), xs16 int32 (K/16)). trigger_first: let the next kernel (a matmul) launch before this one's wait rather
// than after it, so the matmul's first weight copies (issued before its own wait) overlap the kernel before this one.
extern "C" __global__ void __launch_bounds__(256) quantize_act_q8x2(const float* __restrict__ x,
                                                                   int8_t* __restrict__ xq,
                                                                   float2* __restrict__ xds, int nblocks,
                                                                   int res_blocks, int8_t* __restrict__ xd,
                                                                   float2* __restrict__ dsd, int* __restrict__ xs16,
                                                                   int Kp,
                                                                   int trigger_first) {
    if (trigger_first) pdl_trigger();
    pdl_wait();
    if (!trigger_first) pdl_trigger();
    const int t = blockIdx.x * blockDim.x + threadIdx.x;  // float4 index
    const bool ok = (t >> 3) < nblocks;
    const float4 v = ok ? __ldg(reinterpret_cast<const float4*>(x) + t) : make_float4(0.f, 0.f, 0.f, 0.f);
    quantize_f4<2>(v, t, ok, xq, xds, res_blocks, xd, dsd, xs16, Kp);
}
