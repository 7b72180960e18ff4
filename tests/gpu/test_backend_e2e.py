"""End to end: the llama forward pass on the CUDA backend vs the NumPy backend, on real and random weights.

1. Random Q4_K/Q6_K weights (the "tiny" dummy shape, built in memory): chunked prefill of two sequences,
   then decode steps past the ring's window (sinks), eager and through the CUDA-graph path; logits within
   2e-2 relative (L2) of NumPy at every step.
2. Real weights: a cut of SmolLM2-135M (first CUT_LAYERS layers, first CUT_VOCAB vocabulary rows, original
   Q4_1 + Q8_0 bytes), with NumPy's greedy tokens and logits computed on the CPU machine and carried as
   build/e2e/reference.npz (make it with `python tests/gpu/test_backend_e2e.py make-reference`). Teacher-forced
   on NumPy's tokens (3 prompts x 32): the GPU's logits within 2e-2 relative at every position, and the same
   top-1 wherever NumPy's top-1 beats its top-2 by more than 0.1; per prompt, batched, and batched through
   CUDA graphs. Free-running greedy agreement and the q8-KV figures are written to build/e2e/results.json.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from service.backends.base import SeqChunk, StepBatch
from service.backends.cuda_matmul import GLU_CONFIGS
from service.model.llama import LlamaModel
from tests.conftest import kernel_launches

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
E2E_DIR = os.path.join(ROOT, "build", "e2e")
CUT_PATH = os.path.join(E2E_DIR, "smollm2-cut.gguf")
REF_PATH = os.path.join(E2E_DIR, "reference.npz")
RESULTS_PATH = os.path.join(E2E_DIR, "results.json")
CUT_LAYERS, CUT_VOCAB = 8, 16384
N_GEN = 32
RING = dict(max_positions=40, sink_tokens=4)  # prompts + 32 tokens run past the window: sinks are exercised
PROMPTS = ["The capital of France is", "Once upon a time, in a small village by the sea,",
           "The three primary colors are", "Water boils at a temperature of"]


# -- step drivers (shared by the reference maker and the tests) ---------------------------------------
def run_sequences(model, prompts, forced=None, batched=False, forward=None, max_positions=40):
    """Prefill each prompt, then N_GEN decode steps (greedy, or `forced` tokens). Returns (logits (P, N_GEN, V),
    tokens (P, N_GEN)): logits[i, j] predicts token j of prompt i's continuation."""
    forward = forward or model.forward
    P = len(prompts)
    logits = [[] for _ in range(P)]
    tokens = [[] for _ in range(P)]
    seen = [0] * P

    def step(items):  # items: [(i, ids)]
        chunks = tuple(SeqChunk(i, seen[i], len(ids)) for i, ids in items)
        batch = StepBatch(np.concatenate([np.asarray(ids, np.int32) for _, ids in items]), chunks, max_positions)
        out = forward(batch)  # (len(items), V)
        for r, (i, ids) in enumerate(items):
            seen[i] += len(ids)
            logits[i].append(np.asarray(out[r], np.float32))
            nxt = int(forced[i][len(tokens[i])]) if forced is not None else int(np.argmax(out[r]))
            tokens[i].append(nxt)

    groups = [list(range(P))] if batched else [[i] for i in range(P)]
    for group in groups:
        step([(i, prompts[i]) for i in group])
        for _ in range(N_GEN - 1):
            step([(i, [tokens[i][-1]]) for i in group])
    return np.stack([np.stack(l) for l in logits]), np.array(tokens, np.int32)


def compare(got: np.ndarray, ref: np.ndarray) -> dict:
    """Per-position L2-relative error and top-1 agreement where NumPy's margin is > 0.1."""
    rel = np.linalg.norm(got - ref, axis=-1) / np.linalg.norm(ref, axis=-1)  # (P, N)
    top2 = np.sort(ref, axis=-1)[..., -2:]  # (P, N, 2)
    decisive = (top2[..., 1] - top2[..., 0]) > 0.1
    same = np.argmax(got, axis=-1) == np.argmax(ref, axis=-1)
    return {"max_rel": float(rel.max()), "mean_rel": float(rel.mean()), "positions": int(rel.size),
            "decisive": int(decisive.sum()), "top1_mismatch_decisive": int((decisive & ~same).sum()),
            "top1_agree_all": float(same.mean())}


