// Shared device helpers for the matmul / get_rows / quantize_act kernels: the weight-pointer bundle,
// read-only 16-byte loads, byte extraction, warp reductions.
//
// WPtrs describes one uploaded weight matrix W (N rows = output features, K columns = input features) in
// the GPU layout of quant_blocks.cuh: `q` the quant region, `s` the scale region, `h` the high-bit region
// (each 256-byte aligned in one allocation; regions a type does not use are null).
#pragma once

#include <cuda_fp16.h>
#include <stdint.h>

struct WPtrs {
    const uint8_t* __restrict__ q;  // quants (per type: see quant_blocks.cuh)
    const uint8_t* __restrict__ s;  // scales (f16 / half2 per block) or null
    const uint8_t* __restrict__ h;  // high bits (u32 per 32-block, Q5_0/Q5_1) or null
    int N;                          // rows (output features)
    int K;                          // columns (input features)
};

// 16 bytes through the read-only path; p must be 16-byte aligned.
__device__ __forceinline__ int4 ld16(const void* p) { return __ldg(reinterpret_cast<const int4*>(p)); }

// Weight stream: read once per token, so don't let it evict the activations from L1.
__device__ __forceinline__ int4 ld16_stream(const void* p) {
    int4 r;
    asm("ld.global.nc.L1::no_allocate.v4.s32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}

__device__ __forceinline__ float ldh(const uint8_t* base, size_t i) {
    return __half2float(__ldg(reinterpret_cast<const __half*>(base) + i));
}

__device__ __forceinline__ float2 ldh2(const uint8_t* base, size_t i) {
    return __half22float2(__ldg(reinterpret_cast<const __half2*>(base) + i));
}

// int4 component by compile-time index (after unrolling) or run-time index (select, no local memory).
__device__ __forceinline__ int word(const int4& v, int i) {
    return i == 0 ? v.x : (i == 1 ? v.y : (i == 2 ? v.z : v.w));
}

// unsigned byte b (0..15) of a 16-byte vector
__device__ __forceinline__ uint32_t byte_of(const int4& v, int b) {
    return (static_cast<uint32_t>(word(v, b >> 2)) >> (8 * (b & 3))) & 0xFFu;
}

// float(q) for 0 <= q < 2^23 without an int-to-float conversion (a quarter-rate instruction on sm_90): q in the
// low mantissa bits of 2^23 is the float 2^23 + q, exactly; subtracting 2^23 (or 2^23 + bias) is exact too.
__device__ __forceinline__ float u2f(uint32_t q, float bias = 0.f) {
    return __int_as_float(0x4B000000u | q) - (8388608.f + bias);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
    return v;
}

__device__ __forceinline__ int dp4a(int a, int b, int c) { return __dp4a(a, b, c); }

// sum_i a_i * b_i over the 4 int8 lanes of each of the 4 words
__device__ __forceinline__ int dp4a4(int a0, int a1, int a2, int a3, const int4& b, int c) {
    c = __dp4a(a0, b.x, c);
    c = __dp4a(a1, b.y, c);
    c = __dp4a(a2, b.z, c);
    c = __dp4a(a3, b.w, c);
    return c;
}
