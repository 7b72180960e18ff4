// Programmatic dependent launch (Hopper): how every kernel starts.
//
// A decode step is one CUDA graph of ~500 dependent kernels. cuda_runtime.CudaGraph turns its kernel->kernel edges
// into programmatic ones, so kernel N+1 is launched (blocks resident, prologue run) while kernel N still runs,
// instead of after N's completion reaches the front end. The contract that makes that safe, kept by every kernel:
//   pdl_wait()     before the first read of anything an earlier kernel wrote and before the first write: it returns
//                  once the preceding grid has completed and its writes are visible (and so, transitively, every
//                  earlier grid). Before it a kernel may only read what no kernel of the step writes, or what a
//                  kernel two or more launches earlier wrote (complete: the kernel in between passed its own wait
//                  before this one could start): weights (matmul_dec), the step metadata (staged by the host, or
//                  advanced by the step before's last kernel), the KV ring's entries of earlier steps and the step's
//                  rope angle table (attention_split).
//   pdl_trigger()  after pdl_wait(): lets the next kernel's launch begin now rather than at this grid's exit.
// Launched without a programmatic edge (eager steps, tests), both are no-ops.
#pragma once

__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_trigger() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Both, at the top of a kernel that reads no weights before its inputs.
__device__ __forceinline__ void pdl_start() {
    pdl_wait();
    pdl_trigger();
}
