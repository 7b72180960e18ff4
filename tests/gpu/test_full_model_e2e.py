"""End to end on the whole default model (all 30 layers, full vocabulary) and its Q4_K_M requantization.

The NumPy reference runs in the same process (greedy, 3 prompts x 32 tokens); the CUDA backend is then
teacher-forced on NumPy's tokens one decode step at a time, through the CUDA-graph path the engine uses, for
each decode-activation precision (int8x2, the default; int8; f16). Per position: L2-relative logit error, and
top-1 agreement wherever NumPy's top-1 beats its top-2 by more than 0.1. Free-running greedy agreement is
reported.

The 98 MB model does not fit one device call: a device run assembles it into the model cache first (see
bench/RESULTS.md for the command); elsewhere this module skips.
"""

from __future__ import annotations

import json
import os

import pytest

from service.model.llama import LlamaModel

pycuda = pytest.importorskip("pycuda.driver", exc_type=ImportError)
pytestmark = pytest.mark.gpu

from test_backend_e2e import _cuda_backend, compare, greedy_agreement, run_sequences  # noqa: E402

PROMPTS = ["The capital of France is", "Once upon a time, in a small village by the sea,",
           "Water boils at a temperature of"]
RING = dict(max_positions=256, sink_tokens=4)
_REFERENCE: dict = {}  # model -> (logits (P, N, V), tokens (P, N)) of the NumPy run
OUT = os.environ.get("OUT") or os.path.join(os.path.dirname(__file__), "..", "..", "build", "e2e")


def _models():
    from service.model.registry import default_model_path
    path = default_model_path()
    if not os.path.exists(path):
        pytest.skip("default model not in the model cache")
    from service.model.quantize import ensure_q4_k_m_fixture
    return {"Q4_1 (original)": path, "Q4_K_M (requantized)": ensure_q4_k_m_fixture()}


@pytest.fixture(scope="module")
def results():
    data: dict = {}
    yield data
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "full_model_e2e.json"), "w") as f:
        json.dump(data, f, indent=1)


@pytest.mark.parametrize("precision", ["f16", "int8x2", "int8"])
@pytest.mark.parametrize("which", ["Q4_1 (original)", "Q4_K_M (requantized)"])
def test_full_model_teacher_forced_and_greedy(which, precision, results):
    """precision: the decode matmuls' activations: int8x2 (dp4a with a second int8 pass for the residual: the
    default), int8 (one pass: the fastest) or f16 (tiled tensor-core path)."""
    from service.backends.numpy_backend import NumpyBackend
    from service.model.gguf_file import open_gguf
    from service.model.tokenizer import Tokenizer

    g = open_gguf(_models()[which])
    tok = Tokenizer.from_gguf(g)
    prompts = [tok.encode(p) for p in PROMPTS]

    if which not in _REFERENCE:  # NumPy greedy run, once per model
        ref_model = LlamaModel(g, NumpyBackend())
        ref_model.alloc_kv(ref_model.kv_layout(slots=3, dtype="f16", **RING))
        _REFERENCE[which] = run_sequences(ref_model, prompts, max_positions=RING["max_positions"])
    ref_logits, ref_tokens = _REFERENCE[which]

    be = _cuda_backend(max_rows=64, max_seqs=4, int8_decode=precision != "f16", int8x2=precision == "int8x2")
    m = LlamaModel(g, be)
    m.alloc_kv(m.kv_layout(slots=3, dtype="f16", **RING))
    logits, _ = run_sequences(m, prompts, forced=ref_tokens, forward=m.step, max_positions=RING["max_positions"])
    res = compare(logits, ref_logits)

    m2 = LlamaModel(g, be)
    m2.alloc_kv(m2.kv_layout(slots=3, dtype="f16", **RING))
    _, tokens = run_sequences(m2, prompts, forward=m2.step, max_positions=RING["max_positions"])
    res["free_running"] = greedy_agreement(tokens, ref_tokens)
    res["text_numpy"] = [tok.decode(t) for t in ref_tokens]
    res["text_cuda"] = [tok.decode(t) for t in tokens]
    results[f"{which}, {precision} activations"] = res
    print(which, precision, json.dumps(res))
    ok = res["top1_mismatch_decisive"] == 0 and res["max_rel"] < 2e-2
    if precision == "int8" and not ok:
        pytest.xfail(f"int8 activations over 30 layers: max rel {res['max_rel']:.3g}, mean {res['mean_rel']:.3g}, "
                     f"{res['top1_mismatch_decisive']} decisive top-1 mismatches (see bench/RESULTS.md)")
    assert res["top1_mismatch_decisive"] == 0, res
    assert res["max_rel"] < 2e-2, res
