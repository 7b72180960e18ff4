// KV store: turn the step's new K/V rows into the cache's storage format, and append them to the ring.
//
//   kv_stage_f16(k, v, k_st, v_st, n):   k_st = half(k), v_st = half(v)    (round to nearest even)
//   kv_stage_q8(k, v, kq, vq, ks, vs, n_blocks):  per 32 values: scale = half(amax / 127),
//        q = clamp(rint(x * (1 / float(scale))), -127, 127)   (NumPy's quantize_q8_rows bit for bit)
//   kv_append(...): for each row t of sequence s, token number n = ncached[s] + (t - row0[s]) survives if
//        n < sinks or n >= ncached[s] + n_new[s] - window, and its staged row is copied to
//        ring[slot[s], index(n)]. gridDim.y picks the tensor: 0 K values, 1 V values, 2 K scales, 3 V scales.
// Staging rows have the ring's row format, so attention reads new keys from staging and old keys from the
// ring with one decoder. Launch: stage f16: grid-stride, block 256 over n values; stage q8: one warp per
// 32-value block, block 256; append: grid (T, n_tensors), block 128, words = 4 bytes.
#include "kv_common.cuh"
#include "pdl.cuh"

extern "C" __global__ void kv_stage_f16(const float* __restrict__ k, const float* __restrict__ v,
                                        __half* __restrict__ k_st, __half* __restrict__ v_st, int n) {
    pdl_start();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        k_st[i] = __float2half_rn(k[i]);
        v_st[i] = __float2half_rn(v[i]);
    }
}

__device__ __forceinline__ void q8_block(const float* __restrict__ x, signed char* __restrict__ q,
                                         __half* __restrict__ scale, int b, int lane) {
    const float val = x[(size_t)b * Q8_BLOCK + lane];
    float amax = fabsf(val);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const __half sh = __float2half_rn(amax / 127.0f);
    const float sf = __half2float(sh);
    const float inv = sf > 0.f ? 1.0f / sf : 0.f;
    float r = rintf(val * inv);
    r = fminf(fmaxf(r, -127.f), 127.f);
    q[(size_t)b * Q8_BLOCK + lane] = (signed char)r;
    if (lane == 0) scale[b] = sh;
}

extern "C" __global__ void kv_stage_q8(const float* __restrict__ k, const float* __restrict__ v,
                                       signed char* __restrict__ kq, signed char* __restrict__ vq,
                                       __half* __restrict__ ks, __half* __restrict__ vs, int n_blocks) {
    pdl_start();
    const int lane = threadIdx.x & 31;
    const int warps = (gridDim.x * blockDim.x) >> 5;
    for (int b = (blockIdx.x * blockDim.x + threadIdx.x) >> 5; b < n_blocks; b += warps) {
        q8_block(k, kq, ks, b, lane);
        q8_block(v, vq, vs, b, lane);
    }
}

extern "C" __global__ void kv_append(StepMeta meta, int sinks, int window, int max_positions,
                                     const unsigned* __restrict__ src0, unsigned* __restrict__ dst0, int words0,
                                     const unsigned* __restrict__ src1, unsigned* __restrict__ dst1,
                                     const unsigned* __restrict__ src2, unsigned* __restrict__ dst2, int words2,
                                     const unsigned* __restrict__ src3, unsigned* __restrict__ dst3) {
    pdl_start();
    const int t = blockIdx.x;
    size_t ring_row;
    if (!append_ring_row(meta, t, sinks, window, max_positions, ring_row)) return;  // overwritten in this chunk
    const unsigned* src;
    unsigned* dst;
    int words;
    switch (blockIdx.y) {
        case 0: src = src0; dst = dst0; words = words0; break;
        case 1: src = src1; dst = dst1; words = words0; break;
        case 2: src = src2; dst = dst2; words = words2; break;
        default: src = src3; dst = dst3; words = words2; break;
    }
    for (int w = threadIdx.x; w < words; w += blockDim.x) dst[ring_row * words + w] = src[(size_t)t * words + w];
}
