// rope_f32: rotary position embedding, both GGML modes, out-of-place.
//   x, out: (T, n_heads * head_dim) float32. Row t is rotated at position p = pos[t] (int32 device buffer);
//   with sink != 0 at min(p, max_positions - 1) (the StreamingKVCache sink-query position).
//   Rotated pair i (0 <= i < n_rot/2) uses angle = p * inv_freq[i] in float64 (inv_freq already holds the
//   llama3 freq factors and linear scaling), cos/sin rounded to float32 as in the NumPy twin:
//     normal (GGML llama): (x[2i], x[2i+1])        -> (a cos - b sin, a sin + b cos)
//     neox:                (x[i], x[i + n_rot/2])   -> same
//   Dimensions >= n_rot are copied unchanged.
// Launch: grid (T), block 256; threads stride over (head, pair) jobs.
// rope_qk_f32 / rope_qk_neox_f32: the three rotations of an attention layer in one launch: q at p (q_out),
// q at the sink position (qs_out) and k at p (k_out); same math as three rope_f32 calls. With k_st != 0 it
// also stages the f16 KV rows (k_st = half(rotated k), v_st = half(v): kv_stage_f16 fused in).
// Launch: grid (T, B), block 256: the B blocks of a row share its (head, pair) jobs (B > 1 for few rows, so a
// decode step is not one block on one SM), each computing the row's n_rot / 2 angles once into shared memory
// (n_rot / 2 <= ROPE_MAX_HALF).
// rope_table_f32: the step's angles once for all layers, for attention with the rotations fused in (attention.cu):
// table[t * half + i] = (cos p, sin p, cos ps, sin ps) of row t's pair i, as rope_qk computes them. Launch: grid (T),
// block 64, threads strided over the pairs.
#include <cuda_fp16.h>
#include "pdl.cuh"
#include "rope.cuh"

template <bool NEOX>
__device__ void rope_row(const float* __restrict__ x, float* __restrict__ out, const int* __restrict__ pos,
                         const double* __restrict__ inv_freq, int n_heads, int head_dim, int n_rot,
                         int sink, int max_positions) {
    const int t = blockIdx.x;
    int p = pos[t];
    if (sink && p > max_positions - 1) p = max_positions - 1;
    const int half = n_rot >> 1;
    const size_t row = (size_t)t * n_heads * head_dim;
    const int jobs = n_heads * half;
    for (int j = threadIdx.x; j < jobs; j += blockDim.x) {
        const int h = j / half, i = j - h * half;
        double sd, cd;
        sincos((double)p * inv_freq[i], &sd, &cd);
        const float s = (float)sd, c = (float)cd;
        const int ia = NEOX ? i : 2 * i;
        const int ib = NEOX ? i + half : 2 * i + 1;
        const size_t base = row + (size_t)h * head_dim;
        const float a = x[base + ia], b = x[base + ib];
        const float2 r = rotate(a, b, c, s);
        out[base + ia] = r.x;
        out[base + ib] = r.y;
    }
    const int rest = head_dim - n_rot;
    if (rest > 0) {
        for (int j = threadIdx.x; j < n_heads * rest; j += blockDim.x) {
            const int h = j / rest, d = n_rot + (j - h * rest);
            out[row + (size_t)h * head_dim + d] = x[row + (size_t)h * head_dim + d];
        }
    }
}

extern "C" __global__ void rope_f32(const float* __restrict__ x, float* __restrict__ out, const int* __restrict__ pos,
                                    const double* __restrict__ inv_freq, int n_heads, int head_dim, int n_rot,
                                    int sink, int max_positions) {
    pdl_start();
    rope_row<false>(x, out, pos, inv_freq, n_heads, head_dim, n_rot, sink, max_positions);
}

extern "C" __global__ void rope_neox_f32(const float* __restrict__ x, float* __restrict__ out,
                                         const int* __restrict__ pos, const double* __restrict__ inv_freq,
                                         int n_heads, int head_dim, int n_rot, int sink, int max_positions) {
    pdl_start();
    rope_row<true>(x, out, pos, inv_freq, n_heads, head_dim, n_rot, sink, max_positions);
}

