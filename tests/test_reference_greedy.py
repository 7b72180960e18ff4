"""Greedy decoding of the default model (NumPy backend) against an independent implementation.

The reference is HF transformers running the same GGUF dequantized to float32 (scripts/make_golden_greedy.py
made tests/golden/smollm2_greedy.json and smollm2_first_logits.npz). Our forward shares no code with it:
different RoPE formulation (GGML adjacent pairs on permuted weights vs rotate-half), f16 KV cache, our own
dequantizers. All prompts decode together in one batch (one KV slot each), as the engine runs them.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from service.backends.base import SeqChunk, StepBatch
from service.backends.numpy_backend import NumpyBackend
from service.model.gguf_file import open_gguf
from service.model.llama import LlamaModel
from service.model.registry import resolve_model_path

GOLDEN_DIR = os.path.join(os.path.dirname(__file__), "golden")
MAX_POSITIONS = 128  # every prompt + 32 new tokens fits: no ring wrap-around
SINK_TOKENS = 4
TINY_MARGIN = 1e-3  # a reference top-2 margin below this makes an argmax flip explainable by rounding


@pytest.fixture(scope="module")
def golden() -> dict:
    with open(os.path.join(GOLDEN_DIR, "smollm2_greedy.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def run(golden) -> dict:
    """Greedy-decode every golden prompt with our model; returns ids, margins and first-step logits."""
    with threadpool_limits(limits=1, user_api="blas"):  # one BLAS thread, as service.model.loader runs NumPy
        return _greedy(golden)


def _greedy(golden: dict) -> dict:
    model = LlamaModel(open_gguf(resolve_model_path(None)), NumpyBackend())
    cases = golden["cases"]
    model.alloc_kv(model.kv_layout(len(cases), MAX_POSITIONS, SINK_TOKENS))
    prompts = [c["prompt_ids"] for c in cases]
    assert max(len(p) for p in prompts) + golden["n_new"] <= MAX_POSITIONS
    tokens = np.array([t for p in prompts for t in p], np.int32)  # (sum of prompt lengths,)
    chunks = tuple(SeqChunk(slot, 0, len(p)) for slot, p in enumerate(prompts))
    logits = model.forward(StepBatch(tokens, chunks, MAX_POSITIONS))  # (n_cases, vocab)
    first = logits.copy()  # (n_cases, vocab)
    n_cached = [len(p) for p in prompts]
    ids: list[list[int]] = [[] for _ in cases]
    margins: list[list[float]] = [[] for _ in cases]
    for step in range(golden["n_new"]):
        for s in range(len(cases)):
            top2 = np.sort(logits[s])[-2:]  # (2,)
            ids[s].append(int(np.argmax(logits[s])))
            margins[s].append(float(top2[1] - top2[0]))
        if step == golden["n_new"] - 1:
            break
        nxt = np.array([i[-1] for i in ids], np.int32)  # (n_cases,)
        chunks = tuple(SeqChunk(slot, n_cached[slot], 1) for slot in range(len(cases)))
        logits = model.forward(StepBatch(nxt, chunks, MAX_POSITIONS))  # (n_cases, vocab)
        n_cached = [n + 1 for n in n_cached]
    return {"ids": ids, "margins": margins, "first_logits": first}


def test_golden_covers_three_prompts_and_a_chat_prompt(golden) -> None:
    assert len(golden["cases"]) >= 3 and golden["n_new"] >= 32
    assert any("messages" in c for c in golden["cases"])
    assert all(len(c["generated_ids"]) == golden["n_new"] for c in golden["cases"])


@pytest.mark.slow
def test_greedy_tokens_equal_reference(golden, run) -> None:
    report = []
    for case, ours in zip(golden["cases"], run["ids"]):
        ref = case["generated_ids"]
        if ours != ref:
            k = next(i for i, (a, b) in enumerate(zip(ours, ref)) if a != b)
            report.append(f"{case['name']}: first divergence at step {k}: ours {ours[k]} ref {ref[k]}, "
                          f"reference top-2 margin {case['top2_margins'][k]:.3g}")
    assert not report, report


@pytest.mark.slow
def test_first_step_logits_close_to_reference(golden, run) -> None:
    ref = np.load(os.path.join(GOLDEN_DIR, "smollm2_first_logits.npz"))
    for s, case in enumerate(golden["cases"]):
        want = ref[case["name"]].astype(np.float64)  # (vocab,)
        got = run["first_logits"][s].astype(np.float64)  # (vocab,)
        scale = np.max(np.abs(want))
        rel = np.max(np.abs(got - want)) / scale
        # measured 2e-4..1e-3 (f16 KV cache, summation order); llama.cpp's CPU path (8-bit activations)
        # is 2e-2..3e-2 from the same reference; an indexing or RoPE bug gives O(1)
        assert rel < 5e-3, (case["name"], rel)
        assert np.argsort(got)[-5:].tolist() == np.argsort(want)[-5:].tolist()