def greedy_agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """Free-running greedy: identical tokens, and the common prefix length, per prompt."""
    prefix = [int(np.argmax(np.append(x != y, True))) for x, y in zip(a, b)]
    return {"same_tokens": float((a == b).mean()), "common_prefix": prefix, "n": int(a.shape[1])}


# -- the real-weights cut -----------------------------------------------------------------------------
def make_cut(src: str, dst: str, n_layers: int = CUT_LAYERS, vocab: int = CUT_VOCAB) -> None:
    """First n_layers blocks and first `vocab` embedding rows of a llama GGUF, bytes copied unchanged."""
    import dataclasses

    from service.model.gguf_file import open_gguf
    from service.model.gguf_writer import write_llama_gguf

    g = open_gguf(src)
    tensors = []
    for name, t in g.tensors.items():
        if name.startswith("blk.") and int(name.split(".")[1]) >= n_layers:
            continue
        data = np.asarray(t.data)
        tensors.append((name, t.ggml_type, data[:vocab] if name in ("token_embd.weight", "output.weight") else data))
    write_llama_gguf(dst, dataclasses.replace(g.hparams, n_layers=n_layers, vocab_size=vocab), tensors, "smollm2-cut")


def make_reference() -> None:
    from service.backends.numpy_backend import NumpyBackend
    from service.model.gguf_file import open_gguf
    from service.model.registry import resolve_model_path
    from service.model.tokenizer import Tokenizer

    os.makedirs(E2E_DIR, exist_ok=True)
    src = resolve_model_path(None)
    tok = Tokenizer.from_gguf(open_gguf(src))
    prompts = [ids for ids in (tok.encode(p) for p in PROMPTS) if max(ids) < CUT_VOCAB][:3]
    assert len(prompts) == 3
    make_cut(src, CUT_PATH)
    model = LlamaModel(open_gguf(CUT_PATH), NumpyBackend())
    model.alloc_kv(model.kv_layout(slots=3, dtype="f16", **RING))
    logits, tokens = run_sequences(model, prompts, max_positions=RING["max_positions"])
    flat = np.concatenate([np.asarray(p, np.int32) for p in prompts])
    np.savez(REF_PATH, logits=logits, tokens=tokens, prompts_flat=flat, prompt_lens=np.array([len(p) for p in prompts]))
    print(f"wrote {CUT_PATH} ({os.path.getsize(CUT_PATH) / 2**20:.1f} MiB) and {REF_PATH}: logits {logits.shape}")


# -- tests --------------------------------------------------------------------------------------------
if __name__ != "__main__":
    pycuda = pytest.importorskip("pycuda.driver", exc_type=ImportError)
pytestmark = pytest.mark.gpu


def _cuda_backend(**kw):
    from service.backends.cuda_runtime import CudaUnavailableError

    try:
        from service.backends.cuda_backend import CudaBackend

        return CudaBackend(**kw)
    except CudaUnavailableError as exc:
        pytest.skip(f"no usable GPU: {exc}")


def test_dummy_q4k_model_matches_numpy_eager_and_graphs():
    from service.backends.numpy_backend import NumpyBackend
    from service.model.dummy import dummy_gguf_model

    g = dummy_gguf_model("tiny", seed=3)
    be = _cuda_backend(max_rows=64, max_seqs=4)
    gpu, ref = LlamaModel(g, be), LlamaModel(g, NumpyBackend())
    lay = dict(slots=3, max_positions=32, sink_tokens=4, dtype="f16")
    gpu.alloc_kv(gpu.kv_layout(**lay))
    ref.alloc_kv(ref.kv_layout(**lay))
    rng = np.random.default_rng()
    seen = [0, 0]
    worst = 0.0

    def step(items, use_graph):
        nonlocal worst
        chunks = tuple(SeqChunk(s, seen[s], n) for s, n in items)
        ids = rng.integers(0, g.hparams.vocab_size, sum(n for _, n in items)).astype(np.int32)  # (T,)
        batch = StepBatch(ids, chunks, 32)
        be.poison_activations()
        out = be.forward(gpu, batch) if use_graph else gpu.forward(batch)
        want = ref.forward(batch)
        assert np.isfinite(out).all()
        rel = np.linalg.norm(out - want, axis=-1) / np.linalg.norm(want, axis=-1)
        worst = max(worst, float(rel.max()))
        for s, n in items:
            seen[s] += n

    step([(0, 20), (1, 9)], False)  # chunked prefill: 20 + 17 rows for sequence 0
    step([(0, 17), (1, 1)], False)
    for i in range(8):  # decode past the 32-position ring; graphs are captured on the 2nd step and replayed
        step([(0, 1), (1, 1)], use_graph=i >= 2)
    assert be.graph_replays >= 5
    assert worst < 2e-2, worst


