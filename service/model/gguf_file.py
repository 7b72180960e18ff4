"""GGUF model files: memory-mapped reading (the `gguf` package), hyper-parameters and quantized tensors.

The file is opened once with `numpy.memmap` through `gguf.GGUFReader`; tensor data are views into that map,
so a tensor's bytes are read from disk only when a backend uploads or dequantizes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import ModelFileError, UnsupportedModelError

try:  # the gguf package prints nothing on import, but keep its heavy modules out of a failing import path
    import gguf
    from gguf import GGMLQuantizationType as GGMLType
except ImportError as exc:  # pragma: no cover - gguf is a declared dependency
    raise ImportError("the `gguf` package is required: pip install gguf") from exc

# Tensor types this server can run (dequantize in NumPy, and upload to the CUDA backend).
SUPPORTED_TYPES = frozenset({
    GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1,
    GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K,
})

SUPPORTED_ARCHITECTURES = ("llama",)


@dataclass(frozen=True)
class QTensor:
    """One tensor as stored in the file: raw (possibly quantized) bytes plus its logical shape."""

    name: str
    ggml_type: GGMLType
    shape: tuple[int, ...]  # logical numpy order: (rows, cols) for matrices = (out_features, in_features)
    data: np.ndarray  # raw storage view: (rows, bytes_per_row) uint8 for quantized types, else typed

    @property
    def n_bytes(self) -> int:
        return int(self.data.nbytes)

    @property
    def type_name(self) -> str:
        return self.ggml_type.name

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding as the forward pass needs it."""

    n_rot: int  # rotated dims per head (<= head_dim)
    theta: float  # frequency base
    mode: str = "normal"  # "normal": adjacent pairs (GGML llama); "neox": halves
    linear_factor: float = 1.0  # linear position scaling (positions / factor)
    freq_factors: tuple[float, ...] | None = None  # llama3-style per-frequency divisors (rope_freqs.weight)

    def inv_freq(self) -> np.ndarray:
        """(n_rot // 2,) float64 angular frequency per rotated pair."""
        inv = self.theta ** (-np.arange(0, self.n_rot, 2, dtype=np.float64) / self.n_rot)
        if self.freq_factors is not None:
            inv = inv / np.asarray(self.freq_factors, dtype=np.float64)
        return inv / self.linear_factor


@dataclass(frozen=True)
class LlamaHParams:
    """Hyper-parameters of a llama-architecture model (Llama 2/3, Mistral, SmolLM2)."""

    n_layers: int
    dim: int  # embedding width
    ffn_dim: int
    n_heads: int
    n_kv_heads: int  # grouped-query attention when < n_heads
    head_dim: int
    vocab_size: int
    context_length: int
    norm_eps: float
    rope: RopeConfig
    tied_output: bool  # output head shares token_embd.weight

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim


LAYER_TENSORS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                 "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")


@dataclass
class GGUFModel:
    """A parsed GGUF file: metadata, hyper-parameters and tensors (views into the memory map)."""

    path: str
    architecture: str
    metadata: dict[str, Any]
    hparams: LlamaHParams
    tensors: dict[str, QTensor]
    reader: Any = field(repr=False, default=None)

    @property
    def name(self) -> str:
        return os.path.splitext(os.path.basename(self.path))[0]

    def tensor(self, name: str) -> QTensor:
        if name not in self.tensors:
            raise ModelFileError(f"{self.path}: missing tensor {name!r}")
        return self.tensors[name]

    def layer_tensor(self, layer: int, name: str) -> QTensor:
        return self.tensor(f"blk.{layer}.{name}.weight")

    @property
    def output_tensor(self) -> QTensor:
        return self.tensors.get("output.weight") or self.tensor("token_embd.weight")

    @property
    def weight_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors.values())


def _field_value(field_: Any) -> Any:
    value = field_.contents()
    if isinstance(value, np.generic):
        value = value.item()
    return value


def read_metadata(reader: Any) -> dict[str, Any]:
    """All key/values; the three big tokenizer arrays stay lazy (fetched by the tokenizer itself)."""
    out: dict[str, Any] = {}
    for key, field_ in reader.fields.items():
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
                   "tokenizer.ggml.scores"):
            out[key] = field_  # lazily converted by the tokenizer
            continue
        out[key] = _field_value(field_)
    return out


def field_list(metadata: dict[str, Any], key: str) -> list[Any] | None:
    """A lazy array field (tokens, merges, token types, scores) as a Python list."""
    value = metadata.get(key)
    if value is None:
        return None
    if isinstance(value, list):
        return value
    return list(value.contents())


