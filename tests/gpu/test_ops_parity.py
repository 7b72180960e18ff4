"""CUDA backend ops == NumPy reference ops, on fresh random inputs of odd sizes, outputs poisoned first.

Each CUDA op's output buffer is filled with NaN bytes before the launch, so an unwritten element fails the
comparison. Tolerances (max |cuda - numpy| / max |numpy| unless stated):
  rms_norm, silu_mul, add, take_rows, rope: 2e-6 (float32, different summation order / libm)
  attention: 2e-5 (float32 online softmax over splits vs NumPy's two-pass softmax); KV ring bytes: f16 equal,
  q8 equal except <= 0.1 % of int8 values off by one (rint of products computed in a different order); with
  the rotation fused in (GPU FMAs round k differently in the last f32 bit, which can move one f16 or int8
  rounding step): 1e-4 (f16 KV) / 1e-3 (q8 KV: one int8 step of a key is 1/127 of its block's max), and f16
  values / q8 scales equal except <= 0.1 % one rounding apart.
"""

from __future__ import annotations

import numpy as np
import pytest

pycuda = pytest.importorskip("pycuda.driver", exc_type=ImportError)

from service.backends.base import SeqChunk, StepBatch  # noqa: E402
from service.backends.kv_layout import KVLayout  # noqa: E402
from service.backends.numpy_backend import NumpyBackend  # noqa: E402
from service.model.gguf_file import RopeConfig  # noqa: E402
from tests.conftest import kernel_launches  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda_be():
    from service.backends.cuda_runtime import CudaUnavailableError

    try:
        from service.backends.cuda_backend import CudaBackend

        return CudaBackend(max_rows=300, max_seqs=8)
    except CudaUnavailableError as exc:
        pytest.skip(f"no usable GPU: {exc}")


@pytest.fixture
def rng(request):
    return np.random.default_rng(abs(hash(request.node.name)) % 2**32)


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert np.isfinite(got).all(), "unwritten (NaN-poisoned) or non-finite output"
    return float(np.max(np.abs(got.astype(np.float64) - ref)) / max(np.max(np.abs(ref)), 1e-30))


def run_op(be, fn, *args):
    be.poison_activations()
    out = fn(*args)
    return be.to_host(out)


class FakeWeight:
    """A 1-D float32 tensor shaped like service.model.gguf_file.QTensor (for rms_norm weights)."""

    def __init__(self, w):
        from gguf import GGMLQuantizationType

        self.name, self.ggml_type, self.shape, self.data = "norm", GGMLQuantizationType.F32, w.shape, w
        self.type_name = "F32"


@pytest.mark.parametrize("T,D", [(37, 769), (5, 4096), (1, 576)])
def test_rms_norm(cuda_be, rng, T, D):
    x = rng.standard_normal((T, D)).astype(np.float32) * 3  # (T, D)
    w = rng.standard_normal(D).astype(np.float32)  # (D,)
    ref = NumpyBackend().rms_norm(x, w, 1e-5)
    got = run_op(cuda_be, cuda_be.rms_norm, cuda_be.from_host(x), cuda_be.load_weight(FakeWeight(w)), 1e-5)
    assert rel_err(got, ref) < 2e-6


@pytest.mark.parametrize("T,F", [(37, 1031), (3, 11008)])
def test_silu_mul_add(cuda_be, rng, T, F):
    g = rng.standard_normal((T, F)).astype(np.float32) * 4  # (T, F)
    u = rng.standard_normal((T, F)).astype(np.float32)  # (T, F)
    nb = NumpyBackend()
    assert rel_err(run_op(cuda_be, cuda_be.silu_mul, cuda_be.from_host(g), cuda_be.from_host(u)), nb.silu_mul(g, u)) < 2e-6
    assert rel_err(run_op(cuda_be, cuda_be.add, cuda_be.from_host(g), cuda_be.from_host(u)), nb.add(g, u)) == 0.0