def _prefilled_tiny(model_seed: int, rng_seed: int, n_seqs: int, dtype: str, max_seqs: int, slab: bool = False):
    """The tiny random-weight model on a CUDA backend with sequences 0 .. n_seqs - 1 prefilled (9 + s tokens each,
    48-position ring with 4 sinks); slab: its weights in one slab, as the loader reserves it. Returns (gguf model,
    backend, model, rng, each prefill's last logits row)."""
    from service.model.dummy import dummy_gguf_model

    g = dummy_gguf_model("tiny", seed=model_seed)
    be = _cuda_backend(max_rows=64, max_seqs=max_seqs)
    if slab:
        be.reserve_weights(g)
    gpu = LlamaModel(g, be)
    gpu.alloc_kv(gpu.kv_layout(slots=n_seqs, max_positions=48, sink_tokens=4, dtype=dtype))
    rng = np.random.default_rng(rng_seed)
    V = g.hparams.vocab_size
    last = [gpu.forward(StepBatch(rng.integers(0, V, 9 + s).astype(np.int32), (SeqChunk(s, 0, 9 + s),), 48))[0]
            for s in range(n_seqs)]
    return g, be, gpu, rng, last


@pytest.mark.parametrize("n_seqs,pipe", [(1, False), (3, False), (3, True)])
def test_programmatic_launch_leaves_graph_logits_unchanged(n_seqs, pipe):
    """Decode graphs with programmatic kernel -> kernel edges (kernels launched while their predecessor runs,
    waiting in pdl_wait) give bit-identical logits to graphs with plain edges, step after step. pipe: the
    matmuls on the pipelined kernel (from 1 row), every edge programmatic, its own included."""
    g, be, gpu, rng, _ = _prefilled_tiny(5, n_seqs, n_seqs, "q8", max_seqs=4)
    if pipe:
        be.mm.pipe_min_rows = 1
        be.pdl_plain_into = ()
    tokens = rng.integers(0, g.hparams.vocab_size, (6, n_seqs)).astype(np.int32)  # (steps, seqs)

    def run(pdl: bool) -> tuple[np.ndarray, int, int]:
        be.pdl = pdl
        be._graphs.clear()
        be._seen.clear()
        outs = []
        for i in range(len(tokens)):  # eager, capture, then replays; each step rewrites the same KV positions
            batch = StepBatch(tokens[i], tuple(SeqChunk(s, 9 + s + i, 1) for s in range(n_seqs)), 48)
            outs.append(be.forward(gpu, batch))
        graph = next(iter(be._graphs.values()))[0]
        return np.stack(outs), graph.n_programmatic, graph.n_nodes

    plain, n_plain, _ = run(False)
    prog, n_prog, n_nodes = run(True)
    again, _, _ = run(False)
    assert np.isfinite(prog).all()
    np.testing.assert_array_equal(again, plain)  # the plain graph is deterministic
    np.testing.assert_array_equal(prog, plain)
    # every kernel -> kernel edge of the step: one stream's chain of kernels, 5 or more a layer
    assert n_plain == 0 and n_prog == n_nodes - 1 >= 5 * g.hparams.n_layers


def _decode_steps(be, gpu, tokens: np.ndarray) -> tuple[np.ndarray, list[str], list[str]]:
    """(steps, seqs, vocab) logits of sequences 0 .. seqs - 1 decoding `tokens` (steps,) or (steps, seqs) one a
    step, sequence s from position 9 + s on (as _prefilled_tiny leaves them), through a fresh eager step, the capture
    and graph replays, and the kernels they launched (kernel_launches)."""
    be._graphs.clear()
    be._seen.clear()
    tokens = tokens.reshape(len(tokens), -1)  # (steps, seqs)
    seqs = range(tokens.shape[1])
    with kernel_launches(be) as (launched, fns):
        logits = np.stack([be.forward(gpu, StepBatch(tokens[i], tuple(SeqChunk(s, 9 + s + i, 1) for s in seqs), 48))
                           for i in range(len(tokens))])
    return logits, launched, fns


