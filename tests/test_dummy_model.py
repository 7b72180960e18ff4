"""Dummy Q4_K_M models and the backend factory, on any machine (no GPU needed).

Checks the 7B shape against llama.cpp's Q4_K_M recipe (types per tensor, byte sizes), that the random blocks
dequantize (through the `gguf` package, an independent implementation) to finite weights of a sane scale, that
a written tiny GGUF loads and runs on the NumPy backend, and that `--backend auto` falls back to NumPy while
`--backend cuda` refuses with a one-line reason where pycuda is missing.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as GGMLType
from gguf import quants

from service.backends.base import SeqChunk, StepBatch
from service.errors import ConfigError
from service.model.dummy import dummy_gguf_model, use_more_bits, write_gguf


def test_7b_shape_matches_llama_cpp_q4_k_m():
    m = dummy_gguf_model("7b")
    types = [t.ggml_type for t in m.tensors.values() if len(t.shape) == 2]
    assert types.count(GGMLType.Q4_K) == 193 and types.count(GGMLType.Q6_K) == 33
    # the layers llama.cpp gives Q6_K attn_v / ffn_down for n = 32: 0-3, 6, 9, ..., 27, 28-31
    assert [i for i in range(32) if use_more_bits(i, 32)] == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    for t in m.tensors.values():
        if len(t.shape) == 2:
            qk, bsz = GGML_QUANT_SIZES[t.ggml_type]
            assert t.data.shape == (t.shape[0], t.shape[1] // qk * bsz)
    assert abs(m.weight_bytes / 2**30 - 3.80) < 0.01  # llama.cpp's 7B Q4_K_M: 3.80 GiB
    gqa = dummy_gguf_model("7b-gqa")
    assert gqa.tensor("blk.0.attn_k.weight").shape == (1024, 4096) and gqa.hparams.n_kv_heads == 8


@pytest.mark.parametrize("name", ["blk.3.attn_q.weight", "blk.0.ffn_down.weight", "output.weight"])
def test_random_blocks_dequantize_to_sane_weights(name):
    t = dummy_gguf_model("7b").tensor(name)
    w = quants.dequantize(np.asarray(t.data[:64]), t.ggml_type).astype(np.float64)  # (64, cols)
    assert np.isfinite(w).all()
    assert 1e-3 < w.std() < 0.2 and abs(w.mean()) < 0.5 * w.std()


def test_tiny_gguf_round_trip_runs_on_numpy(tmp_path):
    from service.backends.numpy_backend import NumpyBackend
    from service.model.gguf_file import open_gguf
    from service.model.llama import LlamaModel

    mem = dummy_gguf_model("tiny", seed=5)
    path = str(tmp_path / "tiny.gguf")
    write_gguf(mem, path)
    g = open_gguf(path)
    assert g.hparams == mem.hparams
    assert g.metadata["tokenizer.ggml.model"] == "no_vocab"  # what llama.cpp needs to load a file without a vocabulary
    for name, t in mem.tensors.items():
        assert np.array_equal(np.asarray(g.tensor(name).data), np.asarray(t.data)), name
    model = LlamaModel(g, NumpyBackend())
    model.alloc_kv(model.kv_layout(slots=1, max_positions=32, sink_tokens=4))
    logits = model.forward(StepBatch(np.array([1, 2, 3], np.int32), (SeqChunk(0, 0, 3),), 32))
    assert logits.shape == (1, g.hparams.vocab_size) and np.isfinite(logits).all() and logits.std() > 0


@pytest.mark.skipif(importlib.util.find_spec("pycuda") is not None, reason="pycuda is installed here")
def test_factory_without_pycuda():
    from service.backends.factory import create_backend, cuda_usable

    ok, why = cuda_usable()
    assert not ok and "pycuda" in why
    assert create_backend("auto").name == "numpy"
    assert create_backend("numpy").name == "numpy"
    with pytest.raises(ConfigError, match="no usable GPU"):
        create_backend("cuda")
    with pytest.raises(ConfigError):
        create_backend("tpu")
