// Activation quantization for the dp4a matmul path (the math: act_quant.cuh): x f32 (n_rows, K) -> xq int8
// (n_rows, K) and xds float2 (n_rows, K/32), nblocks = n_rows*K/32 blocks of 32 values.
//
// Launch shape: one thread per 4 values (a float4), 8 threads per block of 32 (max and sum by shuffles within
// the 8 lanes), 256 threads per CUDA block; grid.x = ceil(nblocks * 8 / 256).
#include "act_quant.cuh"
#include "norm.cuh"
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

// The same for a few decode rows (matmul_dec.cu's c<NC> entries), each row's decode copy as quantize_act_q8x2 writes
// one row's, side by side (RowsQuant). Grid (ceil(K / 4 / 256), rows).
extern "C" __global__ void __launch_bounds__(256) quantize_act_q8x2_rows(const float* __restrict__ x,
                                                                        int8_t* __restrict__ xq,
                                                                        float2* __restrict__ xds, int K,
                                                                        int res_blocks, int8_t* __restrict__ xd,
                                                                        float2* __restrict__ dsd,
                                                                        int* __restrict__ xs16, int Kp) {
    pdl_start();
    const RowsQuant o(xq, xds, xd, dsd, xs16, blockIdx.y, K, Kp);
    const int t = blockIdx.x * blockDim.x + threadIdx.x;  // float4 index within the row
    const bool ok = (t >> 3) < K / 32;
    const float4 v = ok ? __ldg(reinterpret_cast<const float4*>(x + (size_t)blockIdx.y * K) + t)
                        : make_float4(0.f, 0.f, 0.f, 0.f);
    quantize_f4<2>(v, t, ok, o.xq, o.xds, res_blocks, o.xd, o.dsd, o.xs16, Kp);
}

// --- producers of one decode row that write its two-pass quantization themselves -------------------------------
// At batch 1 every matmul input is an rms_norm or silu_mul output, quantized by quantize_act_q8x2 in a launch of its
// own. These do the op and the quantization (with the decode copy, act_quant.cuh) in one launch, so the matmul
// after them reads a workspace that is already filled (CudaBackend.fuse_quant). The op's f32 output is written too
// and is computed exactly as norm.cu / elementwise.cu compute it.

