// Embedding lookup: out (n_rows, K) f32 = dequantize(W[ids[r], :]) for W in any upload layout of
// quant_blocks.cuh (token embeddings stay quantized on the device). ids int32 (n_rows,) in device memory
// (so a captured decode step reads the step's token ids); ids outside [0, N) give a row of zeros.
//
// Launch shape: 128 threads, one thread per 32-value chunk (T::load_c + dequant, 8 float4 stores);
// grid = (ceil(K/32 / 128), n_rows).
//   entry get_rows_<type>(q, s, h, N, K, ids, n_rows, out)
#include "quant_blocks.cuh"
#include "pdl.cuh"

template <class T>
__device__ __forceinline__ void get_rows_body(const WPtrs& w, const int* __restrict__ ids, int n_rows,
                                              float* __restrict__ out) {
    const int r = blockIdx.y;
    if (r >= n_rows) return;
    const int row = __ldg(ids + r);
    const int nch = w.K / 32;
    const int kc = blockIdx.x * blockDim.x + threadIdx.x;
    if (kc >= nch) return;
    float v[32];
    if (row >= 0 && row < w.N) {
        const typename T::C c = T::load_c(w, row, kc);
        Deq<T>::run(c, kc, v);
    } else {
#pragma unroll
        for (int i = 0; i < 32; ++i) v[i] = 0.f;
    }
    float4* o = reinterpret_cast<float4*>(out + (size_t)r * w.K + (size_t)kc * 32);
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] = make_float4(v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]);
}

#define GET_ROWS_ENTRY(suffix, T)                                                                              \
    extern "C" __global__ void __launch_bounds__(128) get_rows_##suffix(                                       \
        const uint8_t* q, const uint8_t* s, const uint8_t* h, int N, int K, const int* ids, int n_rows,        \
        float* out) { pdl_start();                                                                             \
        const WPtrs w{q, s, h, N, K};                                                                          \
        get_rows_body<T>(w, ids, n_rows, out);                                                                 \
    }
FOR_EACH_WTYPE(GET_ROWS_ENTRY)