template <bool NEOX>
__device__ void rope_qk_row(const float* __restrict__ q, const float* __restrict__ k, float* __restrict__ q_out,
                            float* __restrict__ qs_out, float* __restrict__ k_out, const int* __restrict__ pos,
                            const double* __restrict__ inv_freq, int n_heads, int n_kv_heads, int head_dim,
                            int n_rot, int max_positions, const float* __restrict__ v, __half* __restrict__ k_st,
                            __half* __restrict__ v_st) {
    // the row's cos / sin per rotated pair, at p and at the sink position ps: every head uses the same n_rot / 2
    // angles, so they are computed once per block (double sincos, rounded to float as before). Positions (host-staged)
    // and frequencies (constant) are not written by any kernel, so this runs before pdl_wait, over the kernel before.
    __shared__ float4 cs[ROPE_MAX_HALF];  // (cos p, sin p, cos ps, sin ps)
    const int t = blockIdx.x;
    const int p = __ldg(pos + t);
    const int ps = p > max_positions - 1 ? max_positions - 1 : p;
    const int half = n_rot >> 1;
    for (int i = threadIdx.x; i < half; i += blockDim.x) cs[i] = rope_angles(p, ps, __ldg(inv_freq + i));
    __syncthreads();
    pdl_start();
    // (head, pair) jobs of this row, spread over the blockIdx.y blocks of the row
    const int heads = n_heads + n_kv_heads;
    const int first = blockIdx.y * blockDim.x + threadIdx.x, stride = gridDim.y * blockDim.x;
    for (int j = first; j < heads * half; j += stride) {
        const int h = j / half, i = j - h * half;
        const bool is_q = h < n_heads;
        const float* src = is_q ? q + ((size_t)t * n_heads + h) * head_dim
                                : k + ((size_t)t * n_kv_heads + (h - n_heads)) * head_dim;
        float* dst = is_q ? q_out + ((size_t)t * n_heads + h) * head_dim
                          : k_out + ((size_t)t * n_kv_heads + (h - n_heads)) * head_dim;
        const int ia = NEOX ? i : 2 * i;
        const int ib = NEOX ? i + half : 2 * i + 1;
        const float a = src[ia], b = src[ib];
        const float c = cs[i].x, s = cs[i].y;
        const float2 r = rotate(a, b, c, s);
        dst[ia] = r.x;
        dst[ib] = r.y;
        if (!is_q && k_st != nullptr) {
            const size_t o = ((size_t)t * n_kv_heads + (h - n_heads)) * head_dim;
            k_st[o + ia] = __float2half_rn(r.x);
            k_st[o + ib] = __float2half_rn(r.y);
        }
        if (is_q) {
            float* dsts = qs_out + ((size_t)t * n_heads + h) * head_dim;
            const float2 r2 = rotate(a, b, cs[i].z, cs[i].w);
            dsts[ia] = r2.x;
            dsts[ib] = r2.y;
        }
    }
    const int rest = head_dim - n_rot;
    if (rest > 0) {
        for (int j = first; j < heads * rest; j += stride) {
            const int h = j / rest, d = n_rot + (j - h * rest);
            if (h < n_heads) {
                const size_t o = ((size_t)t * n_heads + h) * head_dim + d;
                q_out[o] = q[o];
                qs_out[o] = q[o];
            } else {
                const size_t o = ((size_t)t * n_kv_heads + (h - n_heads)) * head_dim + d;
                k_out[o] = k[o];
                if (k_st != nullptr) k_st[o] = __float2half_rn(k[o]);
            }
        }
    }
    if (k_st != nullptr) {
        const size_t row = (size_t)t * n_kv_heads * head_dim;
        for (int j = first; j < n_kv_heads * head_dim; j += stride) v_st[row + j] = __float2half_rn(v[row + j]);
    }
}

#define ROPE_QK_ARGS                                                                                          \
    const float *__restrict__ q, const float *__restrict__ k, float *__restrict__ q_out,                        \
        float *__restrict__ qs_out, float *__restrict__ k_out, const int *__restrict__ pos,                    \
        const double *__restrict__ inv_freq, int n_heads, int n_kv_heads, int head_dim, int n_rot, int max_positions, \
        const float *__restrict__ v, __half *__restrict__ k_st, __half *__restrict__ v_st

extern "C" __global__ void rope_qk_f32(ROPE_QK_ARGS) {
    rope_qk_row<false>(q, k, q_out, qs_out, k_out, pos, inv_freq, n_heads, n_kv_heads, head_dim, n_rot, max_positions,
                       v, k_st, v_st);
}

extern "C" __global__ void rope_qk_neox_f32(ROPE_QK_ARGS) {
    rope_qk_row<true>(q, k, q_out, qs_out, k_out, pos, inv_freq, n_heads, n_kv_heads, head_dim, n_rot, max_positions,
                      v, k_st, v_st);
}

extern "C" __global__ void rope_table_f32(const int* __restrict__ pos, const double* __restrict__ inv_freq,
                                          float4* __restrict__ table, int half, int max_positions) {
    pdl_start();
    const int t = blockIdx.x;
    const int p = pos[t];
    const int ps = p > max_positions - 1 ? max_positions - 1 : p;
    for (int i = threadIdx.x; i < half; i += blockDim.x) table[(size_t)t * half + i] = rope_angles(p, ps, inv_freq[i]);
}
