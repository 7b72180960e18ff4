"""Test helpers for the engine tests (no tests here): a tiny real llama GGUF written with the `gguf` package,
a byte-level tokenizer, and a fake model that checks the engine's StepBatch bookkeeping.

The tiny model is a real LlamaModel on the NumPy backend (random F32 weights written with gguf.GGUFWriter and
read back through service.model.gguf_file), so forward math is the product's own; only its size is small.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from service.backends.base import StepBatch
from service.backends.kv_layout import KVLayout
from service.model.gguf_file import LlamaHParams, RopeConfig

BYTE_VOCAB = 256
BOS_ID, EOS_ID = 256, 257


class ByteTokenizer:
    """Bytes are tokens 0..255; 256 = BOS, 257 = EOS (special); ids above 257 are multi-byte tokens made of
    two bytes each (so a UTF-8 character can be split across tokens in two ways)."""

    def __init__(self, vocab_size: int = 320):
        self.vocab_size = vocab_size
        self.bos_id, self.eos_id = BOS_ID, EOS_ID
        self.eos_ids = frozenset({EOS_ID})
        self.add_bos = False
        # pairs for ids 258..: deterministic two-byte tokens, including UTF-8 lead+continuation pairs
        rng = np.random.default_rng(0)
        self._pairs = {i: bytes(rng.integers(0x41, 0x7b, 2).tolist()) for i in range(258, vocab_size)}
        self._pairs[258] = "é".encode()  # a whole 2-byte character
        self._pairs[259] = b"\xe2\x82"  # the first 2 bytes of "€" (e2 82 ac)

    def encode(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return list(text.encode("utf-8"))

    def token_bytes(self, token_id: int) -> bytes:
        if token_id < BYTE_VOCAB:
            return bytes([token_id])
        return self._pairs.get(token_id, b"")

    def is_special(self, token_id: int) -> bool:
        return token_id in (BOS_ID, EOS_ID)

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return b"".join(self.token_bytes(i) for i in ids if not (skip_special and self.is_special(i))).decode(
            "utf-8", errors="replace")


def write_tiny_llama(path: str, seed: int = 0, vocab: int = 320, dim: int = 64, n_layers: int = 2,
                     n_heads: int = 4, n_kv_heads: int = 2, ffn: int = 96, context: int = 512) -> str:
    """A random-weight llama GGUF (F32) small enough to run hundreds of steps per second on the NumPy backend."""
    import gguf
    rng = np.random.default_rng(seed)
    hd = dim // n_heads
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(n_layers)
    w.add_context_length(context)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(ffn)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(vocab)

    def mat(rows: int, cols: int, scale: float) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)  # (rows, cols)

    w.add_tensor("token_embd.weight", mat(vocab, dim, 1.0))
    for i in range(n_layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", mat(n_heads * hd, dim, dim ** -0.5))
        w.add_tensor(f"blk.{i}.attn_k.weight", mat(n_kv_heads * hd, dim, dim ** -0.5))
        w.add_tensor(f"blk.{i}.attn_v.weight", mat(n_kv_heads * hd, dim, dim ** -0.5))
        w.add_tensor(f"blk.{i}.attn_output.weight", mat(dim, n_heads * hd, dim ** -0.5))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", mat(ffn, dim, dim ** -0.5))
        w.add_tensor(f"blk.{i}.ffn_up.weight", mat(ffn, dim, dim ** -0.5))
        w.add_tensor(f"blk.{i}.ffn_down.weight", mat(dim, ffn, ffn ** -0.5))
    w.add_tensor("output_norm.weight", np.ones(dim, np.float32))
    w.add_tensor("output.weight", mat(vocab, dim, 2.0 * dim ** -0.5))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tiny_llama(tmp_dir: str, seed: int = 0, **kw: int):
    """A LlamaModel on the NumPy backend from a freshly written tiny GGUF."""
    from service.backends.numpy_backend import NumpyBackend
    from service.model.gguf_file import open_gguf
    from service.model.llama import LlamaModel
    path = write_tiny_llama(os.path.join(tmp_dir, f"tiny-{seed}.gguf"), seed, **kw)
    return LlamaModel(open_gguf(path), NumpyBackend())


@dataclass
class FakeModel:
    """Stands in for LlamaModel in scheduler tests. Logits depend only on (last token, position), so a
    sequence's output is independent of the batch. It keeps its own per-slot token history and asserts the
    engine feeds every slot contiguously from 0 (a freshly allocated slot must start at n_cached == 0)."""

    vocab_size: int = 300
    context_length: int = 4096
    history: dict[int, list[int]] = field(default_factory=dict)  # slot -> tokens fed since its last reset
    batches: list[StepBatch] = field(default_factory=list)
    on_forward: object = None  # optional callback(batch), run inside forward (e.g. to abort mid-step)
    keep_batches: bool = True

    def __post_init__(self) -> None:
        self.hp = LlamaHParams(n_layers=2, dim=8, ffn_dim=16, n_heads=2, n_kv_heads=1, head_dim=4,
                               vocab_size=self.vocab_size, context_length=self.context_length, norm_eps=1e-5,
                               rope=RopeConfig(n_rot=4, theta=10000.0), tied_output=True)

    def kv_layout(self, slots: int, max_positions: int, sink_tokens: int, dtype: str = "f16") -> KVLayout:
        return KVLayout(n_layers=self.hp.n_layers, slots=slots, max_positions=max_positions,
                        sink_tokens=sink_tokens, n_kv_heads=self.hp.n_kv_heads, head_dim=self.hp.head_dim, dtype=dtype)

    def alloc_kv(self, layout: KVLayout) -> None:
        self.layout = layout
        return None

    def launch_greedy(self, batch: StepBatch, follow=None):
        """LlamaModel.launch_greedy's contract (the engine's overlapped decode): a following step's token ids are
        the previous step's tokens, not the placeholders in batch.token_ids."""
        from service.model.llama import greedy_on_host
        return greedy_on_host(self.forward, batch, follow)

    def forward(self, batch: StepBatch) -> np.ndarray:
        if self.keep_batches:
            self.batches.append(batch)
        if self.on_forward is not None:
            self.on_forward(batch)
        slots = [c.slot for c in batch.seqs]
        assert len(set(slots)) == len(slots), "a slot appears twice in one step"
        rows = []
        for chunk, lo, hi in zip(batch.seqs, batch.row_starts[:-1], batch.row_starts[1:]):
            hist = self.history.setdefault(chunk.slot, [])
            if chunk.n_cached == 0:
                hist.clear()
            assert chunk.n_cached == len(hist), f"slot {chunk.slot}: fed from {chunk.n_cached}, holds {len(hist)}"
            hist.extend(int(t) for t in batch.token_ids[lo:hi])
            if chunk.want_logits:
                last, pos = hist[-1], len(hist) - 1
                target = (last * 7 + pos * 3 + 1) % self.vocab_size
                row = -np.abs(np.arange(self.vocab_size) - target).astype(np.float32)  # (V,)
                rows.append(row)
        return np.stack(rows) if rows else np.zeros((0, self.vocab_size), np.float32)  # (S', V)
