"""KV cache layout shared by every backend: storage shapes, ring indexing and the attention visibility rule.

    K[layer], V[layer]: (slots, max_positions, n_kv_heads, head_dim)   f16, or int8 + one f16 scale per 32 values

A sequence owns one slot. Its n-th token (n counts every token ever appended) is stored at

    index(n) = n                                        if n < sink_tokens   (attention sinks, kept forever)
             = sink_tokens + (n - sink_tokens) % window   otherwise           (the circular window)

with window = max_positions - sink_tokens. Keys are stored rotated at their absolute position; sink keys are
scored with the query rotated at its cache-order position min(p, max_positions - 1) (see engine/kv_cache.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Q8_BLOCK = 32  # values per int8 scale block


@dataclass(frozen=True)
class KVLayout:
    n_layers: int
    slots: int
    max_positions: int
    sink_tokens: int
    n_kv_heads: int
    head_dim: int
    dtype: str = "f16"  # f16 | q8

    def __post_init__(self) -> None:
        assert self.dtype in ("f16", "q8"), self.dtype
        assert 0 <= self.sink_tokens < self.max_positions
        if self.dtype == "q8":
            assert self.head_dim % Q8_BLOCK == 0, "q8 KV needs head_dim % 32 == 0"

    @property
    def window(self) -> int:
        return self.max_positions - self.sink_tokens

    @property
    def bytes_per_token_layer(self) -> int:
        """K + V bytes for one token in one layer."""
        values = self.n_kv_heads * self.head_dim
        per_tensor = 2 * values if self.dtype == "f16" else values + 2 * (values // Q8_BLOCK)
        return 2 * per_tensor

    @property
    def bytes_per_layer(self) -> int:
        return self.slots * self.max_positions * self.bytes_per_token_layer

    @property
    def total_bytes(self) -> int:
        return self.n_layers * self.bytes_per_layer

    def index(self, n: np.ndarray | int) -> np.ndarray | int:
        """Storage index of the n-th token of a sequence (vectorized)."""
        s = self.sink_tokens
        return np.where(np.asarray(n) < s, n, s + (np.asarray(n) - s) % self.window) if isinstance(n, np.ndarray) \
            else (n if n < s else s + (n - s) % self.window)

    def valid(self, n_seen: int) -> int:
        return min(n_seen, self.max_positions)

    def valid_token_numbers(self, n_seen: int) -> np.ndarray:
        """(valid,) absolute token numbers held after n_seen appends, in cache order (sinks, then oldest->newest)."""
        if n_seen <= self.max_positions:
            return np.arange(n_seen, dtype=np.int64)
        return np.concatenate([np.arange(self.sink_tokens, dtype=np.int64),
                               np.arange(n_seen - self.window, n_seen, dtype=np.int64)])

    @classmethod
    def for_budget(cls, budget_bytes: int, **kw: int | str) -> "KVLayout":
        """As many slots as fit in `budget_bytes` (at least one)."""
        probe = cls(slots=1, **kw)  # type: ignore[arg-type]
        slots = max(1, budget_bytes // probe.total_bytes)
        return cls(slots=int(slots), **kw)  # type: ignore[arg-type]


def attention_mask(layout: KVLayout, key_positions: np.ndarray, query_positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which keys each query sees, split into sink and window keys.

    key_positions: (n_keys,) absolute positions; query_positions: (n_q,) absolute positions.
    Returns (sink_mask, window_mask), each (n_q, n_keys) bool. A key is a sink if its position < sink_tokens;
    a window key is visible if p - window < pos <= p. Causality: pos <= p for both.
    """
    k = key_positions[None, :]  # (1, n_keys)
    p = query_positions[:, None]  # (n_q, 1)
    causal = k <= p
    is_sink = k < layout.sink_tokens
    sink = causal & is_sink
    window = causal & ~is_sink & (k > p - layout.window)
    return sink, window
