"""NumPy reference backend: every Backend op in plain float32, obviously right, on the host.

Weights are dequantized once at load into float32 (the reference keeps no quantized arithmetic). The KV
arena is host arrays in the shared layout (`kv_layout.py`), f16 or block-scaled int8.

Batch invariance: a row's result never depends on what else is in the batch. Matrix products are done one
row at a time (`w @ x[i]`, BLAS gemv): OpenBLAS picks different kernels, with different rounding, for
different numbers of rows, so a single gemm over the batch would not be invariant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from service.backends.base import MemoryRecord, StepBatch, WeightRecorder
from service.backends.kv_layout import Q8_BLOCK, KVLayout, attention_mask
from service.model.dequant import dequantize


@dataclass
class NumpyStep:
    batch: StepBatch
    positions: np.ndarray  # (T,) int32
    sink_positions: np.ndarray  # (T,) int32
    row_starts: np.ndarray  # (S + 1,) int32
    logits_rows: np.ndarray  # (S',) int32


def quantize_q8_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Block-scaled int8 (the q8 KV format): x (..., D) -> (int8 (..., D), f16 scales (..., D // 32))."""
    blocks = x.reshape(*x.shape[:-1], x.shape[-1] // Q8_BLOCK, Q8_BLOCK).astype(np.float32)  # (..., D/32, 32)
    amax = np.abs(blocks).max(axis=-1)  # (..., D/32)
    scale = (amax / 127.0).astype(np.float16)
    inv = np.divide(1.0, scale.astype(np.float32), out=np.zeros_like(amax), where=scale > 0)
    q = np.clip(np.rint(blocks * inv[..., None]), -127, 127).astype(np.int8)
    return q.reshape(x.shape), scale


def dequantize_q8_rows(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    blocks = q.reshape(*q.shape[:-1], q.shape[-1] // Q8_BLOCK, Q8_BLOCK).astype(np.float32)  # (..., D/32, 32)
    return (blocks * scale.astype(np.float32)[..., None]).reshape(q.shape)


class NumpyKVArena:
    """Host storage for the KV ring: per layer (slots, max_positions, n_kv_heads, head_dim)."""

    def __init__(self, layout: KVLayout):
        self.layout = layout
        shape = (layout.slots, layout.max_positions, layout.n_kv_heads, layout.head_dim)
        if layout.dtype == "f16":
            self.k = [np.zeros(shape, np.float16) for _ in range(layout.n_layers)]
            self.v = [np.zeros(shape, np.float16) for _ in range(layout.n_layers)]
        else:
            sshape = shape[:-1] + (layout.head_dim // Q8_BLOCK,)
            self.k = [np.zeros(shape, np.int8) for _ in range(layout.n_layers)]
            self.v = [np.zeros(shape, np.int8) for _ in range(layout.n_layers)]
            self.k_scale = [np.zeros(sshape, np.float16) for _ in range(layout.n_layers)]
            self.v_scale = [np.zeros(sshape, np.float16) for _ in range(layout.n_layers)]

    @property
    def nbytes(self) -> int:
        return self.layout.total_bytes

    def round_trip(self, x: np.ndarray) -> np.ndarray:
        """What storing then reading back gives: x (n, kvh, hd) float32 -> float32."""
        if self.layout.dtype == "f16":
            return x.astype(np.float16).astype(np.float32)
        return dequantize_q8_rows(*quantize_q8_rows(x))

    def write(self, layer: int, slot: int, first: int, k: np.ndarray, v: np.ndarray) -> None:
        """Append tokens first .. first+n-1 (k, v: (n, kvh, hd)). Only tokens that survive are written."""
        lay = self.layout
        n = k.shape[0]
        numbers = np.arange(first, first + n)
        keep = (numbers < lay.sink_tokens) | (numbers >= first + n - lay.window)
        idx = lay.index(numbers[keep])
        if lay.dtype == "f16":
            self.k[layer][slot, idx] = k[keep]
            self.v[layer][slot, idx] = v[keep]
        else:
            self.k[layer][slot, idx], self.k_scale[layer][slot, idx] = quantize_q8_rows(k[keep])
            self.v[layer][slot, idx], self.v_scale[layer][slot, idx] = quantize_q8_rows(v[keep])

    def read(self, layer: int, slot: int, n_seen: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Valid entries in cache order: (k, v: (valid, kvh, hd) float32, positions: (valid,))."""
        numbers = self.layout.valid_token_numbers(n_seen)
        idx = self.layout.index(numbers)
        if self.layout.dtype == "f16":
            k = self.k[layer][slot, idx].astype(np.float32)
            v = self.v[layer][slot, idx].astype(np.float32)
        else:
            k = dequantize_q8_rows(self.k[layer][slot, idx], self.k_scale[layer][slot, idx])
            v = dequantize_q8_rows(self.v[layer][slot, idx], self.v_scale[layer][slot, idx])
        return k, v, numbers


class NumpyBackend:
    name = "numpy"
    # Prompt tokens per prefill chunk the engine uses by default: matmuls here are one gemv per row, so chunk size
    # costs no throughput, and short steps let cancels free slots and running streams decode between chunks
    # (a 504-token chunk is a ~5 s step on 2 cores).
    preferred_prefill_chunk = 64

    def __init__(self) -> None:
        self._mem = WeightRecorder()
        self._loaded: dict[int, np.ndarray] = {}  # id(raw data) -> dequantized, so a tied head is shared

    # -- set-up ------------------------------------------------------------------------------------
    def load_weight(self, tensor: Any, layer: int | None = None) -> np.ndarray:
        key = id(tensor.data)
        if key in self._loaded:
            return self._loaded[key]
        w = dequantize(tensor.data, tensor.ggml_type, tensor.shape)  # (rows, cols) float32
        self._loaded[key] = w
        self._mem.add("weights", tensor.name, int(w.nbytes), layer, tensor.type_name, device=False)
        return w

    def alloc_kv(self, layout: KVLayout) -> NumpyKVArena:
        arena = NumpyKVArena(layout)
        # the model holds one arena at a time (LlamaModel.alloc_kv replaces it): account only the live one
        self._mem.records = [r for r in self._mem.records if r.category != "kv"]
        for layer in range(layout.n_layers):
            self._mem.add("kv", f"blk.{layer}.kv", layout.bytes_per_layer, layer, layout.dtype, device=False)
        return arena

    def begin_step(self, batch: StepBatch) -> NumpyStep:
        return NumpyStep(batch, batch.positions, batch.sink_positions, batch.row_starts, batch.logits_rows)

    # -- ops ---------------------------------------------------------------------------------------
    def embedding(self, table: np.ndarray, step: NumpyStep) -> np.ndarray:
        return table[step.batch.token_ids]  # (T, dim)

    def rms_norm(self, x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
        ms = np.mean(x * x, axis=-1, keepdims=True)  # (T, 1)
        return (x / np.sqrt(ms + eps) * weight).astype(np.float32)  # (T, D)

    def matmul(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        out = np.empty((x.shape[0], w.shape[0]), np.float32)  # (T, N)
        for i in range(x.shape[0]):  # one gemv per row: batch invariant (see module doc)
            out[i] = w @ x[i]
        return out

    def rope(self, x: np.ndarray, step: NumpyStep, n_heads: int, rope: Any, sink: bool = False) -> np.ndarray:
        pos = step.sink_positions if sink else step.positions  # (T,)
        T = x.shape[0]
        h = x.reshape(T, n_heads, -1)  # (T, H, hd)
        angles = pos[:, None].astype(np.float64) * rope.inv_freq()[None, :]  # (T, n_rot/2)
        cos = np.cos(angles).astype(np.float32)[:, None, :]  # (T, 1, n_rot/2)
        sin = np.sin(angles).astype(np.float32)[:, None, :]
        out = h.copy()
        n = rope.n_rot
        if rope.mode == "normal":  # adjacent pairs (x0, x1), (x2, x3), ...
            a, b = h[..., 0:n:2], h[..., 1:n:2]
            out[..., 0:n:2] = a * cos - b * sin
            out[..., 1:n:2] = a * sin + b * cos
        else:  # neox: halves (x_i, x_{i + n/2})
            a, b = h[..., : n // 2], h[..., n // 2: n]
            out[..., : n // 2] = a * cos - b * sin
            out[..., n // 2: n] = a * sin + b * cos
        return out.reshape(T, -1)

    def attention(self, q: np.ndarray, q_sink: np.ndarray, k: np.ndarray, v: np.ndarray, kv: NumpyKVArena,
                  layer: int, step: NumpyStep, n_heads: int, n_kv_heads: int) -> np.ndarray:
        lay = kv.layout
        hd = lay.head_dim
        group = n_heads // n_kv_heads
        out = np.empty_like(q)  # (T, H * hd)
        for s, chunk in enumerate(step.batch.seqs):
            r0, r1 = int(step.row_starts[s]), int(step.row_starts[s + 1])
            k_new = kv.round_trip(k[r0:r1].reshape(-1, n_kv_heads, hd))  # (n, kvh, hd) as the cache stores it
            v_new = kv.round_trip(v[r0:r1].reshape(-1, n_kv_heads, hd))
            k_old, v_old, pos_old = kv.read(layer, chunk.slot, chunk.n_cached)  # (valid, kvh, hd)
            keys = np.concatenate([k_old, k_new])  # (n_keys, kvh, hd)
            vals = np.concatenate([v_old, v_new])
            key_pos = np.concatenate([pos_old, np.arange(chunk.n_cached, chunk.n_cached + chunk.n_new)])
            sink_mask, window_mask = attention_mask(lay, key_pos, step.positions[r0:r1])  # (n, n_keys)
            qw = q[r0:r1].reshape(-1, n_kv_heads, group, hd)  # (n, kvh, g, hd)
            qs = q_sink[r0:r1].reshape(-1, n_kv_heads, group, hd)
            scale = 1.0 / np.sqrt(hd)
            s_win = np.einsum("nkgd,mkd->kgnm", qw, keys) * scale  # (kvh, g, n, n_keys)
            s_sink = np.einsum("nkgd,mkd->kgnm", qs, keys) * scale
            scores = np.where(window_mask, s_win, np.where(sink_mask, s_sink, -np.inf))
            scores = scores - scores.max(axis=-1, keepdims=True)
            p = np.exp(scores)
            p /= p.sum(axis=-1, keepdims=True)
            o = np.einsum("kgnm,mkd->nkgd", p, vals)  # (n, kvh, g, hd)
            out[r0:r1] = o.reshape(r1 - r0, -1)
            kv.write(layer, chunk.slot, chunk.n_cached, k_new, v_new)
        return out

    def silu_mul(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        return (gate / (1.0 + np.exp(-gate)) * up).astype(np.float32)

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a + b

    def take_rows(self, x: np.ndarray, step: NumpyStep) -> np.ndarray:
        return x[step.logits_rows]

    def to_host(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float32)

    # -- accounting --------------------------------------------------------------------------------
    def memory_records(self) -> Sequence[MemoryRecord]:
        return list(self._mem.records)

    def device_info(self) -> dict[str, Any]:
        return {"device": "cpu (numpy)", "total_bytes": None, "free_bytes": None}
