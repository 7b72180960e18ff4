// The block reduction of rms_norm (norm.cu) and of the norms fused with the activation quantization
// (quantize_act.cu).
#pragma once

#include "common.cuh"

// 1 / sqrt(mean of the row's squares + eps) from each thread's partial sum of squares ss; every thread of the
// block calls it and gets the result
__device__ __forceinline__ float block_inv_rms(float ss, int D, float eps) {
    __shared__ float partial[32];
    __shared__ float s_inv;
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = threadIdx.x < (blockDim.x >> 5) ? partial[threadIdx.x] : 0.f;
        v = warp_sum(v);
        if (threadIdx.x == 0) s_inv = 1.0f / sqrtf(v / (float)D + eps);
    }
    __syncthreads();
    return s_inv;
}
