"""StreamingKVCache: a bounded per-sequence ring of K/V with StreamingLLM attention sinks.

Layout (shared by every backend; the NumPy backend keeps it in host arrays, CUDA in one device arena):

    K[layer], V[layer]: (slots, max_positions, n_kv_heads, head_dim)   f16, or int8 + f16 scale per 32 values

A sequence owns one slot. Its n-th token (n counts every token ever appended) is stored at

    index(n) = n                                  if n < sink_tokens       (attention sinks, kept forever)
             = sink_tokens + (n - sink_tokens) % window   otherwise         (the circular window)

with window = max_positions - sink_tokens, so append is O(1) and memory is fixed. The valid entries are
the sinks plus the last `window` tokens: valid_positions = min(n_seen, max_positions).

Positions within the cache (StreamingLLM): keys are stored rotated at their absolute position. Window keys
are contiguous, so query-to-window distances equal cache-order distances already; sink keys are scored with
the query rotated at its cache-order position instead, min(p, max_positions - 1). Attention therefore only
ever sees distances < max_positions, and generation stays coherent past the window.

This module owns the bookkeeping: slot allocation, per-slot token counts and the byte accounting that
MemoryStats reports. The storage itself is the backend's arena (`Backend.alloc_kv`).
"""

from __future__ import annotations

import threading

import numpy as np

from service.backends.kv_layout import KVLayout
from service.errors import OverloadedError


class StreamingKVCache:
    """Slot allocator + per-slot token counts + accounting over a backend arena. Thread-safe."""

    def __init__(self, layout: KVLayout, arena: object | None = None):
        self.layout = layout
        self.arena = arena  # backend storage (None in pure bookkeeping tests)
        self._lock = threading.Lock()
        self._free = list(range(layout.slots - 1, -1, -1))  # pop() hands out slot 0 first
        self._n_seen = np.zeros(layout.slots, dtype=np.int64)  # (slots,) tokens appended per slot
        self._in_use = np.zeros(layout.slots, dtype=bool)  # (slots,)

    # -- slots -------------------------------------------------------------------------------------
    def allocate(self) -> int:
        with self._lock:
            if not self._free:
                raise OverloadedError("KV cache has no free slot", retry_after_s=1.0)
            slot = self._free.pop()
            self._in_use[slot] = True
            self._n_seen[slot] = 0
            return slot

    def free(self, slot: int) -> None:
        with self._lock:
            if not self._in_use[slot]:
                return
            self._in_use[slot] = False
            self._n_seen[slot] = 0
            self._free.append(slot)

    @property
    def free_slots(self) -> int:
        return len(self._free)

    @property
    def slots_in_use(self) -> int:
        return int(self._in_use.sum())

    # -- positions ---------------------------------------------------------------------------------
    def n_seen(self, slot: int) -> int:
        return int(self._n_seen[slot])

    def valid_positions(self, slot: int) -> int:
        return self.layout.valid(int(self._n_seen[slot]))

    def advance(self, slot: int, n_tokens: int) -> None:
        """Record that the backend appended n_tokens to this slot (O(1))."""
        assert self._in_use[slot], f"slot {slot} is not allocated"
        self._n_seen[slot] += n_tokens

    # -- accounting (MemoryStats) ------------------------------------------------------------------
    def bytes_in_use_per_layer(self) -> int:
        valid = np.minimum(self._n_seen[self._in_use], self.layout.max_positions)
        return int(valid.sum()) * self.layout.bytes_per_token_layer

    def per_layer(self) -> list[dict]:
        """MemoryStats rows: one per layer (the arena is uniform across layers)."""
        allocated, in_use = self.layout.bytes_per_layer, self.bytes_in_use_per_layer()
        return [{"layer": i, "bytes_allocated": allocated, "bytes_in_use": in_use, "slots_in_use": self.slots_in_use}
                for i in range(self.layout.n_layers)]

    def stats(self) -> dict:
        lay = self.layout
        return {
            "slots_total": lay.slots,
            "slots_in_use": self.slots_in_use,
            "max_positions": lay.max_positions,
            "sink_tokens": lay.sink_tokens,
            "dtype": lay.dtype,
            "bytes_allocated_per_layer": lay.bytes_per_layer,
            "bytes_in_use_per_layer": self.bytes_in_use_per_layer(),
            "bytes_allocated": lay.total_bytes,
            "bytes_in_use": lay.n_layers * self.bytes_in_use_per_layer(),
            "slot_positions": {int(s): int(self._n_seen[s]) for s in np.flatnonzero(self._in_use)},
        }