def test_fused_quantization_leaves_logits_unchanged():
    """At batch 1 with int8x2 activations rms_norm / silu_mul / split-K attention write their output's
    quantization themselves (CudaBackend.fuse_quant): the logits match the separate quantize_act launches (the same
    f32 values quantized the same way; only float rounding could differ) over eager and graph-replayed steps, and
    the fused kernels are what ran: one per norm, silu_mul and attention, no quantize_act_q8x2 left, and no residual
    add or row gather of its own (a decode step's rows all want logits: take_rows passes x on, add deferred)."""
    g, be, gpu, rng, _ = _prefilled_tiny(6, 6, 1, "f16", max_seqs=2)
    be.fuse_glu = False  # (silu_mul apart from gate / up: test_gate_up_silu_mul_in_one_launch_...)
    tokens = rng.integers(0, g.hparams.vocab_size, 6).astype(np.int32)

    def run(fuse: bool) -> tuple[np.ndarray, list[str], list[str]]:
        be.fuse_quant = fuse
        return _decode_steps(be, gpu, tokens)

    n_layers = g.hparams.n_layers
    apart, launched, quantized = run(False)
    steps, rest = divmod(quantized.count("quantize_act_q8x2"), 4 * n_layers + 1)  # steps that launched (not replays)
    assert steps >= 1 and rest == 0 and "rms_norm_quant_x2" not in launched
    fused, launched, quantized = run(True)
    assert launched.count("rms_norm_quant_x2") == steps * (2 * n_layers + 1)
    assert launched.count("silu_mul_quant_x2") == steps * n_layers
    assert not {"add_f32", "take_rows_f32"} & set(launched)  # decode steps: every residual add goes into a norm
    assert sum(name.startswith("attention_split_") for name in launched) == steps * n_layers  # quantizes out too
    assert "quantize_act_q8x2" not in quantized
    assert np.isfinite(fused).all()
    np.testing.assert_allclose(fused, apart, rtol=0, atol=1e-5 * np.abs(apart).max())
    assert (fused.argmax(-1) == apart.argmax(-1)).all()


@pytest.mark.parametrize("n_seqs", [2, 3, 4])
def test_few_sequences_take_the_decode_column_entries_with_fused_quantization(n_seqs):
    """A decode step of 2-4 sequences (int8x2) runs its Q4_K / Q6_K matmuls on the decode kernel's column entries
    (matmul_dec_*c<NC>) and its norms and silu_mul quantize their rows themselves (*_x2_rows): the logits match the
    separate quantize_act launches (the same f32 values quantized the same way) over eager and graph-replayed steps,
    each row's argmax with them, and those kernels are what ran (no quantize launch of a norm's or silu_mul's output
    left: only attention's output, the O projection's input, is quantized apart)."""
    g, be, gpu, rng, _ = _prefilled_tiny(8, 8, n_seqs, "f16", max_seqs=4)
    tokens = rng.integers(0, g.hparams.vocab_size, (6, n_seqs)).astype(np.int32)  # (steps, seqs)

    def run(fuse: bool) -> tuple[np.ndarray, list[str], list[str]]:
        be.fuse_quant = fuse
        return _decode_steps(be, gpu, tokens)

    n_layers = g.hparams.n_layers
    apart, launched, quantized = run(False)
    steps, rest = divmod(quantized.count("quantize_act_q8x2_rows"), 4 * n_layers + 1)  # steps that launched
    assert steps >= 1 and rest == 0 and "rms_norm_quant_x2_rows" not in launched
    fused, launched, quantized = run(True)
    assert launched.count("rms_norm_quant_x2_rows") == steps * (2 * n_layers + 1)
    assert launched.count("silu_mul_quant_x2_rows") == steps * n_layers
    assert quantized.count("quantize_act_q8x2_rows") == steps * n_layers  # attention's output only
    nc = 2 if n_seqs == 2 else 4
    assert any(name.startswith("matmul_dec_") and name.endswith(f"c{nc}") for name in quantized)
    assert not any(name.startswith(("matmul_vec", "matmul_frag")) for name in quantized)
    assert np.isfinite(fused).all()
    np.testing.assert_allclose(fused, apart, rtol=0, atol=1e-5 * np.abs(apart).max())
    assert (fused.argmax(-1) == apart.argmax(-1)).all()


