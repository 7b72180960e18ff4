"""Requantizing a GGUF model: llama.cpp's per-tensor type recipe (e.g. Q4_K_M) and writing the new file.

`requantize_file(src, dst, "Q4_K_M")` reads a llama GGUF, picks each tensor's type the way llama.cpp's
`llama_tensor_get_type` (llama-quant.cpp) does for that file type, dequantizes with service/model/dequant.py,
quantizes with service/model/quantize.py, and streams a GGUF through `gguf.GGUFWriter` that keeps ALL
metadata (tokenizer arrays, chat template, ...) with general.file_type updated. Tensors whose target type
equals their source type are copied byte for byte, as llama.cpp does.

The Q4_K_M recipe (no importance matrix, non-MoE llama; Q5_K_M is the same with Q5_K as the default):
  output.weight, or token_embd.weight when the head is tied: Q6_K (Q8_0 if its rows are not a multiple of 256)
  blk.i.attn_v / blk.i.ffn_down: Q6_K when use_more_bits(i, n) = i < n/8 or i >= 7n/8 or (i - n/8) % 3 == 2
  every other 2-D weight: Q4_K; 1-D tensors (norms, rope_freqs) keep their type
  fallback when a row length is not a multiple of the block: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0,
  then F16 if even that block does not divide the row.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field

import numpy as np
from gguf import GGMLQuantizationType as GGMLType
from gguf import GGUFValueType, GGUFWriter

from service.errors import ConfigError, ModelFileError
from service.model.dequant import block_shape, dequantize
from service.model.gguf_file import LlamaHParams, QTensor, open_gguf
from service.model.quantize import QUANTIZABLE, quantize


@dataclass(frozen=True)
class Recipe:
    """A llama.cpp file type: its default tensor type and the general.file_type id (LLAMA_FTYPE_MOSTLY_*)."""

    name: str
    file_type: int
    default: GGMLType
    more_bits: bool = False  # *_K_M: attn_v and ffn_down get Q6_K in the use_more_bits layers


RECIPES = {r.name: r for r in (
    Recipe("Q4_K_M", 15, GGMLType.Q4_K, more_bits=True),
    Recipe("Q5_K_M", 17, GGMLType.Q5_K, more_bits=True),
    Recipe("Q6_K", 18, GGMLType.Q6_K),
    Recipe("Q8_0", 7, GGMLType.Q8_0),
    Recipe("Q4_0", 2, GGMLType.Q4_0),
    Recipe("Q4_1", 3, GGMLType.Q4_1),
    Recipe("Q5_0", 8, GGMLType.Q5_0),
    Recipe("Q5_1", 9, GGMLType.Q5_1),
)}

# llama.cpp's replacement when a k-quant block does not divide the row length
_FALLBACK = {GGMLType.Q4_K: GGMLType.Q5_0, GGMLType.Q5_K: GGMLType.Q5_1, GGMLType.Q6_K: GGMLType.Q8_0}
_LAYER = re.compile(r"^blk\.(\d+)\.")
_NEVER_QUANTIZED = ("_norm.weight", "rope_freqs.weight")
GGML_QUANTIZATION_VERSION = 2


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _divides(ggml_type: GGMLType, cols: int) -> bool:
    return cols % block_shape(ggml_type)[0] == 0


def tensor_type(name: str, shape: tuple[int, ...], recipe: Recipe, n_layers: int, has_output: bool,
                output_type: GGMLType | None = None, token_embd_type: GGMLType | None = None) -> GGMLType | None:
    """The type llama.cpp's recipe gives tensor `name` (numpy shape (rows, cols)); None = keep it as it is.

    `output_type` / `token_embd_type` are llama-quantize's --output-tensor-type / --token-embedding-type
    overrides (a tied embedding is the output head, so `output_type` applies to it).
    """
    if len(shape) < 2 or not name.endswith("weight") or any(s in name for s in _NEVER_QUANTIZED):
        return None
    cols = shape[-1]  # ggml ne[0]: the row length the blocks run along
    new = recipe.default
    if name == "output.weight" or (not has_output and name == "token_embd.weight"):
        if output_type is not None:
            new = output_type
        elif not _divides(new, cols):
            new = GGMLType.Q8_0
        elif new != GGMLType.Q8_0:
            new = GGMLType.Q6_K
    elif name == "token_embd.weight" and token_embd_type is not None:
        new = token_embd_type
    elif recipe.more_bits and (".attn_v." in name or ".ffn_down" in name):
        match = _LAYER.match(name)
        if match and use_more_bits(int(match.group(1)), n_layers):
            new = GGMLType.Q6_K
    if not _divides(new, cols):
        new = _FALLBACK.get(new, new)
        if not _divides(new, cols):
            new = GGMLType.F16
    return new


@dataclass(frozen=True)
class PlannedTensor:
    source: QTensor
    ggml_type: GGMLType  # type in the output file
    copy: bool  # same type as the source: bytes copied unchanged

    @property
    def n_bytes(self) -> int:
        per_block, block_bytes = block_shape(self.ggml_type)
        return self.source.n_elements // per_block * block_bytes


@dataclass(frozen=True)
class RequantizeSummary:
    n_tensors: int
    type_counts: dict[str, int]  # output type name -> number of tensors
    tensor_types: dict[str, str] = field(repr=False)  # tensor name -> output type name
    in_bytes: int
    out_bytes: int  # tensor data bytes written
    file_bytes: int
    seconds: float


def plan_tensors(tensors: list[QTensor], recipe: Recipe, n_layers: int, output_type: GGMLType | None = None,
                 token_embd_type: GGMLType | None = None) -> list[PlannedTensor]:
    names = {t.name for t in tensors}
    has_output = "output.weight" in names
    plan = []
    for t in tensors:
        new = tensor_type(t.name, t.shape, recipe, n_layers, has_output, output_type, token_embd_type)
        new = t.ggml_type if new is None else new
        plan.append(PlannedTensor(t, new, copy=new == t.ggml_type))
    return plan


def _copy_metadata(writer: GGUFWriter, reader, overrides: dict[str, tuple[object, GGUFValueType]]) -> None:
    """Every key/value of the source, in order, with `overrides` (key -> (value, type)) applied."""
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.alignment"):
            continue  # header fields, written by the writer itself
        if key in overrides:
            continue
        vtype = GGUFValueType(f.types[0])
        if vtype == GGUFValueType.ARRAY:
            sub = GGUFValueType(f.types[-1])
            if len(f.types) > 2:
                raise ModelFileError(f"metadata {key!r}: nested arrays are not supported")
            if sub == GGUFValueType.STRING:  # raw bytes: no utf-8 round trip
                value = [bytes(f.parts[i]) for i in f.data]
            else:
                value = [f.parts[i][0] if len(f.parts[i]) == 1 else f.parts[i] for i in f.data]
            writer.add_key_value(key, value, vtype, sub_type=sub)
        elif vtype == GGUFValueType.STRING:
            writer.add_key_value(key, bytes(f.parts[f.data[0]]), vtype)
        else:
            writer.add_key_value(key, f.parts[f.data[0]][0], vtype)
    for key, (value, vtype) in overrides.items():
        writer.add_key_value(key, value, vtype)


def _tensor_bytes(p: PlannedTensor) -> np.ndarray:
    src = p.source
    if p.copy:
        return np.asarray(src.data)
    x = dequantize(src.data, src.ggml_type, src.shape)  # (rows, cols) float32
    return quantize(x.reshape(-1, src.shape[-1]), p.ggml_type)  # (rows, bytes_per_row) or typed


def parse_tensor_type(type_name: str | None) -> GGMLType | None:
    """A tensor type name for the --output-tensor-type / --token-embedding-type overrides."""
    if type_name is None:
        return None
    try:
        ggml_type = GGMLType[type_name.upper()]
    except KeyError:
        ggml_type = None
    if ggml_type not in QUANTIZABLE:
        names = ", ".join(sorted(t.name for t in QUANTIZABLE))
        raise ConfigError(f"unsupported tensor type {type_name!r}; choose one of {names}")
    return ggml_type


def requantize_file(src: str, dst: str, type_name: str, keep_layers: int | None = None, progress: bool = True,
                    output_type: str | None = None, token_embd_type: str | None = None) -> RequantizeSummary:
    """Write `dst`: `src` requantized with the named recipe (see RECIPES), optionally truncated to N blocks."""
    recipe = RECIPES.get(type_name.upper())
    if recipe is None:
        raise ConfigError(f"unknown quantization type {type_name!r}; choose one of {', '.join(RECIPES)}")
    out_override, embd_override = parse_tensor_type(output_type), parse_tensor_type(token_embd_type)
    start = time.perf_counter()
    model = open_gguf(src)
    arch, n_layers = model.architecture, model.hparams.n_layers
    if keep_layers is not None:
        if not 1 <= keep_layers <= n_layers:
            raise ConfigError(f"--keep-layers must be between 1 and {n_layers}, got {keep_layers}")
        n_layers = keep_layers
    out_dir = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(out_dir):
        raise ModelFileError(f"output folder does not exist: {out_dir}")
    if os.path.abspath(dst) == os.path.abspath(src):
        raise ModelFileError("output must be a different file than the input")

    def kept(t: QTensor) -> bool:
        m = _LAYER.match(t.name)
        return m is None or int(m.group(1)) < n_layers

    order = [model.tensors[t.name] for t in model.reader.tensors]
    plan = plan_tensors([t for t in order if kept(t)], recipe, n_layers, out_override, embd_override)

    writer = GGUFWriter(dst, arch)
    alignment = model.metadata.get("general.alignment")
    if alignment is not None:
        writer.add_custom_alignment(int(alignment))
    overrides = {
        "general.file_type": (recipe.file_type, GGUFValueType.UINT32),
        "general.quantization_version": (GGML_QUANTIZATION_VERSION, GGUFValueType.UINT32),
        f"{arch}.block_count": (n_layers, GGUFValueType.UINT32),
    }
    _copy_metadata(writer, model.reader, overrides)
    for p in plan:
        t = p.source
        if p.ggml_type in (GGMLType.F32, GGMLType.F16):
            dtype = np.float32 if p.ggml_type == GGMLType.F32 else np.float16
            writer.add_tensor_info(t.name, t.shape, np.dtype(dtype), p.n_bytes, raw_dtype=p.ggml_type)
        else:
            per_block, block_bytes = block_shape(p.ggml_type)
            byte_shape = (*t.shape[:-1], t.shape[-1] // per_block * block_bytes)
            writer.add_tensor_info(t.name, byte_shape, np.dtype(np.uint8), p.n_bytes, raw_dtype=p.ggml_type)

    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(plan, desc=f"quantize {recipe.name}", unit="tensor")
        for p in bar if bar is not None else plan:
            data = _tensor_bytes(p)
            if data.nbytes != p.n_bytes:
                raise ModelFileError(f"{p.source.name}: {data.nbytes} bytes, expected {p.n_bytes}")
            writer.write_tensor_data(data)
    except BaseException:
        writer.close()
        if os.path.exists(dst):
            os.remove(dst)
        raise
    writer.close()

    counts: dict[str, int] = {}
    for p in plan:
        counts[p.ggml_type.name] = counts.get(p.ggml_type.name, 0) + 1
    return RequantizeSummary(
        n_tensors=len(plan), type_counts=counts, tensor_types={p.source.name: p.ggml_type.name for p in plan},
        in_bytes=sum(t.n_bytes for t in order), out_bytes=sum(p.n_bytes for p in plan),
        file_bytes=os.path.getsize(dst), seconds=time.perf_counter() - start,
    )


def write_llama_gguf(path: str, hp: "LlamaHParams", tensors: list[tuple[str, GGMLType, np.ndarray]], name: str,
                     file_type: int | None = None, tokenizer_model: str | None = None) -> None:
    """A llama GGUF from hyper-parameters and (name, type, storage) tensors, storage as QTensor.data holds it
    (typed arrays for F32/F16, raw block bytes otherwise). For models made in memory (dummy weights, cuts).
    `tokenizer_model` is written as tokenizer.ggml.model when given ("no_vocab": a file without a vocabulary,
    which llama.cpp then loads with vocab_size placeholder tokens)."""
    w = GGUFWriter(path, "llama")
    w.add_name(name)
    if tokenizer_model is not None:
        w.add_tokenizer_model(tokenizer_model)
    w.add_block_count(hp.n_layers)
    w.add_context_length(hp.context_length)
    w.add_embedding_length(hp.dim)
    w.add_feed_forward_length(hp.ffn_dim)
    w.add_head_count(hp.n_heads)
    w.add_head_count_kv(hp.n_kv_heads)
    w.add_layer_norm_rms_eps(hp.norm_eps)
    w.add_rope_freq_base(hp.rope.theta)
    w.add_rope_dimension_count(hp.rope.n_rot)
    w.add_vocab_size(hp.vocab_size)
    if file_type is not None:
        w.add_file_type(file_type)
    for tensor_name, ggml_type, data in tensors:
        if ggml_type in (GGMLType.F32, GGMLType.F16):
            w.add_tensor(tensor_name, np.ascontiguousarray(data))
        else:
            w.add_tensor(tensor_name, np.ascontiguousarray(data), raw_dtype=ggml_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
