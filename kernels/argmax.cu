// Greedy decoding on the device: the first index of each row's maximum.
// x: (R, N) float32 row-major. Ties go to the lowest index (NumPy's argmax rule); NaN is never chosen over a number.
// Launch: grid (R), block 1024.
#include "pdl.cuh"

namespace {

constexpr int UNROLL = 8;  // loads of a thread in flight at once (a 32000-wide row at 1024 threads: 8 float4)

__device__ __forceinline__ void take(float v, int i, float& best, int& bi) {
    if (v > best) best = v, bi = i;  // strictly greater: visited in increasing index order, the first one stays
}

// The row's argmax, in thread 0 (0 when every value is NaN). Each thread visits its values in increasing index
// order with UNROLL loads issued before the first compare (a strided loop of single loads waits on each in turn).
__device__ int block_argmax(const float* __restrict__ row, int N) {
    __shared__ float s_val[32];
    __shared__ int s_idx[32];
    float best = -INFINITY;
    int bi = 0x7fffffff;
    if (N % 4 == 0 && (reinterpret_cast<size_t>(row) & 15) == 0) {  // float4 i = values 4i .. 4i + 3
        const float4* row4 = reinterpret_cast<const float4*>(row);
        const int n4 = N / 4;
        for (int base = threadIdx.x; base < n4; base += UNROLL * blockDim.x) {
            float4 v[UNROLL];
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const int i = base + u * blockDim.x;
                v[u] = i < n4 ? __ldg(row4 + i) : make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
            }
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const int i = 4 * (base + u * blockDim.x);
                take(v[u].x, i, best, bi), take(v[u].y, i + 1, best, bi);
                take(v[u].z, i + 2, best, bi), take(v[u].w, i + 3, best, bi);
            }
        }
    } else {
        for (int base = threadIdx.x; base < N; base += UNROLL * blockDim.x) {
            float v[UNROLL];
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const int i = base + u * blockDim.x;
                v[u] = i < N ? __ldg(row + i) : -INFINITY;
            }
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) take(v[u], base + u * blockDim.x, best, bi);
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > best || (ov == best && oi < bi)) best = ov, bi = oi;
    }
    if ((threadIdx.x & 31) == 0) s_val[threadIdx.x >> 5] = best, s_idx[threadIdx.x >> 5] = bi;
    __syncthreads();
    if (threadIdx.x < 32) {
        const int nw = blockDim.x >> 5;
        best = threadIdx.x < nw ? s_val[threadIdx.x] : -INFINITY;
        bi = threadIdx.x < nw ? s_idx[threadIdx.x] : 0x7fffffff;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, best, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ov > best || (ov == best && oi < bi)) best = ov, bi = oi;
        }
    }
    return bi == 0x7fffffff ? 0 : bi;
}

}  // namespace

// out[r] = argmax of row r
extern "C" __global__ void argmax_f32(const float* __restrict__ x, int* __restrict__ out, int N) {
    pdl_start();
    const int bi = block_argmax(x + (size_t)blockIdx.x * N, N);
    if (threadIdx.x == 0) out[blockIdx.x] = bi;
}

// The last kernel of a greedy decode step (CudaBackend.launch_greedy), one row per sequence: row r's token goes into
// ids[r] (the next step's input) and, with the step's serial number, into the host-mapped ring (ring_len, stride)
// int2 at [serial[r] % ring_len][r] = (serial[r], token), where the host reads it once the step is done; then the
// row's staged position, its sequence's cached count and the serial advance by one, so that a step following this
// one needs no new staging from the host (CudaBackend.begin_step).
extern "C" __global__ void argmax_step_f32(const float* __restrict__ x, int* __restrict__ ids, int N,
                                           int* __restrict__ pos, int* __restrict__ ncached,
                                           int* __restrict__ serial, int2* ring, int ring_len, int stride) {
    pdl_start();
    const int bi = block_argmax(x + (size_t)blockIdx.x * N, N);
    if (threadIdx.x == 0) {
        const int r = blockIdx.x, n = serial[r];
        ids[r] = bi;
        ring[(size_t)(n % ring_len) * stride + r] = make_int2(n, bi);
        pos[r] += 1;
        ncached[r] += 1;
        serial[r] = n + 1;
    }
}
