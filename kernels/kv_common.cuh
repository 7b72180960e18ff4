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

// Where the step's staged K/V row t goes in the ring of its sequence (ring_row, into slots * max_positions rows);
// false when a later row of the same chunk overwrites that ring entry (only sinks and the last `window` land).
__device__ __forceinline__ bool append_ring_row(const StepMeta& meta, int t, int sinks, int window,
                                                int max_positions, size_t& ring_row) {
    const int s = meta.row_seq[t];
    const int c = meta.seq_ncached[s];
    const int r0 = meta.seq_row0[s];
    const int n_new = meta.seq_row0[s + 1] - r0;
    const int n = c + (t - r0);
    if (!(n < sinks || n >= c + n_new - window)) return false;
    ring_row = (size_t)meta.seq_slot[s] * max_positions + ring_index(n, sinks, window);
    return true;
}

// A wrapped ring's (c > max_positions) newest entry: the ring index of token c - 1.
__device__ __forceinline__ int ring_newest(int c, int sinks, int window) { return sinks + (c - 1 - sinks) % window; }

// Absolute position of the entry in ring slot j after c tokens were appended (j < min(c, max_positions)).
__device__ __forceinline__ int ring_position(int j, int c, int sinks, int window, int max_positions) {
    if (c <= max_positions || j < sinks) return j;
    int back = ring_newest(c, sinks, window) - j;
    if (back < 0) back += window;
    return c - 1 - back;
}

// Key splits a row of nk keys uses out of the n_splits of split-K attention's grid (sized for the longest context
// the step could have): at least split_keys keys each (CudaBackend.split_keys), so a short context is not spread
// thin (each split beyond one costs the merge of partial states); but from half_from keys on (0: never) at least
// half the grid, whose blocks would otherwise idle (CudaBackend.split_half_from).
__device__ __forceinline__ int active_splits(int nk, int n_splits, int split_keys, int half_from) {
    const int by_keys = (nk + split_keys - 1) / split_keys;
    const int least = half_from > 0 && nk >= half_from ? (n_splits + 1) / 2 : 1;
    return max(1, min(n_splits, max(by_keys, least)));
}

// The ring's int8 format of 8 values a lane holds, 4 consecutive lanes (aligned) holding a 32-value block: the values
// kv_store.cu's q8_block computes one value per lane (scale = half(max|x| / 127), q = rint(x / scale) clamped to
// +-127). Returns the block's scale. The lanes in `mask` (whole aligned groups of 4 among them) call it together.
__device__ __forceinline__ __half q8_encode8(const float v[8], signed char q[8], unsigned mask) {
    float amax = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) amax = fmaxf(amax, fabsf(v[e]));
    amax = fmaxf(amax, __shfl_xor_sync(mask, amax, 1));
    amax = fmaxf(amax, __shfl_xor_sync(mask, amax, 2));
    const __half sh = __float2half_rn(amax / 127.0f);
    const float sf = __half2float(sh);
    const float inv = sf > 0.f ? 1.0f / sf : 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) q[e] = (signed char)fminf(fmaxf(rintf(v[e] * inv), -127.f), 127.f);
    return sh;
}