def open_gguf(path: str) -> GGUFModel:
    """Open and validate a llama-architecture GGUF file. Raises ModelFileError with a one-line reason."""
    if not os.path.exists(path):
        raise ModelFileError(f"model file not found: {path}")
    if os.path.isdir(path):
        raise ModelFileError(f"model path is a directory, not a GGUF file: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelFileError(f"{path}: not a GGUF file (magic {magic!r})")
    try:
        reader = gguf.GGUFReader(path, "r")
    except Exception as exc:  # the gguf package raises ValueError/IndexError on truncation
        raise ModelFileError(f"{path}: cannot read GGUF ({type(exc).__name__}: {exc}); the file may be truncated") from None
    metadata = read_metadata(reader)
    arch = metadata.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(f"{path}: unsupported architecture {arch!r} (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")

    tensors: dict[str, QTensor] = {}
    for t in reader.tensors:
        ttype = GGMLType(int(t.tensor_type))
        if ttype not in SUPPORTED_TYPES:
            raise UnsupportedModelError(f"{path}: tensor {t.name!r} has unsupported type {ttype.name}")
        shape = tuple(int(d) for d in reversed([int(x) for x in t.shape]))
        tensors[t.name] = QTensor(t.name, ttype, shape, t.data)

    # A truncated file makes the memmap shorter than the last tensor's end.
    end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    if end > os.path.getsize(path):
        raise ModelFileError(f"{path}: truncated (tensor data ends at byte {end}, file has {os.path.getsize(path)})")

    hparams = _llama_hparams(path, metadata, tensors)
    model = GGUFModel(path=path, architecture=arch, metadata=metadata, hparams=hparams, tensors=tensors, reader=reader)
    _check_tensors(model)
    return model


def _llama_hparams(path: str, md: dict[str, Any], tensors: dict[str, QTensor]) -> LlamaHParams:
    a = md["general.architecture"]

    def need(key: str) -> Any:
        if f"{a}.{key}" not in md:
            raise ModelFileError(f"{path}: missing metadata {a}.{key}")
        return md[f"{a}.{key}"]

    dim = int(need("embedding_length"))
    n_heads = int(need("attention.head_count"))
    n_kv = int(md.get(f"{a}.attention.head_count_kv", n_heads))
    head_dim = int(md.get(f"{a}.attention.key_length", dim // n_heads))
    emb = tensors.get("token_embd.weight")
    if emb is None:
        raise ModelFileError(f"{path}: missing tensor 'token_embd.weight'")
    vocab = int(md.get(f"{a}.vocab_size", emb.shape[0]))
    freq_factors = None
    if "rope_freqs.weight" in tensors:
        freq_factors = tuple(float(x) for x in np.asarray(tensors["rope_freqs.weight"].data, dtype=np.float32).ravel())
    scaling_type = md.get(f"{a}.rope.scaling.type", "none")
    linear = float(md.get(f"{a}.rope.scaling.factor", 1.0)) if scaling_type == "linear" else 1.0
    if scaling_type not in ("none", "linear") and freq_factors is None:
        raise UnsupportedModelError(f"{path}: unsupported rope scaling {scaling_type!r}")
    rope = RopeConfig(
        n_rot=int(md.get(f"{a}.rope.dimension_count", head_dim)),
        theta=float(md.get(f"{a}.rope.freq_base", 10000.0)),
        mode="normal",  # llama GGUFs store Q/K permuted for GGML's adjacent-pair rotation
        linear_factor=linear,
        freq_factors=freq_factors,
    )
    return LlamaHParams(
        n_layers=int(need("block_count")),
        dim=dim,
        ffn_dim=int(need("feed_forward_length")),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        vocab_size=vocab,
        context_length=int(md.get(f"{a}.context_length", 2048)),
        norm_eps=float(md.get(f"{a}.attention.layer_norm_rms_epsilon", 1e-5)),
        rope=rope,
        tied_output="output.weight" not in tensors,
    )


def _check_tensors(model: GGUFModel) -> None:
    hp = model.hparams
    expect = {
        "attn_norm": (hp.dim,), "ffn_norm": (hp.dim,),
        "attn_q": (hp.q_dim, hp.dim), "attn_k": (hp.kv_dim, hp.dim), "attn_v": (hp.kv_dim, hp.dim),
        "attn_output": (hp.dim, hp.q_dim),
        "ffn_gate": (hp.ffn_dim, hp.dim), "ffn_up": (hp.ffn_dim, hp.dim), "ffn_down": (hp.dim, hp.ffn_dim),
    }
    model.tensor("output_norm.weight")
    for layer in range(hp.n_layers):
        for name, shape in expect.items():
            t = model.layer_tensor(layer, name)
            if tuple(t.shape) != shape:
                raise ModelFileError(f"{model.path}: tensor {t.name} has shape {t.shape}, expected {shape}")
    emb = model.tensor("token_embd.weight")
    if emb.shape != (hp.vocab_size, hp.dim):
        raise ModelFileError(f"{model.path}: token_embd.weight has shape {emb.shape}, expected {(hp.vocab_size, hp.dim)}")
