// rms_norm: out[t, :] = x[t, :] / sqrt(mean(x[t, :]^2) + eps) * w[:]      (float32, row-major (T, D))
// Launch: grid (T), block: any multiple of 32 up to 1024 (the backend gives one thread per float4 of the row, up to
// 1024: CudaBackend._norm_block); each block reduces one row in float32.
// Vectorized float4 path when D % 4 == 0 and pointers are 16-byte aligned (the launcher guarantees it).
// add_rms_norm_f32: the residual add fused in front: sum = a + b (written), out = rms_norm(sum) * w.

#include "norm.cuh"
#include "pdl.cuh"

template <bool VEC4>
__device__ void rms_norm_row(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ out,
                             int D, float eps) {
    const int t = blockIdx.x;
    const float* xr = x + (size_t)t * D;
    float* orow = out + (size_t)t * D;
    float ss = 0.f;
    if (VEC4) {
        const float4* x4 = reinterpret_cast<const float4*>(xr);
        for (int i = threadIdx.x; i < D / 4; i += blockDim.x) {
            float4 v = x4[i];
            ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
    } else {
        for (int i = threadIdx.x; i < D; i += blockDim.x) ss += xr[i] * xr[i];
    }
    const float inv = block_inv_rms(ss, D, eps);
    if (VEC4) {
        const float4* x4 = reinterpret_cast<const float4*>(xr);
        const float4* w4 = reinterpret_cast<const float4*>(w);
        float4* o4 = reinterpret_cast<float4*>(orow);
        for (int i = threadIdx.x; i < D / 4; i += blockDim.x) {
            float4 v = x4[i], g = w4[i];
            o4[i] = make_float4(v.x * inv * g.x, v.y * inv * g.y, v.z * inv * g.z, v.w * inv * g.w);
        }
    } else {
        for (int i = threadIdx.x; i < D; i += blockDim.x) orow[i] = xr[i] * inv * w[i];
    }
}

extern "C" __global__ void rms_norm_f32(const float* __restrict__ x, const float* __restrict__ w,
                                        float* __restrict__ out, int D, float eps) {
    pdl_start();
    rms_norm_row<false>(x, w, out, D, eps);
}

extern "C" __global__ void rms_norm_f32_vec4(const float* __restrict__ x, const float* __restrict__ w,
                                             float* __restrict__ out, int D, float eps) {
    pdl_start();
    rms_norm_row<true>(x, w, out, D, eps);
}

// sum[t, :] = a[t, :] + b[t, :]; out[t, :] = sum[t, :] / sqrt(mean(sum[t, :]^2) + eps) * w[:]   (D % 4 == 0)
extern "C" __global__ void add_rms_norm_f32(const float* __restrict__ a, const float* __restrict__ b,
                                            const float* __restrict__ w, float* __restrict__ sum,
                                            float* __restrict__ out, int D, float eps) {
    pdl_start();
    const size_t row = (size_t)blockIdx.x * D;
    const float4* a4 = reinterpret_cast<const float4*>(a + row);
    const float4* b4 = reinterpret_cast<const float4*>(b + row);
    float4* s4 = reinterpret_cast<float4*>(sum + row);
    float ss = 0.f;
    for (int i = threadIdx.x; i < D / 4; i += blockDim.x) {
        const float4 x = a4[i], y = b4[i];
        const float4 v = make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
        s4[i] = v;
        ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
    const float inv = block_inv_rms(ss, D, eps);
    const float4* w4 = reinterpret_cast<const float4*>(w);
    float4* o4 = reinterpret_cast<float4*>(out + row);
    for (int i = threadIdx.x; i < D / 4; i += blockDim.x) {
        const float4 v = s4[i], g = w4[i];  // re-read this thread's own writes
        o4[i] = make_float4(v.x * inv * g.x, v.y * inv * g.y, v.z * inv * g.z, v.w * inv * g.w);
    }
}