def _batch(chunks, max_positions, rng=None):
    T = sum(c.n_new for c in chunks)
    ids = (rng.integers(0, 1000, T) if rng is not None else np.zeros(T)).astype(np.int32)  # (T,)
    return StepBatch(ids, tuple(chunks), max_positions)


def test_take_rows_and_argmax(cuda_be, rng):
    chunks = [SeqChunk(0, 5, 7), SeqChunk(1, 0, 1, want_logits=False), SeqChunk(2, 100, 13), SeqChunk(3, 3, 1)]
    batch = _batch(chunks, 200, rng)
    x = rng.standard_normal((batch.n_tokens, 1001)).astype(np.float32)  # (T, 1001)
    x[3, 17] = x[3, 900] = 50.0  # a tie: the first index wins
    nb = NumpyBackend()
    step = cuda_be.begin_step(batch)
    got = run_op(cuda_be, cuda_be.take_rows, cuda_be.from_host(x), step)
    ref = nb.take_rows(x, nb.begin_step(batch))
    assert rel_err(got, ref) == 0.0
    assert np.array_equal(cuda_be.argmax(cuda_be.from_host(x)), np.argmax(x, axis=1))


ROPES = [
    RopeConfig(n_rot=64, theta=10000.0, mode="normal"),
    RopeConfig(n_rot=64, theta=500000.0, mode="neox"),
    RopeConfig(n_rot=32, theta=10000.0, mode="normal", linear_factor=2.0),  # partial rotation
    RopeConfig(n_rot=64, theta=500000.0, mode="normal",
               freq_factors=tuple(float(f) for f in np.linspace(1.0, 8.0, 32))),  # llama3-style
]


@pytest.mark.parametrize("rope", ROPES, ids=["normal", "neox", "partial-linear", "llama3"])
@pytest.mark.parametrize("sink", [False, True])
def test_rope(cuda_be, rng, rope, sink):
    chunks = [SeqChunk(0, 0, 9), SeqChunk(1, 4093, 1), SeqChunk(2, 150, 21)]
    batch = _batch(chunks, 160, rng)
    n_heads = 5
    x = rng.standard_normal((batch.n_tokens, n_heads * 64)).astype(np.float32)  # (T, 5 * 64)
    nb = NumpyBackend()
    ref = nb.rope(x, nb.begin_step(batch), n_heads, rope, sink=sink)
    step = cuda_be.begin_step(batch)
    got = run_op(cuda_be, cuda_be.rope, cuda_be.from_host(x), step, n_heads, rope, sink)
    assert rel_err(got, ref) < 2e-6


# -- attention over the sink ring -------------------------------------------------------------------
# Each scenario is a list of steps; each step a list of (slot, n_new). n_cached follows from the history.
SCENARIOS = {
    # prefill, then a chunk that wraps past the window, then decode steps past the window, two sequences
    "wrap": [[(0, 23), (1, 5)], [(0, 30), (1, 1)], [(0, 1), (1, 1)], [(0, 1), (1, 40)], [(0, 1), (1, 1)]],
    # a chunk longer than the whole window (only its last `window` tokens survive)
    "long-chunk": [[(2, 3)], [(2, 57)], [(2, 1)], [(2, 1)]],
    # many decoding sequences
    "decode": [[(s, 11 + 7 * s) for s in range(6)]] + [[(s, 1) for s in range(6)]] * 3,
}


