"""GGUF loading: hyper-parameters from metadata, and a clear one-line error for every kind of bad file."""

from __future__ import annotations

import os
import subprocess
import sys

import gguf
import numpy as np
import pytest

from service.errors import ModelFileError, UnsupportedModelError
from service.model.gguf_file import open_gguf
from service.model.registry import resolve_model_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def default_path() -> str:
    return resolve_model_path(None)


def test_default_model_hparams_match_gguf_metadata(default_path):
    m = open_gguf(default_path)
    reader = gguf.GGUFReader(default_path)
    meta = lambda k: reader.fields[k].contents()  # noqa: E731
    hp = m.hparams
    assert hp.n_layers == meta("llama.block_count")
    assert hp.dim == meta("llama.embedding_length")
    assert hp.n_heads == meta("llama.attention.head_count")
    assert hp.n_kv_heads == meta("llama.attention.head_count_kv")
    assert hp.rope.theta == pytest.approx(meta("llama.rope.freq_base"))
    assert hp.norm_eps == pytest.approx(meta("llama.attention.layer_norm_rms_epsilon"))
    assert hp.context_length == meta("llama.context_length")
    assert hp.tied_output  # SmolLM2 has no output.weight
    assert m.output_tensor.name == "token_embd.weight"
    # tensors are views into the memory map, not copies
    assert isinstance(m.tensor("blk.0.attn_q.weight").data, np.memmap) or \
        isinstance(m.tensor("blk.0.attn_q.weight").data.base, np.memmap)


def _write_tiny(path: str, arch: str = "llama", tensor_type=np.float32, drop: str | None = None) -> None:
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    rng = np.random.default_rng(0)
    shapes = {
        "token_embd.weight": (10, 8), "output_norm.weight": (8,),
        "blk.0.attn_norm.weight": (8,), "blk.0.ffn_norm.weight": (8,),
        "blk.0.attn_q.weight": (8, 8), "blk.0.attn_k.weight": (4, 8), "blk.0.attn_v.weight": (4, 8),
        "blk.0.attn_output.weight": (8, 8), "blk.0.ffn_gate.weight": (16, 8), "blk.0.ffn_up.weight": (16, 8),
        "blk.0.ffn_down.weight": (8, 16),
    }
    for name, shape in shapes.items():
        if name == drop:
            continue
        w.add_tensor(name, rng.standard_normal(shape).astype(tensor_type))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_tiny_valid_file_loads(tmp_path):
    p = str(tmp_path / "tiny.gguf")
    _write_tiny(p)
    m = open_gguf(p)
    assert (m.hparams.n_heads, m.hparams.n_kv_heads, m.hparams.head_dim) == (2, 1, 4)


@pytest.mark.parametrize("case,exc,needle", [
    ("missing", ModelFileError, "not found"),
    ("not_gguf", ModelFileError, "not a GGUF"),
    ("truncated", ModelFileError, "truncated"),
    ("arch", UnsupportedModelError, "unsupported architecture 'gpt9'"),
    ("missing_tensor", ModelFileError, "blk.0.ffn_up.weight"),
])
def test_bad_files_raise_named_errors(tmp_path, default_path, case, exc, needle):
    p = str(tmp_path / "bad.gguf")
    if case == "not_gguf":
        open(p, "wb").write(b"PK\x03\x04 this is a zip, not a model" * 10)
    elif case == "truncated":
        with open(default_path, "rb") as src, open(p, "wb") as dst:
            dst.write(src.read(20 * 1024 * 1024))
    elif case == "arch":
        _write_tiny(p, arch="gpt9")
    elif case == "missing_tensor":
        _write_tiny(p, drop="blk.0.ffn_up.weight")
    with pytest.raises(exc) as info:
        open_gguf(p)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("args,needle", [
    (["generate", "--model", "/nonexistent/model.gguf", "--prompt", "hi"], "model file not found"),
    (["generate", "--model", "/etc/hostname", "--prompt", "hi"], "not a GGUF file"),
    (["generate", "--max-positions", "64", "--prompt", "word " * 200], "prompt has 201 tokens; the context limit is 64"),
    (["generate", "--backend", "tpu", "--prompt", "hi"], "--backend must be auto, numpy or cuda"),
])
def test_cli_reports_one_line_error_without_traceback(args, needle):
    proc = subprocess.run([sys.executable, "-m", "service", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