@pytest.mark.parametrize("config", GLU_CONFIGS)
def test_gate_up_silu_mul_in_one_launch_leaves_logits_unchanged(config):
    """At batch 1 gate and up (Q4_K), silu_mul and its quantization run as one launch (CudaBackend.fuse_glu,
    matmul_dec_glu_q4_k_<config>): the same sums, the same silu and the same quantization as the two launches, so
    bit-identical logits over eager steps and graph replays; and that launch is what ran, one per layer."""
    g, be, gpu, rng, _ = _prefilled_tiny(6, 6, 1, "f16", max_seqs=2)
    be.mm.glu_config = config
    tokens = rng.integers(0, g.hparams.vocab_size, 6).astype(np.int32)

    def run(fuse: bool) -> tuple[np.ndarray, list[str], list[str]]:
        be.fuse_glu = fuse
        return _decode_steps(be, gpu, tokens)

    apart, launched, fns = run(False)
    steps = launched.count("silu_mul_quant_x2") // g.hparams.n_layers
    assert steps >= 1 and not any(f.startswith("matmul_dec_glu") for f in fns)
    fused, launched, fns = run(True)
    assert "silu_mul_quant_x2" not in launched
    assert fns.count(f"matmul_dec_glu_q4_k_{config}") == steps * g.hparams.n_layers
    assert be.graph_replays > 0
    np.testing.assert_array_equal(fused, apart)


def test_weight_prefetch_leaves_logits_unchanged():
    """CudaMatmul.prefetch_kb: with the weights in one slab (as the loader reserves it), the output and down
    projections' decode launches prefetch the weights that follow them into L2 through their "f" twins: bit-identical
    logits over eager steps and graph replays, and the twins are what ran."""
    g, be, gpu, rng, _ = _prefilled_tiny(7, 7, 1, "f16", max_seqs=2, slab=True)
    tokens = rng.integers(0, g.hparams.vocab_size, 6).astype(np.int32)
    be.mm.prefetch_kb = 0
    plain, _, fns = _decode_steps(be, gpu, tokens)
    assert not any(f.startswith("matmul_dec") and f.endswith("f") for f in fns)
    be.mm.prefetch_kb = 16  # (the tiny model's tensors are small: a window that stays inside the slab)
    fetched, _, fns = _decode_steps(be, gpu, tokens)
    twins = {f for f in fns if f.startswith("matmul_dec") and f.endswith("f")}
    assert twins, fns
    assert be.graph_replays > 0
    np.testing.assert_array_equal(fetched, plain)


def test_greedy_steps_chain_on_the_device():
    """launch_greedy: each step's argmax is taken on the device and, with follow, read by the next step from where
    it was left (the host never sends the tokens back). Queued one ahead (step n + 1 launched before step n's
    tokens are read), the tokens are those of host-side argmax over `forward`'s logits, step after step, through
    the eager first step, the capture and the replays, for one and for three sequences."""
    _, be, gpu, _, last = _prefilled_tiny(8, 8, 3, "q8", max_seqs=4)
    first = {s: int(np.argmax(row)) for s, row in enumerate(last)}
    n_steps = 7

    def chunks(slots, i):
        return tuple(SeqChunk(s, 9 + s + i, 1) for s in slots)

    for slots in [(0,), (0, 1, 2)]:
        want, toks = [], np.array([first[s] for s in slots], np.int32)
        for i in range(n_steps):  # logits to the host, argmax there (each step rewrites the same KV positions)
            toks = be.forward(gpu, StepBatch(toks, chunks(slots, i), 48)).argmax(-1).astype(np.int32)
            want.append(toks)
        got = []
        prev = gpu.launch_greedy(StepBatch(np.array([first[s] for s in slots], np.int32), chunks(slots, 0), 48))
        for i in range(1, n_steps):
            nxt = gpu.launch_greedy(StepBatch(np.zeros(len(slots), np.int32), chunks(slots, i), 48), follow=prev)
            got.append(prev.result())
            prev = nxt
        got.append(prev.result())
        np.testing.assert_array_equal(np.stack(got), np.stack(want))
        assert len({int(t) for step in want for t in step}) > 2  # the tokens do change along the way