def _run_scenario(cuda_be, rng, steps, layout, n_heads, rope=None):
    """Run the steps through both backends' attention (inputs rotated by `rope` first when given: on CUDA the
    three deferred ropes then run fused with the f16 staging) and compare outputs and the KV ring."""
    nb = NumpyBackend()
    np_kv = nb.alloc_kv(layout)
    cu_kv = cuda_be.alloc_kv(layout)
    hd, kvh = layout.head_dim, layout.n_kv_heads
    seen: dict[int, int] = {}
    worst = 0.0
    for step_chunks in steps:
        chunks = [SeqChunk(slot, seen.get(slot, 0), n) for slot, n in step_chunks]
        batch = _batch(chunks, layout.max_positions, rng)
        T = batch.n_tokens
        q = rng.standard_normal((T, n_heads * hd)).astype(np.float32)  # (T, H * hd)
        qs = rng.standard_normal((T, n_heads * hd)).astype(np.float32)
        k = (rng.standard_normal((T, kvh * hd)) * 2).astype(np.float32)  # (T, kvh * hd)
        v = rng.standard_normal((T, kvh * hd)).astype(np.float32)
        for layer in range(layout.n_layers):
            if rope is None:
                ref = nb.attention(q, qs, k, v, np_kv, layer, nb.begin_step(batch), n_heads, kvh)
                step = cuda_be.begin_step(batch)
                got = run_op(cuda_be, cuda_be.attention, cuda_be.from_host(q), cuda_be.from_host(qs),
                             cuda_be.from_host(k), cuda_be.from_host(v), cu_kv, layer, step, n_heads, kvh)
            else:
                ns = nb.begin_step(batch)
                ref = nb.attention(nb.rope(q, ns, n_heads, rope), nb.rope(q, ns, n_heads, rope, sink=True),
                                   nb.rope(k, ns, kvh, rope), v, np_kv, layer, ns, n_heads, kvh)
                step = cuda_be.begin_step(batch)
                cq, ck = cuda_be.from_host(q), cuda_be.from_host(k)
                cuda_be.poison_activations()
                rq, rs, rk = (cuda_be.rope(cq, step, n_heads, rope), cuda_be.rope(cq, step, n_heads, rope, True),
                              cuda_be.rope(ck, step, kvh, rope))
                assert rq.pending and rs.pending and rk.pending  # deferred: attention fuses them
                got = cuda_be.to_host(cuda_be.attention(rq, rs, rk, cuda_be.from_host(v), cu_kv, layer, step,
                                                        n_heads, kvh))
            worst = max(worst, rel_err(got, ref))
            ring = cuda_be.kv_to_host(cu_kv, layer)
            if layout.dtype == "f16" and rope is None:
                assert np.array_equal(ring["k"], np_kv.k[layer]) and np.array_equal(ring["v"], np_kv.v[layer])
            elif layout.dtype == "f16":  # the rotation rounds as NumPy's; a last-bit sin/cos difference may remain
                for name, ref_h in (("k", np_kv.k[layer]), ("v", np_kv.v[layer])):
                    g, r = ring[name].astype(np.float32), ref_h.astype(np.float32)
                    assert np.allclose(g, r, rtol=2e-3, atol=1e-7) and (g != r).mean() <= 1e-3
            else:
                for name, ref_q in (("k", np_kv.k[layer]), ("v", np_kv.v[layer])):
                    diff = np.abs(ring[name].astype(np.int16) - ref_q.astype(np.int16))
                    assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3
                for name in ("k_scale", "v_scale"):
                    g, r = ring[name].astype(np.float32), getattr(np_kv, name)[layer].astype(np.float32)
                    if rope is None:
                        assert np.array_equal(g, r)
                    else:
                        assert np.allclose(g, r, rtol=2e-3, atol=0) and (g != r).mean() <= 1e-3
        for slot, n in step_chunks:
            seen[slot] = seen.get(slot, 0) + n
    return worst


