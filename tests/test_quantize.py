"""Quantizers, the Q4_K_M recipe, the GGUF writer and the `quantize` command, checked against independent
references: the `gguf` package's quantizers and dequantizers, a literal scalar transcription of llama.cpp's
reference k-quantizers (tests/ggml_ref_quants.py), llama.cpp's recipe rules worked out by hand, and the
original model's own greedy output."""

from __future__ import annotations

import os

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants

import ggml_ref_quants as ref
from service.__main__ import main
from service.errors import UnsupportedModelError
from service.model.dequant import dequantize, unpack_scale_min_k4
from service.model.gguf_file import open_gguf
from service.model.gguf_writer import RECIPES, tensor_type, use_more_bits
from service.model.quantize import ensure_q4_k_m_fixture, pack_scale_min_k4, quantize
from service.model.registry import resolve_model_path

Q4_K_M = RECIPES["Q4_K_M"]


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def awkward_rows(rows: int, cols: int, seed: int) -> np.ndarray:
    """Gaussian rows of mixed scales plus the edge cases quantizers get wrong: zeros, constants, outliers."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)) * rng.choice([1e-3, 0.05, 1.0, 40.0], (rows, 1))  # (rows, cols)
    x[0] = 0.0
    x[1] = 0.7
    x[2] = -2.5
    x[3, :] = 0.0
    x[3, cols // 3] = 9.0  # one outlier
    x[4] = np.abs(x[4])  # all positive: the k-quant min clamps at 0
    x[5] = -np.abs(x[5])
    x[6] = rng.standard_t(2, cols)  # heavy tails
    return x.astype(np.float32)


# -- block quantizers -----------------------------------------------------------------------------
@pytest.mark.parametrize("ggml_type", [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1], ids=lambda t: t.name)
def test_legacy_quantizers_match_gguf_bytes(ggml_type: T) -> None:
    x = awkward_rows(37, 7 * 32, seed=int(ggml_type))  # odd rows, odd block count
    ours = quantize(x, ggml_type)
    theirs = quants.quantize(x, ggml_type)
    assert ours.shape == theirs.shape
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("ggml_type,oracle", [(T.Q4_K, ref.quantize_block_q4_k), (T.Q5_K, ref.quantize_block_q5_k),
                                              (T.Q6_K, ref.quantize_block_q6_k)], ids=["Q4_K", "Q5_K", "Q6_K"])
def test_k_quantizers_match_scalar_reference_bytes(ggml_type: T, oracle) -> None:
    x = awkward_rows(9, 256, seed=11 + int(ggml_type))  # 9 blocks: the edge cases + Gaussians
    ours = quantize(x, ggml_type)  # (9, block_bytes)
    expected = np.stack([np.frombuffer(oracle(row), np.uint8) for row in x])  # (9, block_bytes)
    mismatched = [i for i in range(len(x)) if not np.array_equal(ours[i], expected[i])]
    assert not mismatched, f"blocks {mismatched} differ from the scalar reference"


def test_round_trip_error_on_gaussian_data() -> None:
    """Dequantized by the gguf package. Each k-quant must beat the gguf package's legacy quantizer of about as many
    or more bits per weight (Q4_K 4.5 bpw vs Q4_1 5.0; Q5_K 5.5 and Q6_K 6.56 vs Q5_1 6.0)."""
    x = np.random.default_rng(5).standard_normal((37, 1024)).astype(np.float32)  # (37, 1024)
    err = {t: rmse(quants.dequantize(quantize(x, t), t), x) for t in (T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_0)}
    legacy = {t: rmse(quants.dequantize(quants.quantize(x, t), t), x) for t in (T.Q4_1, T.Q5_1)}
    assert err[T.Q4_K] < legacy[T.Q4_1]
    assert err[T.Q5_K] < legacy[T.Q5_1]  # 5.5 vs 6.0 bpw
    assert err[T.Q6_K] < legacy[T.Q5_1]
    assert err[T.Q8_0] < err[T.Q6_K] < err[T.Q5_K] < err[T.Q4_K] < 0.08
    # Q6_K has 2 more bits than Q4_K: about 4x less error
    assert err[T.Q6_K] < err[T.Q4_K] / 3


def test_q8_0_error_is_within_half_a_step() -> None:
    x = awkward_rows(37, 5 * 32, seed=3)
    back = quants.dequantize(quantize(x, T.Q8_0), T.Q8_0).reshape(-1, 32)  # (blocks, 32)
    blocks = x.reshape(-1, 32)
    step = (np.abs(blocks).max(axis=1, keepdims=True) / 127).astype(np.float64)  # (blocks, 1)
    stored = step.astype(np.float16).astype(np.float64)  # (blocks, 1) the f16 scale (subnormal for tiny blocks)
    # x - q * stored = (x - q * step) + q * (step - stored), |q| <= 127
    bound = 0.5 * step + 127 * np.abs(step - stored)  # (blocks, 1)
    assert np.all(np.abs(back - blocks) <= bound * (1 + 1e-5) + 1e-30)


@pytest.mark.parametrize("ggml_type", [T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_0, T.Q5_0], ids=lambda t: t.name)
def test_zero_and_constant_blocks(ggml_type: T) -> None:
    cols = 256
    x = np.zeros((3, cols), np.float32)  # (3, 256)
    x[1] = 0.375  # exactly representable constants
    x[2] = -1.25
    back = quants.dequantize(quantize(x, ggml_type), ggml_type)
    assert np.array_equal(back[0], x[0])
    assert not np.isnan(back).any()
    assert np.max(np.abs(back[1:] - x[1:])) <= 0.01 * 1.25


def test_scale_min_packing_round_trips() -> None:
    rng = np.random.default_rng(2)
    ls, lm = rng.integers(0, 64, (41, 8)), rng.integers(0, 64, (41, 8))  # (41, 8) 6-bit values
    sc, m = unpack_scale_min_k4(pack_scale_min_k4(ls, lm))
    assert np.array_equal(sc, ls) and np.array_equal(m, lm)


def test_quantize_rejects_rows_that_blocks_do_not_divide() -> None:
    with pytest.raises(UnsupportedModelError, match="multiple of 256"):
        quantize(np.zeros((2, 576), np.float32), T.Q4_K)
    with pytest.raises(UnsupportedModelError, match="IQ2_XS"):
        quantize(np.zeros((2, 256), np.float32), T.IQ2_XS)


# -- the Q4_K_M recipe (llama.cpp's llama_tensor_get_type, worked out by hand) --------------------
def test_use_more_bits_layers_for_32_layers() -> None:
    # n/8 = 4, 7n/8 = 28: layers 0-3, 28-31, and 6, 9, ..., 27 ((i - 4) % 3 == 2)
    expected = {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31}
    assert {i for i in range(32) if use_more_bits(i, 32)} == expected


def test_q4_k_m_recipe_on_a_7b_layout() -> None:
    """Llama-2-7B Q4_K_M has 33 Q6_K tensors: 16 attn_v + 16 ffn_down + output."""
    dim, ffn, n = 4096, 11008, 32
    shapes = {"attn_q": (dim, dim), "attn_k": (dim, dim), "attn_v": (dim, dim), "attn_output": (dim, dim),
              "ffn_gate": (ffn, dim), "ffn_up": (ffn, dim), "ffn_down": (dim, ffn)}
    types: dict[str, T | None] = {}
    for i in range(n):
        for name, shape in shapes.items():
            types[f"blk.{i}.{name}.weight"] = tensor_type(f"blk.{i}.{name}.weight", shape, Q4_K_M, n, True)
        types[f"blk.{i}.attn_norm.weight"] = tensor_type(f"blk.{i}.attn_norm.weight", (dim,), Q4_K_M, n, True)
    types["output.weight"] = tensor_type("output.weight", (32000, dim), Q4_K_M, n, True)
    types["token_embd.weight"] = tensor_type("token_embd.weight", (32000, dim), Q4_K_M, n, True)
    q6 = sorted(k for k, v in types.items() if v == T.Q6_K)
    assert len(q6) == 33 and "output.weight" in q6
    assert types["blk.6.attn_v.weight"] == T.Q6_K and types["blk.7.attn_v.weight"] == T.Q4_K
    assert types["blk.0.ffn_down.weight"] == T.Q6_K and types["blk.4.ffn_down.weight"] == T.Q4_K
    assert types["token_embd.weight"] == T.Q4_K  # untied: the default type
    assert types["blk.5.attn_norm.weight"] is None  # norms keep F32
    assert {v for k, v in types.items() if v not in (T.Q6_K, None)} == {T.Q4_K}


def test_q4_k_m_recipe_fallbacks_for_576_wide_rows() -> None:
    """SmolLM2: rows of 576 values are no multiple of 256, so Q4_K -> Q5_0 and Q6_K -> Q8_0; ffn_down rows are
    1536 = 6 x 256 and keep k-quants. A tied embedding is the output head: Q6_K -> Q8_0."""
    n, dim, ffn = 30, 576, 1536
    assert tensor_type("blk.0.attn_q.weight", (dim, dim), Q4_K_M, n, False) == T.Q5_0
    assert tensor_type("blk.0.attn_v.weight", (192, dim), Q4_K_M, n, False) == T.Q8_0
    assert tensor_type("blk.3.attn_v.weight", (192, dim), Q4_K_M, n, False) == T.Q5_0
    assert tensor_type("blk.0.ffn_down.weight", (dim, ffn), Q4_K_M, n, False) == T.Q6_K
    assert tensor_type("blk.3.ffn_down.weight", (dim, ffn), Q4_K_M, n, False) == T.Q4_K
    assert tensor_type("token_embd.weight", (49152, dim), Q4_K_M, n, False) == T.Q8_0
    assert tensor_type("token_embd.weight", (49152, dim), Q4_K_M, n, True) == T.Q5_0
    assert tensor_type("output.weight", (49152, dim), Q4_K_M, n, True) == T.Q8_0
    assert tensor_type("blk.0.ffn_up.weight", (ffn, 100), Q4_K_M, n, False) == T.F16  # 100: not even Q5_0


# -- the written file -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def source_path() -> str:
    return resolve_model_path(None)


@pytest.fixture(scope="module")
def q4km_path(source_path: str) -> str:
    return ensure_q4_k_m_fixture()  # ~15 s of CPU the first time on a machine, then cached


@pytest.mark.slow
def test_written_file_keeps_metadata_and_follows_the_recipe(source_path: str, q4km_path: str) -> None:
    src, out = gguf.GGUFReader(source_path), gguf.GGUFReader(q4km_path)
    assert set(out.fields) == set(src.fields)
    changed = [k for k in src.fields if src.fields[k].contents() != out.fields[k].contents()]
    assert changed == ["general.file_type"]
    assert out.fields["general.file_type"].contents() == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert [t.name for t in out.tensors] == [t.name for t in src.tensors]
    assert [list(t.shape) for t in out.tensors] == [list(t.shape) for t in src.tensors]
    counts: dict[str, int] = {}
    for t in out.tensors:
        name = T(int(t.tensor_type)).name
        counts[name] = counts.get(name, 0) + 1
    # by hand for 30 layers: use_more_bits holds for 14 layers (0-2, 26-29, 5, 8, ..., 23);
    # attn_v there -> Q6_K -> Q8_0 (576 wide), else Q5_0; ffn_down (1536 wide) Q6_K / Q4_K;
    # q, k, output, gate, up (576 wide) Q4_K -> Q5_0; tied token_embd -> Q8_0; 61 norms stay F32
    assert counts == {"F32": 61, "Q4_K": 16, "Q5_0": 30 * 5 + 16, "Q6_K": 14, "Q8_0": 14 + 1}


@pytest.mark.slow
def test_requantized_tensors_are_close_to_the_source(source_path: str, q4km_path: str) -> None:
    src, out = open_gguf(source_path), open_gguf(q4km_path)
    assert out.hparams == src.hparams
    assert np.array_equal(np.asarray(out.tensor("token_embd.weight").data),
                          np.asarray(src.tensor("token_embd.weight").data))  # Q8_0 -> Q8_0: copied
    bound = {T.Q4_K: 0.12, T.Q5_0: 0.06, T.Q6_K: 0.03, T.Q8_0: 0.01, T.F32: 0.0}
    for name in ("blk.0.attn_q.weight", "blk.0.attn_v.weight", "blk.0.ffn_down.weight", "blk.4.ffn_down.weight",
                 "blk.4.attn_v.weight", "blk.29.ffn_gate.weight", "output_norm.weight"):
        a, b = src.tensor(name), out.tensor(name)
        x = dequantize(a.data, a.ggml_type, a.shape)
        y = quants.dequantize(np.asarray(b.data), b.ggml_type).reshape(b.shape)  # independent dequantizer
        rel = rmse(y, x) / rmse(x, np.zeros_like(x))
        assert rel <= bound[b.ggml_type], (name, b.ggml_type.name, rel)


def test_keep_layers_cli_writes_a_small_loadable_file(source_path: str, tmp_path) -> None:
    """The small real-weights file for the GPU machine: 2 blocks, tied embedding/head in Q5_0 (Q8_0 alone is 30 MB)."""
    out = str(tmp_path / "small.gguf")
    argv = ["quantize", source_path, out, "--keep-layers", "2", "--output-tensor-type", "Q5_0", "--quiet"]
    assert main(argv) == 0
    assert os.path.getsize(out) < 30e6
    model = open_gguf(out)
    assert model.tensor("token_embd.weight").ggml_type == T.Q5_0
    assert gguf.GGUFReader(out).fields["llama.block_count"].contents() == 2
    assert model.hparams.n_layers == 2
    assert not any(n.startswith("blk.2.") for n in model.tensors)
    # n = 2: n/8 = 0 and 7n/8 = 1, so only layer 1 uses more bits
    assert [use_more_bits(i, 2) for i in range(2)] == [False, True]
    assert model.tensor("blk.0.ffn_down.weight").ggml_type == T.Q4_K
    assert model.tensor("blk.1.ffn_down.weight").ggml_type == T.Q6_K


def test_cli_errors_are_one_line(source_path: str, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    cases = [
        ["quantize", str(tmp_path / "missing.gguf"), str(tmp_path / "o.gguf")],
        ["quantize", str(bad), str(tmp_path / "o.gguf")],
        ["quantize", source_path, str(tmp_path / "o.gguf"), "--type", "Q3_XYZ"],
        ["quantize", source_path, str(tmp_path / "o.gguf"), "--keep-layers", "99"],
        ["quantize", source_path, str(tmp_path / "o.gguf"), "--output-tensor-type", "Q4_K_Z"],
    ]
    for argv in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "o.gguf").exists()


@pytest.mark.slow
def test_q4_k_m_model_generates_like_the_original(source_path: str, q4km_path: str) -> None:
    """Teacher forcing: the original's 12 greedy tokens after a prompt; the Q4_K_M model must pick the same
    next token at most positions (the bench measures 0.94 over 96 positions) and start with " Paris"."""
    from service.backends.base import SeqChunk, StepBatch
    from service.backends.numpy_backend import NumpyBackend
    from service.model.llama import LlamaModel
    from service.model.tokenizer import Tokenizer

    src = open_gguf(source_path)
    tok = Tokenizer.from_gguf(src)
    prompt = tok.encode("The capital of France is", add_special=False)
    models = [LlamaModel(src, NumpyBackend()), LlamaModel(open_gguf(q4km_path), NumpyBackend())]
    max_pos = len(prompt) + 16
    for m in models:
        m.alloc_kv(m.kv_layout(1, max_pos, 4))
    ids = np.array(prompt, np.int32)
    logits = [m.forward(StepBatch(ids, (SeqChunk(0, 0, len(prompt)),), max_pos))[0] for m in models]
    first = [int(np.argmax(lg)) for lg in logits]
    agree = []
    for step in range(12):
        nxt = int(np.argmax(logits[0]))
        agree.append(int(np.argmax(logits[1])) == nxt)
        batch = StepBatch(np.array([nxt], np.int32), (SeqChunk(0, len(prompt) + step, 1),), max_pos)
        logits = [m.forward(batch)[0] for m in models]
    paris = tok.encode(" Paris", add_special=False)[0]
    assert first == [paris, paris]
    assert np.mean(agree) >= 0.75, agree


def test_q5_k_m_recipe() -> None:
    """Q5_K_M: Q5_K by default, the same Q6_K layers as Q4_K_M; Q5_K falls back to Q5_1 on 576-wide rows."""
    q5 = RECIPES["Q5_K_M"]
    assert q5.file_type == 17
    assert tensor_type("blk.7.ffn_gate.weight", (11008, 4096), q5, 32, True) == T.Q5_K
    assert tensor_type("blk.6.attn_v.weight", (4096, 4096), q5, 32, True) == T.Q6_K
    assert tensor_type("blk.7.attn_v.weight", (4096, 4096), q5, 32, True) == T.Q5_K
    assert tensor_type("blk.7.attn_q.weight", (576, 576), q5, 30, False) == T.Q5_1
