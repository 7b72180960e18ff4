// Asynchronous global -> shared copies (cp.async, Ampere and later): issued like loads, landing in shared memory
// without passing through registers, tracked in commit groups per thread.
//   cp_async<B>(dst, src[, src_bytes])  B = 4, 8 or 16 bytes; src_bytes < B zero-fills the rest (16 only)
//   cp_async_commit()                   closes the thread's current group
//   cp_async_wait<N>()                  returns once at most N of the thread's groups are still in flight; the
//                                       thread's own copies before that are then visible to it (other threads'
//                                       need a barrier as well)
// and the bulk-copy engine's (cp.async.bulk, Hopper): one thread copies a contiguous range, counted off an mbarrier
// in shared memory that completes a phase once the bytes it expects have landed (bulk_*, below).
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

__device__ __forceinline__ void bulk_init(uint64_t* bar) {  // one arrival per phase (the copy's issuer)
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_addr(bar)) : "memory");
}

// bar's current phase completes once `bytes` more have landed (the copies below count them off)
__device__ __forceinline__ void bulk_expect(uint64_t* bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}

// copy `bytes` (a multiple of 16, both addresses 16-byte aligned) to shared memory, counted off bar's expected bytes
__device__ __forceinline__ void bulk_copy_only(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 ::"r"(smem_addr(dst)), "l"(src), "r"(bytes), "r"(smem_addr(bar)) : "memory");
}

// one copy that completes bar's current phase
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
    bulk_expect(bar, bytes);
    bulk_copy_only(dst, src, bytes, bar);
}

__device__ __forceinline__ void bulk_wait(uint64_t* bar, uint32_t parity) {  // until phase `parity` completes
    asm volatile("{\n\t.reg .pred done;\n\tWAIT:\n\t"
                 "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n\t"
                 "@!done bra WAIT;\n\t}" ::"r"(smem_addr(bar)), "r"(parity) : "memory");
}