def test_greedy_steps_that_follow_need_no_staging(monkeypatch):
    """A greedy step's last kernel advances the staged positions and cached counts on the device, so a step that
    follows it at the next positions copies nothing from the host; a following step at other positions (here: the
    same ones again) is staged as usual. Either way the tokens are those of host-side argmax over `forward`."""
    _, be, gpu, _, last = _prefilled_tiny(8, 8, 2, "f16", max_seqs=4)
    slots, starts = (0, 1), [9, 10]
    toks0 = np.array([int(np.argmax(last[s])) for s in slots], np.int32)
    plan = [0, 1, 2, 3, 3, 4]  # step i at positions starts + plan[i]: the fifth rewrites the fourth's positions

    def chunks(i):
        return tuple(SeqChunk(s, starts[s] + plan[i], 1) for s in slots)

    want, toks = [], toks0
    for i in range(len(plan)):
        toks = be.forward(gpu, StepBatch(toks, chunks(i), 48)).argmax(-1).astype(np.int32)
        want.append(toks)
    copies = []
    real_copy = be.rt._cuda.memcpy_htod_async

    def counted(dst, src, *a, **kw):
        if be._stage_dev.ptr <= int(dst) < be._stage_dev.ptr + be._stage_dev.nbytes:
            copies.append(int(dst))
        return real_copy(dst, src, *a, **kw)

    monkeypatch.setattr(be.rt._cuda, "memcpy_htod_async", counted)
    got, staged = [], []
    prev = gpu.launch_greedy(StepBatch(toks0, chunks(0), 48))
    staged.append(len(copies))
    for i in range(1, len(plan)):
        nxt = gpu.launch_greedy(StepBatch(np.zeros(len(slots), np.int32), chunks(i), 48), follow=prev)
        staged.append(len(copies))
        got.append(prev.result())
        prev = nxt
    got.append(prev.result())
    np.testing.assert_array_equal(np.stack(got), np.stack(want))
    assert np.diff(staged).tolist() == [0, 0, 0, 1, 0]  # one copy: for the rewritten positions


def test_greedy_tokens_overwritten_unread_are_an_error():
    """The host ring holds TOKEN_RING steps' tokens: reading a step after that many more were launched raises
    rather than returning a later step's tokens."""
    from service.backends.cuda_backend import TOKEN_RING

    _, be, gpu, _, last = _prefilled_tiny(8, 8, 1, "f16", max_seqs=4)
    steps = [gpu.launch_greedy(StepBatch(np.array([int(np.argmax(last[0]))], np.int32), (SeqChunk(0, 9, 1),), 48))]
    for i in range(1, TOKEN_RING + 1):
        steps.append(gpu.launch_greedy(StepBatch(np.zeros(1, np.int32), (SeqChunk(0, 9 + i, 1),), 48),
                                       follow=steps[-1]))
    assert steps[1].result().shape == (1,)
    with pytest.raises(RuntimeError, match="overwritten"):
        steps[0].result()


def test_overlapped_engine_on_the_gpu_gives_the_plain_engines_tokens():
    """LLMEngine with overlapped decode (automatic on CUDA) against the same engine step by step."""
    from service.config import Config, replace
    from service.engine.core import LLMEngine
    from service.engine.request import SamplingParams
    from service.model.dummy import dummy_gguf_model

    g = dummy_gguf_model("tiny", seed=8)
    prompts = [[5, 9, 200, 31], [7] * 11, list(range(40, 60))]
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    results = {}
    for overlap in ("auto", "off"):
        cfg = replace(Config(), cache__slots=3, cache__max_positions=64, engine__max_running=3,
                      engine__overlap_decode=overlap)
        eng = LLMEngine(LlamaModel(g, _cuda_backend(max_rows=64, max_seqs=4)), None, cfg)
        assert eng.overlap == (overlap == "auto")
        results[overlap] = [r.token_ids for r in eng.generate_sync(prompts, params)]
        assert eng.cache.slots_in_use == 0
    assert results["auto"] == results["off"]
    assert all(len(t) == 20 for t in results["auto"])


