// Elementwise ops on float32 row-major activations:
//   silu_mul_f32: out = silu(gate) * up = gate / (1 + exp(-gate)) * up        (T, F)
//   add_f32:      out = a + b                                                  (T, D)
//   take_rows_f32: out[r, :] = x[rows[r], :]   (rows: int32 device buffer)     (S', D)
// Launch: silu_mul/add: grid-stride, block 256, n = element count; take_rows: grid (S'), block 256.
#include "pdl.cuh"

extern "C" __global__ void silu_mul_f32(const float* __restrict__ gate, const float* __restrict__ up,
                                        float* __restrict__ out, int n) {
    pdl_start();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

extern "C" __global__ void add_f32(const float* __restrict__ a, const float* __restrict__ b,
                                   float* __restrict__ out, int n) {
    pdl_start();
    const int n4 = n >> 2;
    const float4* a4 = reinterpret_cast<const float4*>(a);
    const float4* b4 = reinterpret_cast<const float4*>(b);
    float4* o4 = reinterpret_cast<float4*>(out);
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += gridDim.x * blockDim.x) {
        float4 x = a4[i], y = b4[i];
        o4[i] = make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
    }
    for (int i = (n4 << 2) + blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
}

extern "C" __global__ void take_rows_f32(const float* __restrict__ x, const int* __restrict__ rows,
                                         float* __restrict__ out, int D) {
    pdl_start();
    const int r = blockIdx.x;
    const float* src = x + (size_t)rows[r] * D;
    float* dst = out + (size_t)r * D;
    for (int i = threadIdx.x; i < D; i += blockDim.x) dst[i] = src[i];
}