@pytest.mark.parametrize("kernel", ["tiled", "split", "split16"])
@pytest.mark.parametrize("dtype", ["f16", "q8"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("hd,n_heads,n_kv", [(64, 9, 3), (128, 8, 2), (128, 3, 3), (64, 8, 1)],
                         ids=["hd64-g3", "hd128-g4", "hd128-g1", "hd64-g8"])
def test_attention(cuda_be, rng, dtype, scenario, hd, n_heads, n_kv, kernel):
    """kernel "tiled": steps with >= 32 rows and >= 4 rows per sequence take the tiled prefill kernel (the
    others split-K); "split": every step takes split-K; "split16": with 16 keys per split, so that the 40-key
    contexts are merged from up to 3 splits (at the default 64 they take one)."""
    layout = KVLayout(n_layers=2, slots=7, max_positions=40, sink_tokens=4, n_kv_heads=n_kv, head_dim=hd, dtype=dtype)
    before = (cuda_be.use_prefill_kernel, cuda_be.prefill_kernel, cuda_be.split_keys)
    cuda_be.use_prefill_kernel, cuda_be.prefill_kernel = kernel == "tiled", "tiled"
    cuda_be.split_keys = 16 if kernel == "split16" else 64
    try:
        worst = _run_scenario(cuda_be, rng, SCENARIOS[scenario], layout, n_heads)
    finally:
        cuda_be.use_prefill_kernel, cuda_be.prefill_kernel, cuda_be.split_keys = before
    assert worst < 2e-5, worst


@pytest.mark.parametrize("kernel", ["split", "mma"])
@pytest.mark.parametrize("n_heads", [8, 2], ids=["g4", "g1"])
def test_attention_no_sinks_long_context(cuda_be, rng, kernel, n_heads):
    """sink_tokens = 0 (plain sliding window), a 2048-position ring filled by a 290-token prefill + decode; the
    prefill through split-K (f32, 2e-5) or the default tensor-core kernel (MMA_TOL); the decode rows' 291-298 keys
    take 5 splits, with GQA (g4) or without (g1)."""
    layout = KVLayout(n_layers=1, slots=2, max_positions=2048, sink_tokens=0, n_kv_heads=2, head_dim=128, dtype="f16")
    steps = [[(0, 290)], [(0, 1)], [(0, 1), (1, 7)]]
    worst = _with_prefill_kernel(cuda_be, kernel, lambda: _run_scenario(cuda_be, rng, steps, layout, n_heads))
    assert worst < (2e-5 if kernel == "split" else MMA_TOL["f16"]), worst


@pytest.mark.parametrize("half_from", [512, 0], ids=["half-grid", "by-keys"])
def test_decode_attention_takes_half_the_grid_from_half_from_keys(cuda_be, rng, half_from):
    """CudaBackend.split_half_from: decode rows of 584-586 keys (a 2048-position ring, prefilled 2 x 290 + 3) take at
    least half of the split grid (17 of 33 splits: 35 keys each) instead of 10 splits of at least split_keys = 64;
    both within 2e-5 of float64, with sinks."""
    layout = KVLayout(n_layers=1, slots=2, max_positions=2048, sink_tokens=4, n_kv_heads=2, head_dim=128, dtype="f16")
    steps = [[(0, 290)], [(0, 290)], [(0, 3)], [(0, 1)], [(0, 1), (1, 5)]]
    before = cuda_be.split_half_from
    cuda_be.split_half_from = half_from
    try:
        worst = _run_scenario(cuda_be, rng, steps, layout, 8)
    finally:
        cuda_be.split_half_from = before
    assert worst < MMA_TOL["f16"], worst


@pytest.mark.parametrize("kernel", ["split", "mma"])
@pytest.mark.parametrize("dtype", ["f16", "q8"])
@pytest.mark.parametrize("rope", ROPES[:2], ids=["normal", "neox"])
def test_attention_with_fused_rope(cuda_be, rng, dtype, rope, kernel):
    """attention on deferred ropes: one rope launch for q, q_sink, k (+ f16 staging) == NumPy rope + attention."""
    layout = KVLayout(n_layers=1, slots=7, max_positions=40, sink_tokens=4, n_kv_heads=3, head_dim=64, dtype=dtype)
    worst = _with_prefill_kernel(cuda_be, kernel, lambda: _run_scenario(cuda_be, rng, SCENARIOS["wrap"], layout, 9,
                                                                        rope=rope))
    assert worst < ((1e-4 if dtype == "f16" else 1e-3) if kernel == "split" else MMA_TOL[dtype]), worst


@pytest.mark.parametrize("dtype", ["f16", "q8"])
@pytest.mark.parametrize("rope", [ROPES[0], ROPES[2], ROPES[3]], ids=["normal", "partial", "llama3"])
@pytest.mark.parametrize("hd,n_heads,n_kv", [(128, 4, 4), (64, 8, 2)], ids=["hd128-g1", "hd64-g4"])
@pytest.mark.parametrize("split_keys", [64, 16], ids=["one-split", "split16"])
def test_decode_attention_rotates_q_and_k_itself(cuda_be, rng, dtype, rope, hd, n_heads, n_kv, split_keys):
    """At decode (one row per sequence, normal-mode rope) split-K attention rotates q and the new k itself from the
    step's angle table and encodes the new K/V (CudaBackend.fuse_rope): == NumPy rope + attention (outputs and
    ring, as the rope_qk path is held to), the same outputs as the rope_qk path to float rounding, and no
    rope_qk / kv_stage launch at the decode steps. split16: up to 3 splits merged (the row's own key in any)."""
    cuda_be.split_keys = split_keys
    layout = KVLayout(n_layers=1, slots=7, max_positions=40, sink_tokens=4, n_kv_heads=n_kv, head_dim=hd, dtype=dtype)
    steps = SCENARIOS["decode"] + [[(s, 1) for s in range(6)]] * 3  # the later steps wrap the 40-position ring
    try:
        worst = {}
        for fuse in (True, False):
            cuda_be.fuse_rope = fuse
            with kernel_launches(cuda_be) as (launched, _):
                worst[fuse] = _run_scenario(cuda_be, np.random.default_rng(5), steps, layout, n_heads, rope=rope)
            decode_launches = len(steps) - 1  # every step after the prefill
            rotations = sum(n.startswith(("rope_qk", "kv_stage")) for n in launched)
            assert (rotations <= 2) if fuse else (rotations >= decode_launches), (fuse, launched)
            assert launched.count("rope_table_f32") == (decode_launches if fuse else 0)
    finally:
        cuda_be.fuse_rope = True
        cuda_be.split_keys = 64
    assert worst[True] < 1e-3, worst  # f16 KV too: the rotated keys round to f16 (a last-bit angle can flip one)
    assert np.isclose(worst[True], worst[False], rtol=1e-3, atol=0), worst  # the rope_qk path's arithmetic


@pytest.mark.parametrize("dtype", ["f16", "q8"])
@pytest.mark.parametrize("hd,n_heads,n_kv", [(128, 4, 4), (64, 8, 2)], ids=["hd128-g1", "hd64-g4"])
@pytest.mark.parametrize("short_keys", [192, 400])
def test_short_context_decode_attention_in_clusters(cuda_be, rng, dtype, hd, n_heads, n_kv, short_keys):
    """Decode steps whose rows have at most short_keys keys take attention in one cluster of ATT_CLUSTER splits per
    (row, kv head), merged through distributed shared memory (attention_split_rope_c4_*); the others the grid sized
    for the ring. Both == NumPy on a 600-position ring, in steps whose longest rows have 11 keys (one split), 101
    (4 splits of 26 keys merged in the cluster at head_dim 128; 2 of 51 and two idle blocks at 64), 251 (short at
    400: 4 splits of 63 keys, the later iterations' loads after the wait) and 601 (past the ring's end, the window
    wrapped)."""
    from service.backends.cuda_backend import ATT_CLUSTER

    layout = KVLayout(n_layers=1, slots=3, max_positions=600, sink_tokens=4, n_kv_heads=n_kv, head_dim=hd, dtype=dtype)
    steps = [[(0, 10)], [(0, 1)], [(1, 100)], [(0, 1), (1, 1)], [(2, 250)], [(0, 1), (1, 1), (2, 1)], [(2, 300)],
             [(2, 60)], [(0, 1), (1, 1), (2, 1)]]
    longest = [11, 101, 251, 601]  # keys of the longest row of each decode step
    cuda_be.short_keys = short_keys
    try:
        with kernel_launches(cuda_be) as (launched, _):
            worst = _with_prefill_kernel(cuda_be, "split",
                                         lambda: _run_scenario(cuda_be, rng, steps, layout, n_heads, rope=ROPES[0]))
    finally:
        cuda_be.short_keys = 192
    decode = [n for n in launched if n.startswith("attention_split_rope")]
    clustered = [n.startswith(f"attention_split_rope_c{ATT_CLUSTER}_") for n in decode]
    assert clustered == [n <= short_keys for n in longest], launched
    assert worst < 1e-3, worst  # (the rotated keys round to f16, as in the fused-rope tests)


# -- tensor-core prefill attention (kernels/attention_mma.cu) ---------------------------------------
# Tolerance: the kernel feeds the MMAs f16 operands (q * scale * log2(e), K, V and the probabilities P) with f32
# accumulation and an f32 online softmax, so unlike the f32 kernels above (2e-5) it carries f16 rounding
# (relative 2^-12 per operand). bench/attention_mma_error.py emulates exactly that arithmetic in float64 NumPy
# against the exact softmax at this file's input scales (q, v ~ N(0, 1), k ~ N(0, 4)) and sizes (1 head x 60
# rows up to 9 heads x 300 rows, 60..500 keys): max |err| / max |ref| has a median of ~3.7e-4 and a max of
# 9.3e-4 over 90 draws per head_dim with f16 KV; with q8 KV (int8 * scale is not f16-exact, so K and V are
# rounded once more) a median of ~6e-4 and a max of 1.7e-3. The bounds are ~2x those maxima; an indexing or
# masking bug shows as errors of 1e-2 .. 1.
MMA_TOL = {"f16": 2e-3, "q8": 4e-3}

# Every step has >= 32 rows and >= 4 rows per sequence, so every step takes the prefill kernel.
# Layout: max_positions 200, 4 sinks (window 196); key tiles are 64 keys, row tiles 64 / G rows.
MMA_SCENARIOS = {
    # prefill from an empty cache: sinks among the staged keys, several key and row tiles, a partial last tile
    "prefill": [[(0, 150)]],
    # a prefill chunk continuing after a cached prefix (ring keys + staged keys, no wrap yet)
    "continue": [[(0, 70)], [(0, 90)]],
    # past the window: window masks on ring and staged keys, then a ring that has wrapped (ring_position)
    "wrap": [[(0, 120)], [(0, 100)], [(0, 77)]],
    # a chunk longer than the whole window (its early keys fall out of its late rows' window)
    "long-chunk": [[(1, 40)], [(1, 250)]],
    # several sequences in one step, of different lengths and cache states
    "multi": [[(0, 37), (1, 64), (2, 33)], [(0, 45), (1, 33), (2, 120)], [(3, 36), (1, 70)]],
}


def _with_prefill_kernel(cuda_be, kernel, fn):
    """fn() with prefill-heavy steps on `kernel`: "mma" / "tiled", or "split" (every step split-K)."""
    before = (cuda_be.use_prefill_kernel, cuda_be.prefill_kernel)
    cuda_be.use_prefill_kernel = kernel != "split"
    cuda_be.prefill_kernel = kernel if kernel != "split" else "tiled"
    try:
        return fn()
    finally:
        cuda_be.use_prefill_kernel, cuda_be.prefill_kernel = before


@pytest.mark.parametrize("dtype", ["f16", "q8"])
@pytest.mark.parametrize("scenario", sorted(MMA_SCENARIOS))
@pytest.mark.parametrize("hd,n_heads,n_kv", [(64, 9, 3), (128, 8, 2), (128, 3, 3), (64, 8, 1)],
                         ids=["hd64-g3", "hd128-g4", "hd128-g1", "hd64-g8"])
def test_attention_mma(cuda_be, rng, dtype, scenario, hd, n_heads, n_kv):
    """attention_prefill_mma == NumPy attention (outputs within MMA_TOL; the ring appended after it exactly)."""
    layout = KVLayout(n_layers=2, slots=5, max_positions=200, sink_tokens=4, n_kv_heads=n_kv, head_dim=hd, dtype=dtype)
    worst = _with_prefill_kernel(cuda_be, "mma", lambda: _run_scenario(cuda_be, rng, MMA_SCENARIOS[scenario], layout,
                                                                       n_heads))
    assert worst < MMA_TOL[dtype], worst


@pytest.mark.parametrize("dtype", ["f16", "q8"])
@pytest.mark.parametrize("hd", [64, 128])
@pytest.mark.parametrize("G", [1, 2, 3, 4, 8])
def test_attention_mma_every_variant(cuda_be, rng, dtype, hd, G):
    """Every compiled (head_dim, group) variant of attention_prefill_mma, on the several-sequence scenario."""
    n_kv = 2
    layout = KVLayout(n_layers=1, slots=5, max_positions=200, sink_tokens=4, n_kv_heads=n_kv, head_dim=hd, dtype=dtype)
    worst = _with_prefill_kernel(cuda_be, "mma", lambda: _run_scenario(cuda_be, rng, MMA_SCENARIOS["multi"], layout,
                                                                       n_kv * G))
    assert worst < MMA_TOL[dtype], worst


@pytest.mark.parametrize("dtype", ["f16", "q8"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_attention_mma_small_window(cuda_be, rng, dtype, scenario):
    """test_attention's scenarios (window 36, less than one key tile; steps with few rows take split-K)."""
    layout = KVLayout(n_layers=2, slots=7, max_positions=40, sink_tokens=4, n_kv_heads=3, head_dim=64, dtype=dtype)
    worst = _with_prefill_kernel(cuda_be, "mma", lambda: _run_scenario(cuda_be, rng, SCENARIOS[scenario], layout, 9))
    assert worst < MMA_TOL[dtype], worst


def test_attention_mma_no_sinks_long_context(cuda_be, rng):
    """sink_tokens = 0 (no sink tile: q_sink never read), a 2048-position ring, prefill chunks of 290 and 260 rows."""
    layout = KVLayout(n_layers=1, slots=2, max_positions=2048, sink_tokens=0, n_kv_heads=2, head_dim=128, dtype="f16")
    steps = [[(0, 290)], [(0, 1)], [(0, 260), (1, 40)]]
    assert _with_prefill_kernel(cuda_be, "mma", lambda: _run_scenario(cuda_be, rng, steps, layout, 8)) < MMA_TOL["f16"]


def test_attention_mma_sinks_span_tiles(cuda_be, rng):
    """More sinks than one key tile (70 sinks: two sink tiles, the second partial), then the window tiles."""
    layout = KVLayout(n_layers=1, slots=2, max_positions=160, sink_tokens=70, n_kv_heads=2, head_dim=64, dtype="f16")
    steps = [[(0, 100)], [(0, 120)], [(0, 64)]]
    assert _with_prefill_kernel(cuda_be, "mma", lambda: _run_scenario(cuda_be, rng, steps, layout, 4)) < MMA_TOL["f16"]


@pytest.mark.parametrize("dtype", ["f16", "q8"])
def test_attention_mma_with_fused_rope(cuda_be, rng, dtype):
    """attention_prefill_mma on deferred ropes (q, q_sink, k rotated in one launch, + f16 staging)."""
    layout = KVLayout(n_layers=1, slots=5, max_positions=200, sink_tokens=4, n_kv_heads=3, head_dim=64, dtype=dtype)
    worst = _with_prefill_kernel(cuda_be, "mma", lambda: _run_scenario(cuda_be, rng, MMA_SCENARIOS["wrap"], layout, 9,
                                                                       rope=ROPES[0]))
    assert worst < MMA_TOL[dtype], worst