@pytest.fixture(scope="module")
def real():
    if not (os.path.exists(CUT_PATH) and os.path.exists(REF_PATH)):
        pytest.skip("build/e2e reference missing: python tests/gpu/test_backend_e2e.py make-reference")
    from service.model.gguf_file import open_gguf

    ref = np.load(REF_PATH)
    lens = np.cumsum(ref["prompt_lens"])[:-1]
    prompts = [list(p) for p in np.split(ref["prompts_flat"], lens)]
    return open_gguf(CUT_PATH), prompts, ref["logits"], ref["tokens"]


def _model(g, dtype, **kw):
    be = _cuda_backend(max_rows=64, max_seqs=4, **kw)
    m = LlamaModel(g, be)
    m.alloc_kv(m.kv_layout(slots=3, dtype=dtype, **RING))
    return m, be


def _save(key: str, value: dict) -> None:
    os.makedirs(E2E_DIR, exist_ok=True)
    data = json.load(open(RESULTS_PATH)) if os.path.exists(RESULTS_PATH) else {}
    data[key] = value
    with open(RESULTS_PATH, "w") as f:
        json.dump(data, f, indent=1)


@pytest.mark.parametrize("mode", ["sequential", "sequential-int8x2", "sequential-f16", "batched", "batched-graphs",
                                  "batched-int8x2-graphs"])
def test_real_weights_teacher_forced(real, mode):
    """sequential: one decode row per step on the single-pass int8 (dp4a) vector path; sequential-int8x2: the
    same with the residual pass (the server's default); sequential-f16: the f16 tiled path; batched: 3 rows per
    step (single-pass int8 vector path); -graphs: the steps replayed as CUDA graphs; batched-int8x2-graphs: the
    server's default path for 3 sequences."""
    g, prompts, ref_logits, ref_tokens = real
    m, be = _model(g, "f16", int8_decode=mode != "sequential-f16", int8x2="int8x2" in mode)
    fwd = (lambda b: be.forward(m, b)) if mode.endswith("graphs") else None
    logits, _ = run_sequences(m, prompts, forced=ref_tokens, batched=mode.startswith("batched"), forward=fwd)
    res = compare(logits, ref_logits)
    _save(f"teacher_forced_{mode}", res)
    assert res["top1_mismatch_decisive"] == 0, res
    if mode == "sequential" and res["max_rel"] >= 2e-2:
        pytest.xfail(f"int8 activations on the decode path: max rel {res['max_rel']:.3g} >= 2e-2 (mean "
                     f"{res['mean_rel']:.3g}); int8x2 (the default) and f16 meet it")
    assert res["max_rel"] < 2e-2, res
    if "int8x2" in mode:  # the residual pass: ~3e-4 on this cut (bench/RESULTS.md, round thirteen)
        assert res["max_rel"] < 2e-3, res
    if mode.endswith("graphs"):
        assert be.graph_replays > 0


def test_real_weights_free_running_greedy(real):
    g, prompts, ref_logits, ref_tokens = real
    m, be = _model(g, "f16")
    _, tokens = run_sequences(m, prompts, forward=lambda b: be.forward(m, b))
    res = greedy_agreement(tokens, ref_tokens)
    _save("free_running_greedy_f16", res)
    assert res["common_prefix"][0] >= 1  # the first token follows from the prompt's decisive logits


def test_real_weights_q8_kv(real):
    """q8 KV against the f16 reference: reported (results.json); bounded loosely (int8 keys move logits)."""
    g, prompts, ref_logits, ref_tokens = real
    m, be = _model(g, "q8")
    logits, _ = run_sequences(m, prompts, forced=ref_tokens, batched=True)
    res = compare(logits, ref_logits)
    m2, be2 = _model(g, "q8")
    _, tokens = run_sequences(m2, prompts, forward=lambda b: be2.forward(m2, b))
    res["free_running"] = greedy_agreement(tokens, ref_tokens)
    _save("q8_kv_vs_f16_reference", res)
    assert res["max_rel"] < 0.1, res


if __name__ == "__main__":
    if sys.argv[1:] == ["make-reference"]:
        make_reference()
    else:
        print(__doc__)
