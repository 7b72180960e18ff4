// Asynchronous global -> shared copies (cp.async, Ampere and later): issued like loads, landing in shared memory
// without passing through registers, tracked in commit groups per thread.
//   cp_async<B>(dst, src[, src_bytes])  B = 4, 8 or 16 bytes; src_bytes < B zero-fills the rest (16 only)
//   cp_async_commit()                   closes the thread's current group
//   cp_async_wait<N>()                  returns once at most N of the thread's groups are still in flight; the
//                                       thread's own copies before that are then visible to it (other threads'
//                                       need a barrier as well)
#pragma once
#include <cstdint>

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

template <int B>
__device__ __forceinline__ void cp_async(void* dst, const void* src) {
    static_assert(B == 4 || B == 8 || B == 16, "cp.async copies 4, 8 or 16 bytes");
    if (B == 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(dst)), "l"(src) : "memory");
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(smem_addr(dst)), "l"(src), "n"(B) : "memory");
}

// 16 bytes, of which the first src_bytes come from src and the rest are zeros (src_bytes 0: src is not read)
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes = 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
