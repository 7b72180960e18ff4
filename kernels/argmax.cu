// argmax_f32: out[r] = the first index of the maximum of x[r, :]   (greedy decoding on the device)
// x: (R, N) float32 row-major; out: (R,) int32. Ties go to the lowest index (NumPy's argmax rule); NaN is
// never chosen over a number. Launch: grid (R), block 1024.
#include "pdl.cuh"

extern "C" __global__ void argmax_f32(const float* __restrict__ x, int* __restrict__ out, int N) {
    pdl_start();
    __shared__ float s_val[32];
    __shared__ int s_idx[32];
    const float* row = x + (size_t)blockIdx.x * N;
    float best = -INFINITY;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < N; i += blockDim.x) {
        const float v = row[i];
        if (v > best) { best = v; bi = i; }  // strictly greater: first index within a thread's stride
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > best || (ov == best && oi < bi)) { best = ov; bi = oi; }
    }
    if ((threadIdx.x & 31) == 0) { s_val[threadIdx.x >> 5] = best; s_idx[threadIdx.x >> 5] = bi; }
    __syncthreads();
    if (threadIdx.x < 32) {
        const int nw = blockDim.x >> 5;
        best = threadIdx.x < nw ? s_val[threadIdx.x] : -INFINITY;
        bi = threadIdx.x < nw ? s_idx[threadIdx.x] : 0x7fffffff;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, best, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ov > best || (ov == best && oi < bi)) { best = ov; bi = oi; }
        }
        if (threadIdx.x == 0) out[blockIdx.x] = bi == 0x7fffffff ? 0 : bi;
    }
}
