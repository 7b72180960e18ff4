"""Dummy models: random weights in llama.cpp's Q4_K_M layout at a named shape (the `dummy-model` subcommand).

`dummy_gguf_model("7b")` builds an in-memory GGUFModel (no file) whose tensors have the exact types, shapes and
byte sizes of a Llama-2-7B Q4_K_M file: 32 layers, dim 4096, ffn 11008, 32 heads, vocab 32000; 193 Q4_K
matrices (token_embd and the rest) + 33 Q6_K (output, and attn_v / ffn_down of the layers llama.cpp's
`use_more_bits` picks: the first and last eighth and every third in between), F32 norms. "7b-gqa" has 8 KV
heads. The values are random but valid (finite f16 scales sized so activations stay O(1)); speed and memory
do not depend on them. Tensors are views into two 128 MiB pools of random blocks (one per block type) at
different offsets, so a 3.8 GB model costs 256 MiB of host memory and a fraction of a second of randomness.

`python -m service dummy-model --shape 7b OUT.gguf` writes the same model as a GGUF file (without a vocabulary:
tokenizer.ggml.model "no_vocab", so llama.cpp's tools load it too, as bench/llamacpp_baseline.py does).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as GGMLType

from service.errors import ConfigError
from service.model.gguf_file import GGUFModel, LlamaHParams, QTensor, RopeConfig


@dataclass(frozen=True)
class DummyShape:
    n_layers: int
    dim: int
    ffn_dim: int
    n_heads: int
    n_kv_heads: int
    vocab: int
    context: int = 4096


SHAPES = {
    "7b": DummyShape(32, 4096, 11008, 32, 32, 32000),
    "7b-gqa": DummyShape(32, 4096, 11008, 32, 8, 32000),
    "tiny": DummyShape(2, 256, 512, 4, 2, 1024, 512),  # for fast tests
}

POOL_BYTES = 128 << 20


def use_more_bits(layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of the Q4_K_M layers whose attn_v / ffn_down get Q6_K."""
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def _block_pool(ggml_type: GGMLType, rng: np.random.Generator, nbytes: int) -> np.ndarray:
    """(n_blocks * block_bytes,) uint8 of random valid blocks with sane f16 scale fields."""
    _, bsz = GGML_QUANT_SIZES[ggml_type]
    n = nbytes // bsz
    blocks = rng.integers(0, 256, size=(n, bsz), dtype=np.uint8)  # (n, block_bytes)
    if ggml_type == GGMLType.Q4_K:  # d, dmin (f16) then scales[12], qs[128]; w = d*sc*q - dmin*m
        d = rng.uniform(1.0e-5, 4.0e-5, size=n).astype(np.float16)  # (n,)
        blocks[:, 0:2] = d.view(np.uint8).reshape(n, 2)
        blocks[:, 2:4] = (d.astype(np.float32) * 7.5).astype(np.float16).view(np.uint8).reshape(n, 2)  # mean ~ 0
    elif ggml_type == GGMLType.Q6_K:  # ql[128], qh[64], scales[16] int8, d (f16); w = d*sc*(q-32)
        d = rng.uniform(0.5e-5, 2.0e-5, size=n).astype(np.float16)  # (n,)
        blocks[:, bsz - 2:bsz] = d.view(np.uint8).reshape(n, 2)
    else:
        raise ValueError(f"no dummy blocks for {ggml_type.name}")
    return blocks.reshape(-1)


