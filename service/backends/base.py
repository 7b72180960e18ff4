"""The Backend protocol: the op vocabulary the llama forward pass is written against.

Every op exists in the NumPy reference backend (`numpy_backend.py`, plain float32) and in the CUDA backend
(`cuda_backend.py`, kernels in `kernels/*.cu` with `extern "C"` entries named like the op). Tensors are
backend-owned handles (NumPy arrays for the reference, device buffers for CUDA); the forward pass never looks
inside them, it only passes them from op to op and finally asks for logits on the host.

A step works on a *flat batch*: the new tokens of several sequences concatenated, T rows in all, each
sequence contributing `n_new` consecutive rows (a prefill chunk or one decode token).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from service.backends.kv_layout import KVLayout


@dataclass(frozen=True)
class SeqChunk:
    """One sequence's part of a step."""

    slot: int  # KV cache slot
    n_cached: int  # tokens of this sequence already appended (= absolute position of its first new token)
    n_new: int  # new tokens in this step (rows in the flat batch)
    want_logits: bool = True  # return logits for the last new token


@dataclass(frozen=True)
class StepBatch:
    """Everything a forward step needs, on the host. Backends copy what they need to the device."""

    token_ids: np.ndarray  # (T,) int32: new tokens of all sequences, concatenated
    seqs: tuple[SeqChunk, ...]
    max_positions: int  # KV ring size (for sink-query positions)

    def __post_init__(self) -> None:
        assert self.token_ids.shape == (sum(s.n_new for s in self.seqs),), "token_ids must match the chunks"

    @property
    def n_tokens(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def row_starts(self) -> np.ndarray:
        """(S + 1,) row offset of each sequence in the flat batch."""
        return np.concatenate([[0], np.cumsum([s.n_new for s in self.seqs])]).astype(np.int32)

    @property
    def positions(self) -> np.ndarray:
        """(T,) absolute position of every row."""
        return np.concatenate([np.arange(s.n_cached, s.n_cached + s.n_new) for s in self.seqs]).astype(np.int32) \
            if self.seqs else np.zeros(0, np.int32)

    @property
    def sink_positions(self) -> np.ndarray:
        """(T,) the row's position within the cache, used to score attention sinks: min(p, max_positions - 1)."""
        return np.minimum(self.positions, self.max_positions - 1).astype(np.int32)

    @property
    def logits_rows(self) -> np.ndarray:
        """(S',) rows whose logits are returned: the last new row of each sequence that wants logits."""
        ends = self.row_starts[1:] - 1
        return np.array([e for e, s in zip(ends, self.seqs) if s.want_logits], dtype=np.int32)


@dataclass
class MemoryRecord:
    """One accounted allocation (for MemoryStats)."""

    category: str  # "weights" | "kv" | "activations" | "pinned_host" | "context"
    name: str  # tensor name, e.g. "blk.3.attn_q.weight", or a workspace name
    nbytes: int
    layer: int | None = None  # transformer block, or None for global (embeddings, head, workspaces)
    ggml_type: str | None = None  # for weights
    device: bool = True  # False for host memory (NumPy backend, pinned staging)


@runtime_checkable
class Backend(Protocol):
    """The op vocabulary. Shapes are given per op; T = rows of the flat batch."""

    name: str  # "numpy" | "cuda"

    # -- set-up ------------------------------------------------------------------------------------
    def load_weight(self, tensor: Any, layer: int | None = None) -> Any:
        """Upload one GGUF tensor (`service.model.gguf_file.QTensor`); quantized weights stay quantized on a GPU."""

    def alloc_kv(self, layout: KVLayout) -> Any:
        """Allocate the whole KV arena once (no allocation per step)."""

    def begin_step(self, batch: StepBatch) -> Any:
        """Stage the step's per-row inputs (token ids, positions, slots) where the ops read them."""

    # -- ops (the forward pass calls exactly these) ------------------------------------------------
    def embedding(self, table: Any, step: Any) -> Any:
        """(T, dim): rows of `table` for the step's token ids, dequantized."""

    def rms_norm(self, x: Any, weight: Any, eps: float) -> Any:
        """(T, D): x / sqrt(mean(x^2) + eps) * weight."""

    def matmul(self, x: Any, w: Any) -> Any:
        """(T, N) = x (T, K) @ w.T with w (N, K) in its stored (possibly quantized) type."""

    def rope(self, x: Any, step: Any, n_heads: int, rope: Any, sink: bool = False) -> Any:
        """(T, n_heads * head_dim): rotate each head at the step's positions (sink=True: sink positions)."""

    def attention(self, q: Any, q_sink: Any, k: Any, v: Any, kv: Any, layer: int, step: Any,
                  n_heads: int, n_kv_heads: int) -> Any:
        """(T, n_heads * head_dim): causal GQA attention of each sequence's rows over its cached K/V plus
        the step's new K/V (k, v: (T, n_kv_heads * head_dim), already rotated), then append k, v to the ring.
        Sink keys are scored with q_sink, window keys with q (see kv_layout.attention_mask)."""

    def silu_mul(self, gate: Any, up: Any) -> Any:
        """(T, F): silu(gate) * up."""

    def add(self, a: Any, b: Any) -> Any:
        """(T, D): a + b."""

    def take_rows(self, x: Any, step: Any) -> Any:
        """(S', D): the step's logits rows of x (the last new row of each sequence wanting logits)."""

    def to_host(self, x: Any) -> np.ndarray:
        """Copy a tensor to a float32 NumPy array (logits)."""

    # -- accounting --------------------------------------------------------------------------------
    def memory_records(self) -> Sequence[MemoryRecord]:
        """Every allocation this backend made, for MemoryStats."""

    def device_info(self) -> dict[str, Any]:
        """{"device": name, "total_bytes": int | None, "free_bytes": int | None, ...} (driver's view on a GPU)."""


@dataclass
class WeightRecorder:
    """Small helper backends use to account their allocations."""

    records: list[MemoryRecord] = field(default_factory=list)

    def add(self, *args: Any, **kwargs: Any) -> MemoryRecord:
        rec = MemoryRecord(*args, **kwargs)
        self.records.append(rec)
        return rec
