"""Device memory of the 7B-shaped Q4_K_M model (random weights, service/model/dummy.py) with q8 KV.

Definitions:
  process usage = driver's (total - free) (cuMemGetInfo) minus what was in use on the device before this
                  process created its context (NVML, read by CudaRuntime before the context exists; 0 if NVML
                  is missing);
  MemoryStats   = the backend's records: every accounted allocation (weights per tensor and layer, KV per
                  layer, activations / workspaces) plus one "context" line measured once at start-up, after the
                  kernel modules were loaded and before any big allocation.
Checks, after loading and generating (chunked prefill + graph-replayed decode) at a 2048-token context with
q8 KV: process usage <= 5.0 GiB, and MemoryStats' sum within 2 % of process usage (the sum is not derived from
the final usage: a leak, an unaccounted allocation or per-step growth would break it).
Also measured (written to build/e2e/memory.json, not asserted): f16 KV at 2048, q8 at 4096 and 8192, and the
q8-vs-f16 KV agreement (logits, greedy tokens) on the same prompt.
Run this file in its own pytest process: other test files' backends share the CUDA context.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

pycuda = pytest.importorskip("pycuda.driver", exc_type=ImportError)

from service.backends.base import SeqChunk, StepBatch  # noqa: E402
from service.model.llama import LlamaModel  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

GIB = 1 << 30
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_PATH = os.path.join(ROOT, "build", "e2e", "memory.json")
PROMPT, GEN, CHUNK = 300, 24, 128


def generate(be, model, prompt: np.ndarray, n_gen: int, max_positions: int, forced: np.ndarray | None = None):
    """Chunked prefill of `prompt` into slot 0, then n_gen greedy (or forced) decode steps through graphs.
    Returns (logits (n_gen, vocab), tokens (n_gen,))."""
    seen, logits, tokens = 0, [], []
    for a in range(0, len(prompt), CHUNK):
        ids = prompt[a:a + CHUNK].astype(np.int32)  # (<= CHUNK,)
        out = model.forward(StepBatch(ids, (SeqChunk(0, seen, len(ids)),), max_positions))
        seen += len(ids)
    for i in range(n_gen):
        logits.append(out[0])
        tokens.append(int(forced[i]) if forced is not None else int(np.argmax(out[0])))
        out = be.forward(model, StepBatch(np.array([tokens[-1]], np.int32), (SeqChunk(0, seen, 1),), max_positions))
        seen += 1
    return np.stack(logits), np.array(tokens)


def figures(be) -> dict:
    be.rt.synchronize()
    recs = [r for r in be.memory_records() if r.device]
    by_cat: dict[str, int] = {}
    for r in recs:
        by_cat[r.category] = by_cat.get(r.category, 0) + r.nbytes
    info = be.device_info()
    used = info["process_used_bytes"]
    total = sum(by_cat.values())
    return {"process_used_gib": used / GIB, "memorystats_sum_gib": total / GIB,
            "by_category_gib": {k: v / GIB for k, v in by_cat.items()},
            "kv_layers": len({r.layer for r in recs if r.category == "kv" and r.layer is not None}),
            "weight_tensors": sum(1 for r in recs if r.category == "weights"),
            "mismatch_pct": 100.0 * (total - used) / used, "baseline_used_bytes": info["baseline_used_bytes"],
            "device": info["device"], "total_gib": info["total_bytes"] / GIB}


def test_7b_q4km_memory_and_q8_kv():
    from service.backends.cuda_backend import CudaBackend
    from service.backends.cuda_runtime import CudaUnavailableError
    from service.model.dummy import dummy_gguf_model

    try:
        be = CudaBackend(max_rows=CHUNK, max_seqs=1)
    except CudaUnavailableError as exc:
        pytest.skip(f"no usable GPU: {exc}")
    t0 = time.time()
    g = dummy_gguf_model("7b")
    be.reserve_weights(g)  # one slab for all weights (what the loader does on CUDA)
    model = LlamaModel(g, be)
    load_s = time.time() - t0
    rng = np.random.default_rng()
    prompt = rng.integers(0, g.hparams.vocab_size, PROMPT)  # (PROMPT,)
    results: dict = {"load_s": load_s}

    def run(ctx: int, dtype: str, forced=None):
        kv = model.alloc_kv(model.kv_layout(slots=1, max_positions=ctx, sink_tokens=4, dtype=dtype))
        logits, tokens = generate(be, model, prompt, GEN, ctx, forced)
        fig = figures(be)
        be.free_kv(kv)
        return fig, logits, tokens

    fig, logits_q8, tokens_q8 = run(2048, "q8")
    results["ctx2048_q8"] = fig
    # the headline checks, before anything else is allocated
    assert be.graph_replays > 0
    assert fig["kv_layers"] == 32 and fig["weight_tensors"] >= 226
    assert fig["process_used_gib"] <= 5.0, fig
    assert abs(fig["mismatch_pct"]) <= 2.0, fig

    results["ctx2048_f16"], logits_f16, tokens_f16 = run(2048, "f16")
    # q8 KV vs f16 KV: free-running greedy tokens, and logits teacher-forced on the f16 tokens
    _, logits_q8_tf, _ = run(2048, "q8", forced=tokens_f16)
    rel = np.linalg.norm(logits_q8_tf - logits_f16, axis=-1) / np.linalg.norm(logits_f16, axis=-1)
    results["q8_vs_f16"] = {"logits_rel_max": float(rel.max()), "logits_rel_mean": float(rel.mean()),
                            "greedy_same_tokens": float((tokens_q8 == tokens_f16).mean()),
                            "greedy_common_prefix": int(np.argmax(np.append(tokens_q8 != tokens_f16, True)))}
    for ctx in (4096, 8192):
        results[f"ctx{ctx}_q8"] = run(ctx, "q8")[0]
    os.makedirs(os.path.dirname(OUT_PATH), exist_ok=True)
    with open(OUT_PATH, "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps(results, indent=1))