class _Pools:
    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.pools = {t: _block_pool(t, rng, POOL_BYTES) for t in (GGMLType.Q4_K, GGMLType.Q6_K)}

    def tensor(self, name: str, ggml_type: GGMLType, rows: int, cols: int) -> QTensor:
        """A (rows, cols) quantized tensor viewing the type's pool at a random block offset."""
        qk, bsz = GGML_QUANT_SIZES[ggml_type]
        assert cols % qk == 0, f"{name}: {cols} columns is not a multiple of {qk}"
        bpr = cols // qk * bsz
        pool = self.pools[ggml_type]
        nbytes = rows * bpr
        if nbytes > pool.size:  # bigger than the pool: one contiguous copy of repeated pool bytes
            data = np.resize(pool, nbytes).reshape(rows, bpr)  # (rows, bytes_per_row)
        else:
            off = int(self.rng.integers(0, (pool.size - nbytes) // bsz + 1)) * bsz
            data = pool[off:off + nbytes].reshape(rows, bpr)  # (rows, bytes_per_row) view
        return QTensor(name, ggml_type, (rows, cols), data)


def dummy_gguf_model(shape: str, seed: int = 0) -> GGUFModel:
    """An in-memory GGUFModel with random Q4_K_M weights at the named shape ("7b", "7b-gqa", "tiny")."""
    if shape not in SHAPES:
        raise ConfigError(f"unknown dummy shape {shape!r} (known: {', '.join(SHAPES)})")
    s = SHAPES[shape]
    head_dim = s.dim // s.n_heads
    kv_dim = s.n_kv_heads * head_dim
    pools = _Pools(seed)
    Q4, Q6 = GGMLType.Q4_K, GGMLType.Q6_K
    ones = np.ones(s.dim, np.float32)  # (dim,) norm weights
    tensors: dict[str, QTensor] = {"token_embd.weight": pools.tensor("token_embd.weight", Q4, s.vocab, s.dim)}
    for i in range(s.n_layers):
        more = use_more_bits(i, s.n_layers)
        p = f"blk.{i}."
        for name, typ, rows, cols in (
            ("attn_q", Q4, s.dim, s.dim), ("attn_k", Q4, kv_dim, s.dim), ("attn_v", Q6 if more else Q4, kv_dim, s.dim),
            ("attn_output", Q4, s.dim, s.dim), ("ffn_gate", Q4, s.ffn_dim, s.dim), ("ffn_up", Q4, s.ffn_dim, s.dim),
            ("ffn_down", Q6 if more else Q4, s.dim, s.ffn_dim),
        ):
            tensors[p + name + ".weight"] = pools.tensor(p + name + ".weight", typ, rows, cols)
        for name in ("attn_norm", "ffn_norm"):
            tensors[p + name + ".weight"] = QTensor(p + name + ".weight", GGMLType.F32, (s.dim,), ones)
    tensors["output_norm.weight"] = QTensor("output_norm.weight", GGMLType.F32, (s.dim,), ones)
    tensors["output.weight"] = pools.tensor("output.weight", Q6, s.vocab, s.dim)
    hp = LlamaHParams(n_layers=s.n_layers, dim=s.dim, ffn_dim=s.ffn_dim, n_heads=s.n_heads, n_kv_heads=s.n_kv_heads,
                      head_dim=head_dim, vocab_size=s.vocab, context_length=s.context, norm_eps=float(np.float32(1e-5)),
                      rope=RopeConfig(n_rot=head_dim, theta=10000.0), tied_output=False)
    metadata = {"general.architecture": "llama", "general.name": f"dummy-{shape}", "general.file_type": 15}
    return GGUFModel(path=f"dummy-{shape}.gguf", architecture="llama", metadata=metadata, hparams=hp, tensors=tensors)


dummy_gguf = dummy_gguf_model  # the name service/model/loader.py looks for


def write_gguf(model: GGUFModel, path: str) -> None:
    """Write an in-memory (dummy) model as a GGUF file the loader can open."""
    from service.model.gguf_writer import write_llama_gguf

    write_llama_gguf(path, model.hparams, [(t.name, t.ggml_type, t.data) for t in model.tensors.values()],
                     model.metadata.get("general.name", "dummy"), int(model.metadata.get("general.file_type", 15)),
                     tokenizer_model="no_vocab")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("dummy-model", help="write a random-weight GGUF in the Q4_K_M layout",
                              description=__doc__.splitlines()[0])
    p.add_argument("output", help="GGUF file to write")
    p.add_argument("--shape", default="7b", choices=sorted(SHAPES), help="model shape")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    model = dummy_gguf_model(args.shape, args.seed)
    write_gguf(model, args.output)
    n_bytes = sum(t.n_bytes for t in model.tensors.values())
    print(f"wrote {args.output}: {args.shape}, {len(model.tensors)} tensors, {n_bytes / 2**30:.2f} GiB of weights")
    return 0
