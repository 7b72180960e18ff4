"""Our dequantizers (service/model/dequant.py) are bit-identical to the `gguf` package's on every type we run."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES

from service.errors import UnsupportedModelError
from service.model.dequant import dequantize, dequantize_rows
from service.model.gguf_file import open_gguf
from service.model.registry import resolve_model_path

# byte offsets of the f16 scale fields inside each block type (random bytes there could be NaN/Inf)
F16_FIELDS = {
    T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q8_0: (0,),
    T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,),
}
ROWS = 37  # odd on purpose


def random_blocks(ggml_type: T, rows: int, blocks_per_row: int, rng: np.random.Generator) -> np.ndarray:
    """Random valid storage (rows, bytes_per_row): random bytes with the f16 fields set to finite f16 values."""
    _, block_bytes = GGML_QUANT_SIZES[ggml_type]
    raw = rng.integers(0, 256, (rows, blocks_per_row, block_bytes), dtype=np.uint8)  # (rows, blocks, bytes)
    for at in F16_FIELDS[ggml_type]:
        scale = (rng.standard_normal((rows, blocks_per_row)) * rng.choice([1e-4, 1e-2, 1.0, 30.0])).astype(np.float16)  # (rows, blocks)
        raw[:, :, at:at + 2] = scale[..., None].view(np.uint8)
    return raw.reshape(rows, blocks_per_row * block_bytes)  # (rows, bytes_per_row)


@pytest.mark.parametrize("ggml_type", list(F16_FIELDS), ids=lambda t: t.name)
@pytest.mark.parametrize("blocks_per_row", [1, 3, 5])
def test_quantized_types_match_gguf_bit_exactly(ggml_type: T, blocks_per_row: int) -> None:
    rng = np.random.default_rng(1000 * int(ggml_type) + blocks_per_row)
    raw = random_blocks(ggml_type, ROWS, blocks_per_row, rng)
    cols = blocks_per_row * GGML_QUANT_SIZES[ggml_type][0]
    ours = dequantize(raw, ggml_type, (ROWS, cols))
    ref = quants.dequantize(raw, ggml_type)  # (ROWS, cols)
    assert ours.dtype == np.float32 and ours.shape == (ROWS, cols)
    assert not np.isnan(ours).any()
    assert np.array_equal(ours, ref)


def test_large_tensor_is_chunked_identically() -> None:
    """More blocks than one internal chunk: the chunked path must equal the reference too."""
    rng = np.random.default_rng(7)
    raw = random_blocks(T.Q4_K, 4099, 1, rng)  # 4099 x 256 values > one chunk of 2**20
    assert np.array_equal(dequantize(raw, T.Q4_K, (4099, 256)), quants.dequantize(raw, T.Q4_K))


@pytest.mark.parametrize("ggml_type", [T.F32, T.F16, T.BF16], ids=lambda t: t.name)
def test_float_types_match_gguf(ggml_type: T) -> None:
    rng = np.random.default_rng(int(ggml_type))
    x = rng.standard_normal((ROWS, 45)).astype(np.float32)  # (37, 45)
    if ggml_type == T.F32:
        raw = x
    elif ggml_type == T.F16:
        raw = x.astype(np.float16)
    else:
        raw = quants.quantize(x, T.BF16)  # (37, 90) uint8, the package's own rounding
    ours = dequantize(raw, ggml_type, (ROWS, 45))
    ref = quants.dequantize(raw, ggml_type).reshape(ROWS, 45)
    assert np.array_equal(ours, ref)
    if ggml_type == T.BF16:  # bf16 keeps 8 significant bits: relative error <= 2**-8
        assert np.all(np.abs(ours - x) <= np.abs(x) * 2.0 ** -8)


@pytest.mark.parametrize("ggml_type", [T.Q8_0, T.Q4_K, T.Q6_K, T.F16], ids=lambda t: t.name)
def test_dequantize_rows_equals_full_rows(ggml_type: T) -> None:
    rng = np.random.default_rng(3)
    if ggml_type == T.F16:
        raw, cols = rng.standard_normal((ROWS, 96)).astype(np.float16), 96  # (37, 96)
    else:
        cols = 2 * GGML_QUANT_SIZES[ggml_type][0]
        raw = random_blocks(ggml_type, ROWS, 2, rng)
    full = quants.dequantize(raw, ggml_type).reshape(ROWS, cols)
    ids = np.array([5, 0, 36, 5, 17])  # repeats and out-of-order, like token ids
    assert np.array_equal(dequantize_rows(raw, ggml_type, cols, ids), full[ids])
    assert np.array_equal(dequantize_rows(raw, ggml_type, cols, slice(3, 11)), full[3:11])
    assert np.array_equal(dequantize_rows(raw, ggml_type, cols, np.array([9])), full[[9]])


def test_wrong_size_and_unsupported_type_raise_domain_errors() -> None:
    raw = np.zeros((3, 34), np.uint8)  # 3 Q8_0 blocks = 96 values
    with pytest.raises(UnsupportedModelError, match="shape"):
        dequantize(raw, T.Q8_0, (3, 64))
    with pytest.raises(UnsupportedModelError, match="IQ2_XXS"):
        dequantize(raw, T.IQ2_XXS, (1, 256))


@pytest.fixture(scope="module")
def default_model():
    return open_gguf(resolve_model_path(None))


def test_real_model_tensors_match_gguf(default_model) -> None:
    """A few tensors of every type present in the default model (Q4_1, Q8_0, F32), incl. the tied embedding."""
    by_type: dict[T, list] = {}
    for t in default_model.tensors.values():
        by_type.setdefault(t.ggml_type, []).append(t)
    assert {T.Q4_1, T.Q8_0, T.F32} <= set(by_type)
    for ggml_type, tensors in by_type.items():
        for t in tensors[:2] + tensors[-2:]:
            ours = dequantize(t.data, t.ggml_type, t.shape)
            ref = quants.dequantize(np.asarray(t.data), t.ggml_type).reshape(t.shape)
            assert ours.shape == t.shape
            assert np.array_equal(ours, ref), t.name
    emb = default_model.tensor("token_embd.weight")
    ids = np.array([0, 1, 49151, 1234])
    rows = dequantize_rows(emb.data, emb.ggml_type, emb.shape[1], ids)
    assert np.array_equal(rows, quants.dequantize(np.asarray(emb.data)[ids], emb.ggml_type))