// [sum = a + b (b not null),] out = rms_norm(sum or a) * w for one row of D values (D % 32 == 0); one block, any
// multiple of 32 threads (the backend gives rms_norm's: one per float4, up to 1024). res_blocks: where the residual
// pass of xq / xds goes (quantize_f4).
__device__ __forceinline__ void rms_norm_quant_row(const float* __restrict__ a, const float* __restrict__ b,
                                                   const float* __restrict__ w, float* __restrict__ sum,
                                                   float* __restrict__ out, int D, float eps, int8_t* __restrict__ xq,
                                                   float2* __restrict__ xds, int res_blocks, int8_t* __restrict__ xd,
                                                   float2* __restrict__ dsd, int* __restrict__ xs16, int Kp,
                                                   int trigger_first) {
    const int n4 = D / 4;
    const float4* w4 = reinterpret_cast<const float4*>(w);
    // the first round's norm weights (constant) are loaded before the wait, over the kernel before
    const float4 w_first = threadIdx.x < n4 ? __ldg(w4 + threadIdx.x) : make_float4(0.f, 0.f, 0.f, 0.f);
    if (trigger_first) pdl_trigger();
    pdl_wait();
    if (!trigger_first) pdl_trigger();
    const float4* a4 = reinterpret_cast<const float4*>(a);
    const float4* b4 = reinterpret_cast<const float4*>(b);
    float4* s4 = reinterpret_cast<float4*>(sum);
    float ss = 0.f;
    for (int i = threadIdx.x; i < n4; i += blockDim.x) {
        float4 v = a4[i];
        if (b != nullptr) {
            const float4 y = b4[i];
            v = make_float4(v.x + y.x, v.y + y.y, v.z + y.z, v.w + y.w);
            s4[i] = v;
        }
        ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
    const float inv = block_inv_rms(ss, D, eps);
    float4* o4 = reinterpret_cast<float4*>(out);
    const int rounds = (n4 + blockDim.x - 1) / blockDim.x * blockDim.x;  // whole warps call quantize_f4
    for (int i = threadIdx.x; i < rounds; i += blockDim.x) {
        const bool ok = i < n4;
        float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
        if (ok) {
            const float4 v = b != nullptr ? s4[i] : a4[i];  // (this thread's own writes)
            const float4 g = i == threadIdx.x ? w_first : __ldg(w4 + i);
            o = make_float4(v.x * inv * g.x, v.y * inv * g.y, v.z * inv * g.z, v.w * inv * g.w);
            o4[i] = o;
        }
        quantize_f4<2>(o, i, ok, xq, xds, res_blocks, xd, dsd, xs16, Kp);
    }
}

// the parameters the one-row and the few-row norm entries share (then trigger_first, or res_rows)
#define NORM_QUANT_PARAMS                                                                                     \
    const float *__restrict__ a, const float *__restrict__ b, const float *__restrict__ w,                    \
        float *__restrict__ sum, float *__restrict__ out, int D, float eps, int8_t *__restrict__ xq,          \
        float2 *__restrict__ xds, int8_t *__restrict__ xd, float2 *__restrict__ dsd, int *__restrict__ xs16,   \
        int Kp

extern "C" __global__ void rms_norm_quant_x2(NORM_QUANT_PARAMS, int trigger_first) {
    rms_norm_quant_row(a, b, w, sum, out, D, eps, xq, xds, D / 32, xd, dsd, xs16, Kp, trigger_first);
}

// The same for a few decode rows (grid: one block per row), each row's quantization where quantize_act_q8x2_rows puts
// it (RowsQuant), the residual pass of xq / xds res_rows rows on
extern "C" __global__ void rms_norm_quant_x2_rows(NORM_QUANT_PARAMS, int res_rows) {
    const size_t at = (size_t)blockIdx.x * D;
    const RowsQuant o(xq, xds, xd, dsd, xs16, blockIdx.x, D, Kp);
    rms_norm_quant_row(a + at, b != nullptr ? b + at : nullptr, w, b != nullptr ? sum + at : nullptr, out + at, D,
                       eps, o.xq, o.xds, res_rows * (D / 32), o.xd, o.dsd, o.xs16, Kp, 0);
}

// out = silu(gate) * up for one row of n values (n % 32 == 0). Launch: one thread per float4, 256 per block.
__device__ __forceinline__ void silu_mul_quant_row(const float* __restrict__ gate, const float* __restrict__ up,
                                                   float* __restrict__ out, int n, int8_t* __restrict__ xq,
                                                   float2* __restrict__ xds, int res_blocks, int8_t* __restrict__ xd,
                                                   float2* __restrict__ dsd, int* __restrict__ xs16, int Kp,
                                                   int trigger_first) {
    if (trigger_first) pdl_trigger();
    pdl_wait();
    if (!trigger_first) pdl_trigger();
    const int t = blockIdx.x * blockDim.x + threadIdx.x;  // float4 index
    const bool ok = t < n / 4;
    float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
    if (ok) {
        const float4 g = reinterpret_cast<const float4*>(gate)[t], u = reinterpret_cast<const float4*>(up)[t];
        o = make_float4(g.x / (1.0f + expf(-g.x)) * u.x, g.y / (1.0f + expf(-g.y)) * u.y,
                        g.z / (1.0f + expf(-g.z)) * u.z, g.w / (1.0f + expf(-g.w)) * u.w);
        reinterpret_cast<float4*>(out)[t] = o;
    }
    quantize_f4<2>(o, t, ok, xq, xds, res_blocks, xd, dsd, xs16, Kp);
}

// ... and silu_mul's
#define SILU_QUANT_PARAMS                                                                                     \
    const float *__restrict__ gate, const float *__restrict__ up, float *__restrict__ out, int n,             \
        int8_t *__restrict__ xq, float2 *__restrict__ xds, int8_t *__restrict__ xd, float2 *__restrict__ dsd,  \
        int *__restrict__ xs16, int Kp

extern "C" __global__ void __launch_bounds__(256) silu_mul_quant_x2(SILU_QUANT_PARAMS, int trigger_first) {
    silu_mul_quant_row(gate, up, out, n, xq, xds, n / 32, xd, dsd, xs16, Kp, trigger_first);
}

// The same for a few decode rows of n values each: grid (ceil(n / 1024), rows), rows' copies as in
// rms_norm_quant_x2_rows
extern "C" __global__ void __launch_bounds__(256) silu_mul_quant_x2_rows(SILU_QUANT_PARAMS, int res_rows) {
    const size_t at = (size_t)blockIdx.y * n;
    const RowsQuant o(xq, xds, xd, dsd, xs16, blockIdx.y, n, Kp);
    silu_mul_quant_row(gate + at, up + at, out + at, n, o.xq, o.xds, res_rows * (n / 32), o.xd, o.dsd, o.xs16, Kp, 0);
}
