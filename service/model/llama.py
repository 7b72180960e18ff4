"""The llama forward pass (Llama 2/3, Mistral, SmolLM2), written only against the Backend op vocabulary.

One `forward(step)` serves prefill chunks and decode tokens of many sequences at once (a flat batch of T rows).
Per layer:
    h = x + Wo · attention(rope(Wq · norm(x)), rope(Wk · norm(x)), Wv · norm(x))     (GQA, StreamingKVCache)
    x = h + Wdown · (silu(Wgate · norm(h)) * Wup · norm(h))
then logits = Wout · norm(x) for the last row of each sequence.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from service.backends.base import Backend, StepBatch
from service.backends.kv_layout import KVLayout
from service.model.gguf_file import GGUFModel, LlamaHParams


@dataclass
class LayerWeights:
    attn_norm: Any  # (dim,)
    wq: Any  # (n_heads * head_dim, dim)
    wk: Any  # (n_kv_heads * head_dim, dim)
    wv: Any  # (n_kv_heads * head_dim, dim)
    wo: Any  # (dim, n_heads * head_dim)
    ffn_norm: Any  # (dim,)
    w_gate: Any  # (ffn_dim, dim)
    w_up: Any  # (ffn_dim, dim)
    w_down: Any  # (dim, ffn_dim)


class GreedyTokens(Protocol):
    """The tokens of a launched greedy step (`LlamaModel.launch_greedy`)."""

    def result(self) -> np.ndarray:
        """(S,) int32: each sequence's argmax token; waits for the step to finish."""


@dataclass(frozen=True)
class ReadyTokens:
    """GreedyTokens already on the host (backends that compute a step before returning)."""

    tokens: np.ndarray  # (S,) int32

    def result(self) -> np.ndarray:
        return self.tokens


def greedy_on_host(forward: Any, batch: StepBatch, follow: GreedyTokens | None) -> ReadyTokens:
    """launch_greedy for a model whose forward returns host logits: computed now, follow's tokens fed in."""
    if follow is not None:
        batch = dataclasses.replace(batch, token_ids=np.asarray(follow.result(), np.int32))
    return ReadyTokens(np.argmax(forward(batch), axis=1).astype(np.int32))


class LlamaModel:
    """Weights uploaded to a backend plus the forward pass. The KV arena is allocated by `alloc_kv`."""

    def __init__(self, gguf_model: GGUFModel, backend: Backend, progress: Any = None):
        self.file = gguf_model
        self.hp: LlamaHParams = gguf_model.hparams
        self.backend = backend
        hp = self.hp
        total = 3 + hp.n_layers
        self.tok_embd = backend.load_weight(gguf_model.tensor("token_embd.weight"), None)  # (vocab, dim)
        self.layers: list[LayerWeights] = []
        for i in range(hp.n_layers):
            t = lambda name: backend.load_weight(gguf_model.layer_tensor(i, name), i)  # noqa: E731
            self.layers.append(LayerWeights(
                attn_norm=t("attn_norm"), wq=t("attn_q"), wk=t("attn_k"), wv=t("attn_v"), wo=t("attn_output"),
                ffn_norm=t("ffn_norm"), w_gate=t("ffn_gate"), w_up=t("ffn_up"), w_down=t("ffn_down"),
            ))
            if progress is not None:
                progress(i + 1, total)
        self.output_norm = backend.load_weight(gguf_model.tensor("output_norm.weight"), None)  # (dim,)
        self.output = backend.load_weight(gguf_model.output_tensor, None)  # (vocab, dim); tied: same as tok_embd
        if progress is not None:
            progress(total, total)
        self.kv: Any = None

    def kv_layout(self, slots: int, max_positions: int, sink_tokens: int, dtype: str = "f16") -> KVLayout:
        return KVLayout(n_layers=self.hp.n_layers, slots=slots, max_positions=max_positions,
                        sink_tokens=sink_tokens, n_kv_heads=self.hp.n_kv_heads, head_dim=self.hp.head_dim,
                        dtype=dtype)

    def alloc_kv(self, layout: KVLayout) -> Any:
        self.kv = self.backend.alloc_kv(layout)
        return self.kv

    def step(self, batch: StepBatch) -> np.ndarray:
        """One engine step. A backend with its own `forward(model, batch)` (CUDA: replays a captured graph for
        decode-only steps) runs it; otherwise this is `forward`."""
        run = getattr(self.backend, "forward", None)
        return run(self, batch) if run is not None else self.forward(batch)

    def launch_greedy(self, batch: StepBatch, follow: GreedyTokens | None = None) -> GreedyTokens:
        """Start a decode step (one new token per sequence, all wanting logits) whose next tokens are the argmax of
        the logits: greedy sampling with nothing applied to the logits first. With `follow`, the step's token ids
        are follow's tokens (the previous greedy step of the same sequences in the same order), and
        `batch.token_ids` is ignored: a backend that launches asynchronously (CUDA) takes them where the previous
        step left them on the device, so the host can queue step n + 1 before it has read step n's tokens."""
        run = getattr(self.backend, "launch_greedy", None)
        if run is not None:
            return run(self, batch, follow)
        return greedy_on_host(self.step, batch, follow)

    def forward(self, batch: StepBatch) -> np.ndarray:
        """Run one step; returns logits (S', vocab) float32 for the sequences that want them.
        The caller (engine) advances its cache bookkeeping by each chunk's n_new afterwards."""
        return self.backend.to_host(self.logits(batch))

    def logits(self, batch: StepBatch) -> Any:
        """`forward` with the logits left where the backend keeps them (a device tensor on a GPU)."""
        assert self.kv is not None, "alloc_kv first"
        hp, be = self.hp, self.backend
        step = be.begin_step(batch)
        x = be.embedding(self.tok_embd, step)  # (T, dim)
        for i, lw in enumerate(self.layers):
            # attention block
            h = be.rms_norm(x, lw.attn_norm, hp.norm_eps)  # (T, dim)
            q = be.matmul(h, lw.wq)  # (T, n_heads * head_dim)
            k = be.matmul(h, lw.wk)  # (T, n_kv_heads * head_dim)
            v = be.matmul(h, lw.wv)  # (T, n_kv_heads * head_dim)
            q_win = be.rope(q, step, hp.n_heads, hp.rope)  # (T, n_heads * head_dim) at absolute positions
            q_sink = be.rope(q, step, hp.n_heads, hp.rope, sink=True)  # at cache-order positions
            k = be.rope(k, step, hp.n_kv_heads, hp.rope)  # (T, n_kv_heads * head_dim)
            a = be.attention(q_win, q_sink, k, v, self.kv, i, step, hp.n_heads, hp.n_kv_heads)  # (T, n_heads * head_dim)
            x = be.add(x, be.matmul(a, lw.wo))  # (T, dim)
            # feed-forward block
            h = be.rms_norm(x, lw.ffn_norm, hp.norm_eps)  # (T, dim)
            g = be.matmul(h, lw.w_gate)  # (T, ffn_dim)
            u = be.matmul(h, lw.w_up)  # (T, ffn_dim)
            x = be.add(x, be.matmul(be.silu_mul(g, u), lw.w_down))  # (T, dim)
        x = be.take_rows(x, step)  # (S', dim)
        x = be.rms_norm(x, self.output_norm, hp.norm_eps)  # (S', dim)
        return be.matmul(x, self.output)  # (S', vocab)
