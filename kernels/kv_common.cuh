// Shared by kv_store.cu and attention.cu: the per-step metadata and the KV ring's indexing.
//
// Per-step device buffers (int32, written once per step from pinned staging):
//   row_seq[T]      sequence index s of each row of the flat batch
//   seq_slot[S]     KV slot of sequence s
//   seq_ncached[S]  tokens already in the cache for s (= absolute position of its first new row)
//   seq_row0[S+1]   first row of s in the flat batch (prefix sums of n_new)
// Ring (per layer, per tensor K or V): (slots, max_positions, kv_dim) values, f16 or int8; for int8 also
// (slots, max_positions, kv_dim / 32) f16 scales. Token number n of a slot lives at
//   index(n) = n < sinks ? n : sinks + (n - sinks) % window,   window = max_positions - sinks.
#pragma once
#include <cuda_fp16.h>

#define Q8_BLOCK 32

struct StepMeta {
    const int* row_seq;
    const int* seq_slot;
    const int* seq_ncached;
    const int* seq_row0;
};

__device__ __forceinline__ int ring_index(int n, int sinks, int window) {
    return n < sinks ? n : sinks + (n - sinks) % window;
}

// Absolute position of the entry in ring slot j after c tokens were appended (j < min(c, max_positions)).
__device__ __forceinline__ int ring_position(int j, int c, int sinks, int window, int max_positions) {
    if (c <= max_positions || j < sinks) return j;
    const int last = sinks + (c - 1 - sinks) % window;  // ring index of token c - 1
    int back = last - j;
    if (back < 0) back += window;
    return c - 1 - back;
}
