"""CUDA quantized matmul / embedding kernels == float64 references built from the gguf package's dequantizer.

Weights are fresh random *valid* blocks (random bytes, finite random f16 scale fields) at odd sizes (769 rows,
K = 5120 + 256); outputs are poisoned with NaN before every launch and must come back fully written.

Tolerances (relative Frobenius error ||out - ref|| / ||ref||):
  vector path, quantized weights (x quantized to int8 per 32 values, __dp4a):
      vs float64 with the same int8-quantized x (simulated here in NumPy):  <= 1e-4 (only f32 scaling/summing)
      vs float64 with the exact x: the int8 step of x itself (e_q = ||ref_q - ref|| / ||ref||, computed in
      float64 here) + 2e-4, and e_q <= 1e-2. e_q is ~4.5e-3 for zero-mean weights (the team's ~5e-3 budget);
      random Q4_K/Q4_1 blocks have a per-block offset (the min term), which lifts it to ~7e-3.
  vector path, F16/F32 weights (f32 activations):                           <= 1e-5
  tiled tensor-core path (x and dequantized W rounded to f16, f32 accumulation):
      vs float64 of the same f16-rounded operands:                          <= 1e-4
      vs float64 with exact operands:                                       <= 2e-3
  pipelined Q4_K / Q6_K path: as the tiled path, its f16 weights emulated here from the gguf package's block
      unpacking (the scale products rounded to f16 first, then one rounding of the weight)
  embedding rows: equal to the dequantized rows within 1e-6 relative (f32 fma vs separate rounding).
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES

from service.backends.cuda_matmul import FRAG_AHEAD, VEC_MAX_ROWS, CudaMatmul, repack

N, K = 769, 5120 + 256
TYPES = [T.Q4_K, T.Q6_K, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q5_K, T.F16, T.F32]
# byte offsets of the f16 fields of each block type (random bytes there could be NaN / Inf)
F16_FIELDS = {T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q8_0: (0,),
              T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}


class _Tensor:
    """The QTensor fields upload() reads."""

    def __init__(self, name: str, ggml_type: T, shape: tuple[int, int], data: np.ndarray):
        self.name, self.ggml_type, self.shape, self.data = name, ggml_type, shape, data


def random_weight(ggml_type: T, n: int, k: int, rng: np.random.Generator) -> _Tensor:
    """Random valid storage of an (n, k) tensor; scales like real weights (|d| ~ 1e-2, f16-safe when dequantized)."""
    if ggml_type in (T.F16, T.F32):
        w = (rng.standard_normal((n, k)) * 0.05).astype(np.float16 if ggml_type == T.F16 else np.float32)  # (n, k)
        return _Tensor("w", ggml_type, (n, k), w)
    vals, bb = GGML_QUANT_SIZES[ggml_type]
    raw = rng.integers(0, 256, (n, k // vals, bb), dtype=np.uint8)  # (n, blocks, block bytes)
    for at in F16_FIELDS[ggml_type]:
        f = (rng.standard_normal((n, k // vals)) * 1e-2).astype(np.float16)  # (n, blocks)
        raw[:, :, at:at + 2] = f[..., None].view(np.uint8)
    return _Tensor("w", ggml_type, (n, k), raw.reshape(n, -1))


def dequant64(t: _Tensor) -> np.ndarray:
    """(n, k) float64 weights from the gguf package's dequantizer (independent of our code)."""
    if t.ggml_type in (T.F16, T.F32):
        return np.asarray(t.data, np.float64)
    return quants.dequantize(t.data, t.ggml_type).astype(np.float64).reshape(t.shape)  # (n, k)


def q8_simulated(x: np.ndarray) -> np.ndarray:
    """x (rows, K) f32 after the kernel's activation quantization, as float64 (d*q per 32 values)."""
    b = x.reshape(-1, 32).astype(np.float32)  # (blocks, 32)
    d = (np.abs(b).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)  # (blocks, 1)
    with np.errstate(divide="ignore"):
        inv = np.where(d > 0, np.float32(1) / d, np.float32(0)).astype(np.float32)  # (blocks, 1)
    q = np.rint(b * inv)  # (blocks, 32) float32, round half to even like __float2int_rn
    return (d.astype(np.float64) * q.astype(np.float64)).reshape(x.shape)  # (rows, K)


def q8x2_simulated(x: np.ndarray) -> np.ndarray:
    """x (rows, K) f32 after the two-pass (int8x2) quantization, as float64: d1 q1 as q8_simulated, then the f32
    residual quantized with the fixed scale d2 = d1 / 256 (kernels/act_quant.cuh), clamped to +-127."""
    b = x.reshape(-1, 32).astype(np.float32)  # (blocks, 32)
    d = (np.abs(b).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)  # (blocks, 1)
    with np.errstate(divide="ignore"):
        inv = np.where(d > 0, np.float32(1) / d, np.float32(0)).astype(np.float32)  # (blocks, 1)
    q1 = np.rint(b * inv)  # (blocks, 32)
    r = (b.astype(np.float64) - d.astype(np.float64) * q1).astype(np.float32)  # (blocks, 32) as the kernel's fma
    q2 = np.clip(np.rint(r * (inv * np.float32(256))), -127, 127)  # (blocks, 32)
    d64 = d.astype(np.float64)
    return (d64 * q1 + d64 / 256 * q2).reshape(x.shape)  # (rows, K)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# -- CPU: the upload layout keeps every byte of the file --------------------------------------------
@pytest.mark.parametrize("ggml_type", [t for t in TYPES if t in F16_FIELDS], ids=lambda t: t.name)
def test_repack_is_a_permutation_of_the_block_bytes(ggml_type: T) -> None:
    rng = np.random.default_rng(1)
    t = random_weight(ggml_type, 5, 512, rng)
    ktype, regions = repack(t.ggml_type, t.shape, t.data)
    assert ktype == ggml_type
    assert sum(r.nbytes for r in regions.values()) == t.data.nbytes  # same information, no padding inside
    _, bb = GGML_QUANT_SIZES[ggml_type]
    blocks = t.data.reshape(-1, bb)  # (all blocks, block bytes)
    # every region is a column range of the blocks, in block order
    for r in regions.values():
        width = r.nbytes // blocks.shape[0]
        cols = r.reshape(blocks.shape[0], width)  # (all blocks, width)
        starts = [s for s in range(bb - width + 1) if np.array_equal(blocks[:, s:s + width], cols)]
        assert starts, f"region of width {width} is not a contiguous field of the blocks"


# -- GPU ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpu():
    pytest.importorskip("pycuda.driver", exc_type=ImportError)
    from service.backends.cuda_runtime import CudaRuntime, CudaUnavailableError

    try:
        rt = CudaRuntime(0)
    except CudaUnavailableError as exc:
        pytest.skip(f"no usable CUDA device: {exc}")
    mm = CudaMatmul(rt)
    yield rt, mm


ROUTING = ("use_frag", "frag_vec_rows", "frag_max_rows", "frag_ahead", "split_override", "use_pipe",
           "pipe_min_rows", "pipe_stages")  # CudaMatmul knobs tests pin


@pytest.fixture(autouse=True)
def _routing_reset(request):
    """Tests pin the matmul routing on the shared CudaMatmul; put it back afterwards."""
    if "gpu" not in request.fixturenames:
        yield
        return
    mm = request.getfixturevalue("gpu")[1]
    saved = {name: getattr(mm, name) for name in ROUTING}
    yield
    for name, value in saved.items():
        setattr(mm, name, value)


class _Bufs:
    """Device x / out / workspace for one case, outputs poisoned with NaN."""

    def __init__(self, rt, mm: CudaMatmul, x: np.ndarray, n_out: int):
        self.rt = rt
        self.x = rt.alloc(x.nbytes, "activations", "x")
        rt.htod(self.x, x)
        self.out_shape = (x.shape[0], n_out)
        self.out = rt.alloc(4 * x.shape[0] * n_out, "activations", "out")
        self.ws = rt.alloc(mm.workspace_bytes(x.shape[0], x.shape[1]), "activations", "ws")
        mm.reserve(x.shape[0], x.shape[1], n_out)
        self.poison()

    def poison(self) -> None:
        nan = np.full(self.out_shape, np.nan, np.float32)  # (rows, N)
        self.rt.htod(self.out, nan)
        self.rt.synchronize()

    def result(self) -> np.ndarray:
        host = np.empty(self.out_shape, np.float32)  # (rows, N)
        self.rt.dtoh(host, self.out)
        self.rt.synchronize()
        return host

    def free(self) -> None:
        for b in (self.x, self.out, self.ws):
            self.rt.free(b)


def _matmul_twice(rt, mm: CudaMatmul, x: np.ndarray, w, case, **kw) -> np.ndarray:
    """mm.matmul into NaN-poisoned outputs, twice: every output written, and the second launch gives the same bits
    (split-K partials are summed in a fixed order). Returns the (rows, N) result."""
    bufs = _Bufs(rt, mm, x, w.n)
    try:
        mm.matmul(bufs.x.ptr, x.shape[0], w, bufs.out.ptr, bufs.ws.ptr, **kw)
        out = bufs.result()
        bufs.poison()
        mm.matmul(bufs.x.ptr, x.shape[0], w, bufs.out.ptr, bufs.ws.ptr, **kw)
        again = bufs.result()
    finally:
        bufs.free()
    assert np.isfinite(out).all(), f"{np.isnan(out).sum()} outputs not written {case}"
    assert np.array_equal(out, again), case
    return out


def _multi_outputs(rt, mm: CudaMatmul, x: np.ndarray, ws_: list) -> list[np.ndarray]:
    """mm.matmul_multi of x (rows, K) with the uploaded weights ws_ into NaN-poisoned outputs: each (rows, N_i)."""
    bufs = _Bufs(rt, mm, x, max(w.n for w in ws_))
    outs = [rt.alloc(4 * x.shape[0] * w.n, "activations", f"o{i}") for i, w in enumerate(ws_)]
    try:
        for o, w in zip(outs, ws_):
            rt.htod(o, np.full((x.shape[0], w.n), np.nan, np.float32))
        mm.matmul_multi(bufs.x.ptr, x.shape[0], ws_, [o.ptr for o in outs], bufs.ws.ptr)
        rt.synchronize()
        got = []
        for o, w in zip(outs, ws_):
            host = np.empty((x.shape[0], w.n), np.float32)  # (rows, N_i)
            rt.dtoh(host, o)
            got.append(host)
        return got
    finally:
        bufs.free()
        for b in outs:
            rt.free(b)


@pytest.mark.gpu
@pytest.mark.parametrize("ggml_type", TYPES, ids=lambda t: t.name)
def test_vector_path_matches_float64(gpu, ggml_type: T) -> None:
    rt, mm = gpu
    mm.use_frag = False  # the vector kernel at every row count here (the fragment kernel has its own test)
    rng = np.random.default_rng(int(ggml_type) + 100)
    t = random_weight(ggml_type, N, K, rng)
    w = mm.upload(t)
    w64 = dequant64(t)  # (N, K)
    try:
        for n_rows in (1, 3, 8):
            x = rng.standard_normal((n_rows, K)).astype(np.float32)  # (n_rows, K)
            bufs = _Bufs(rt, mm, x, N)
            mm.matmul(bufs.x.ptr, n_rows, w, bufs.out.ptr, bufs.ws.ptr)
            out = bufs.result()
            bufs.free()
            assert np.isfinite(out).all(), f"{np.isnan(out).sum()} outputs not written (n_rows={n_rows})"
            ref = x.astype(np.float64) @ w64.T  # (n_rows, N)
            if ggml_type in (T.F16, T.F32):
                assert rel(out, ref) <= 1e-5, (n_rows, rel(out, ref))
            else:
                ref_q = q8_simulated(x) @ w64.T  # (n_rows, N)
                e_q = rel(ref_q, ref)  # error of the activation quantization alone
                assert rel(out, ref_q) <= 1e-4, (n_rows, rel(out, ref_q))
                assert e_q <= 1e-2 and rel(out, ref) <= e_q + 2e-4, (n_rows, rel(out, ref), e_q)
    finally:
        rt.free(w.buffer)


@pytest.mark.gpu
@pytest.mark.parametrize("ggml_type", [T.Q4_K, T.Q6_K, T.Q8_0, T.Q4_1, T.Q5_0], ids=lambda t: t.name)
def test_vector_path_int8x2_matches_float64(gpu, ggml_type: T) -> None:
    """--decode-activations int8x2: x ~ d1 q1 + d2 q2 (the residual's int8 pass as extra columns, summed):
    vs float64 of the same two-pass rounding <= 1e-4; vs exact x <= 1e-4 (the rounding itself is ~3e-5)."""
    rt, _ = gpu
    mm = CudaMatmul(rt, int8x2=True)
    mm.use_frag = False  # the vector kernel at every row count here
    rng = np.random.default_rng(int(ggml_type) + 300)
    t = random_weight(ggml_type, N, K, rng)
    w = mm.upload(t)
    w64 = dequant64(t)  # (N, K)
    try:
        for n_rows in (1, 2, 3, 4):  # 3 rows: residual rows start at row 4 (8 columns), not 3
            x = rng.standard_normal((n_rows, K)).astype(np.float32)  # (n_rows, K)
            x[:, 7] *= 60.0  # an outlier channel, as real residual streams have
            bufs = _Bufs(rt, mm, x, N)
            mm.matmul(bufs.x.ptr, n_rows, w, bufs.out.ptr, bufs.ws.ptr)
            out = bufs.result()
            bufs.free()
            assert np.isfinite(out).all(), f"{np.isnan(out).sum()} outputs not written (n_rows={n_rows})"
            ref = x.astype(np.float64) @ w64.T  # (n_rows, N)
            x1 = q8_simulated(x)  # (n_rows, K) float64
            ref_q = q8x2_simulated(x) @ w64.T  # (n_rows, N)
            single = rel(x1 @ w64.T, ref)  # what one int8 pass costs on this input
            assert rel(out, ref_q) <= 1e-4, (n_rows, rel(out, ref_q))
            assert rel(out, ref) <= 1e-4 < single, (n_rows, rel(out, ref), single)
    finally:
        rt.free(w.buffer)


@pytest.mark.gpu
@pytest.mark.parametrize("ggml_type", [T.Q4_K, T.Q6_K], ids=lambda t: t.name)
def test_decode_kernel_matches_float64_and_the_paired_kernel(gpu, ggml_type: T) -> None:
    """The batch-1 decode kernel (kernels/matmul_dec.cu: both int8 passes in one integer sum, x from its lane-ordered
    copy), every compiled configuration of the type: within 1e-4 of float64 on the same two-pass rounding of x and
    within 1e-5 of the paired vector kernel, which computes the same products by another route; deterministic.
    K = 5376 leaves the last 32-unit group partly empty, K = 256 is a single block; N = 769 a partial last block."""
    from service.backends.cuda_matmul import DEC_VARIANTS

    rt, _ = gpu
    mm = CudaMatmul(rt, int8x2=True)
    rng = np.random.default_rng(401 + int(ggml_type))
    for k in (K, 256):
        t = random_weight(ggml_type, N, k, rng)
        w = mm.upload(t)
        w64 = dequant64(t)  # (N, k)
        try:
            x = rng.standard_normal((1, k)).astype(np.float32)  # (1, k)
            x[:, 7] *= 60.0  # an outlier channel
            ref_q = q8x2_simulated(x) @ w64.T  # (1, N)
            mm.use_dec = False
            paired = _matmul_twice(rt, mm, x, w, ("paired", k))
            mm.use_dec = True
            for v in DEC_VARIANTS[w.suffix]:
                out = _matmul_twice(rt, mm, x, w, (v, k), variant=f"dec:{v}")
                assert rel(out, ref_q) <= 1e-4, (v, k, rel(out, ref_q))
                assert rel(out, paired) <= 1e-5, (v, k, rel(out, paired))
        finally:
            rt.free(w.buffer)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", [None, "dec:r2s2", "dec:r1s4"])
def test_decode_kernel_shares_its_input_and_replays(gpu, variant) -> None:
    """At one int8x2 row, matmul_multi (one quantization writing both copies of x, Q4_K matrices through the decode
    kernel three per launch, the Q6_K one through its own) gives bit-identical results to separate calls, and a
    captured graph recomputes them after x changes in place. The pipelined variants' warps walk row groups across
    the three matrices."""
    from service.backends.cuda_runtime import CudaGraph

    rt, _ = gpu
    mm = CudaMatmul(rt, int8x2=True)
    mm.dec_variant = variant
    rng = np.random.default_rng(402)
    types = (T.Q4_K, T.Q6_K, T.Q4_K, T.Q4_K, T.Q4_K, T.Q6_K)  # Q4_K: a 3-matrix launch + a single one; Q6_K: 2
    ws_ = [mm.upload(random_weight(tp, N - 3 * i, K, rng)) for i, tp in enumerate(types)]
    x = rng.standard_normal((1, K)).astype(np.float32)  # (1, K)
    bufs = _Bufs(rt, mm, x, N)
    outs = [rt.alloc(4 * N, "activations", f"o{i}") for i in range(len(ws_))]

    def separate() -> list[np.ndarray]:
        res = []
        for w in ws_:
            bufs.poison()
            mm.matmul(bufs.x.ptr, 1, w, bufs.out.ptr, bufs.ws.ptr)
            res.append(bufs.result()[:, :w.n].copy())  # (1, N_i)
        return res

    def fetched() -> list[np.ndarray]:
        res = []
        for w, o in zip(ws_, outs):
            host = np.empty((1, w.n), np.float32)  # (1, N_i)
            rt.dtoh(host, o)
            rt.synchronize()
            res.append(host)
        return res

    try:
        want = separate()
        graph = CudaGraph(rt)
        graph.capture(lambda: mm.matmul_multi(bufs.x.ptr, 1, ws_, [o.ptr for o in outs], bufs.ws.ptr))
        graph.replay()
        rt.synchronize()
        for got, ref in zip(fetched(), want):
            assert np.array_equal(got, ref)
        rt.htod(bufs.x, rng.standard_normal((1, K)).astype(np.float32))  # new input, same buffer
        graph.replay()
        rt.synchronize()
        got = fetched()
        for g, ref, old in zip(got, separate(), want):
            assert np.array_equal(g, ref) and not np.array_equal(g, old)
    finally:
        bufs.free()
        for b in outs + [w.buffer for w in ws_]:
            rt.free(b)


@pytest.mark.gpu
def test_decode_prefetch_of_the_next_weights_changes_no_output(gpu) -> None:
    """CudaMatmul.prefetch_kb: a single-matrix decode launch of a weight followed by that many KB inside its slab goes
    through the entry's "f" twin, which prefetches them into L2 when its blocks finish; every configuration gives the
    same bits with and without it, and every twin ran. No prefetch where the window would leave the slab, or for a
    weight of its own."""
    from service.backends.cuda_matmul import DEC_VARIANTS, PREFETCH_ENTRIES

    rt, _ = gpu
    mm = CudaMatmul(rt, int8x2=True)
    rng = np.random.default_rng(404)
    ts = [random_weight(T.Q4_K, N, K, rng), random_weight(T.Q6_K, N, K, rng)]
    size = sum(t.data.nbytes + 4096 for t in ts) + (2 << 20)  # both uploads (regions aligned), then 2 MB more
    slab = rt.reserve("weights", size, "test.prefetch", open_for_alloc=True)
    alone = None
    try:
        ws_ = [mm.upload(t) for t in ts]
        rt.close("weights")
        alone = mm.upload(ts[0])
        assert ws_[0].buffer.slab is slab and ws_[1].buffer.slab is slab and alone.buffer.slab is None
        mm.prefetch_kb = 64 << 10  # more than the slab holds after either
        assert [mm._next_weights(w) for w in ws_ + [alone]] == [0, 0, 0]
        mm.prefetch_kb = 1024
        end = ws_[1].buffer.ptr + ws_[1].buffer.nbytes
        assert [mm._next_weights(w) for w in ws_ + [alone]] == [ws_[1].buffer.ptr, end + -end % 256, 0]
        x = rng.standard_normal((1, K)).astype(np.float32)  # (1, K)
        for w in ws_:
            for v in DEC_VARIANTS[w.suffix]:
                mm.prefetch_kb = 0
                plain = _matmul_twice(rt, mm, x, w, (v, "plain"), variant=f"dec:{v}")
                mm.prefetch_kb = 1024
                fetched = _matmul_twice(rt, mm, x, w, (v, "prefetch"), variant=f"dec:{v}")
                assert np.array_equal(plain, fetched), v
        assert {n + "f" for n in PREFETCH_ENTRIES} <= set(mm._fns)
    finally:
        if alone is not None:
            rt.free(alone.buffer)
        rt.release(slab)


@pytest.mark.gpu
def test_decode_kernel_mixed_types_in_one_launch(gpu) -> None:
    """One or two Q4_K and one Q6_K matrix sharing a decode row (a Q4_K_M layer's Q, K, V) take one DEC_MIXED launch
    (CudaMatmul.dec_mixed): the same bits as a launch per type, within 1e-4 of float64 on the same two-pass rounding
    of x. K = 2304: 36 units, the second 32-unit group partly empty; N = 771 / 770 / 769: partial row groups."""
    from service.backends.cuda_matmul import DEC_MIXED

    rt, _ = gpu
    mm = CudaMatmul(rt, int8x2=True)
    rng = np.random.default_rng(403)
    k = 2304
    launches: list[bool] = []
    real = mm._dec_launch
    mm._dec_launch = lambda *a, mixed=False, **kw: (launches.append(mixed), real(*a, mixed=mixed, **kw))[1]
    for types in ((T.Q6_K, T.Q4_K), (T.Q4_K, T.Q6_K, T.Q4_K)):
        ts = [random_weight(tp, 771 - i, k, rng) for i, tp in enumerate(types)]
        ws_ = [mm.upload(t) for t in ts]
        x = rng.standard_normal((1, k)).astype(np.float32)  # (1, k)
        x[:, 5] *= 40.0  # an outlier channel
        try:
            got = {}
            for mixed in (True, False):
                mm.dec_mixed = mixed
                launches.clear()
                got[mixed] = _multi_outputs(rt, mm, x, ws_)
                assert launches == ([True] if mixed else [False, False]), (types, mixed, launches)
            assert DEC_MIXED in mm._fns
            for i, (t, a, b) in enumerate(zip(ts, got[True], got[False])):
                assert np.isfinite(a).all() and np.array_equal(a, b), (types, i)
                assert rel(a, q8x2_simulated(x) @ dequant64(t).T) <= 1e-4, (types, i)
        finally:
            for w in ws_:
                rt.free(w.buffer)


def _check_f16_operands(rt, mm: CudaMatmul, x: np.ndarray, w, w16: np.ndarray, w64: np.ndarray, case, **kw) -> None:
    """A tensor-core path on f16 operands: within f32 accumulation error (1e-4) of float64 on the same f16-rounded
    operands (x rounded here, the weights as the kernel rounds them: w16), within 2e-3 of float64 on exact ones."""
    out = _matmul_twice(rt, mm, x, w, case, **kw)
    ref16 = x.astype(np.float16).astype(np.float64) @ w16.T  # (n_rows, N)
    ref = x.astype(np.float64) @ w64.T  # (n_rows, N)
    assert rel(out, ref16) <= 1e-4, (case, rel(out, ref16))
    assert rel(out, ref) <= 2e-3, (case, rel(out, ref))


@pytest.mark.gpu
@pytest.mark.parametrize("ggml_type", TYPES, ids=lambda t: t.name)
def test_tiled_path_matches_float64(gpu, ggml_type: T) -> None:
    rt, mm = gpu
    rng = np.random.default_rng(int(ggml_type) + 200)
    t = random_weight(ggml_type, N, K, rng)
    w = mm.upload(t)
    w64 = dequant64(t)  # (N, K)
    w16 = w64.astype(np.float32).astype(np.float16).astype(np.float64)  # (N, K) as the kernel rounds it
    try:
        # (rows, M tile, K splits): None = the launcher's choice; 84 K steps split 5 ways leave a ragged last split
        cases = ((VEC_MAX_ROWS + 1, 32, 1), (VEC_MAX_ROWS + 1, 64, None), (20, 32, 5), (37, 64, 3), (37, 128, None),
                 (64, 64, 8), (512, 64, None), (512, 128, 1), (512, 128, 2))
        for n_rows, tile_m, splits in cases:
            x = rng.standard_normal((n_rows, K)).astype(np.float32)  # (n_rows, K)
            mm.split_override = splits
            case = (n_rows, f"m{tile_m}", f"S={splits}")
            _check_f16_operands(rt, mm, x, w, w16, w64, case, tile_m=tile_m)
    finally:
        rt.free(w.buffer)


@pytest.mark.gpu
@pytest.mark.parametrize("ggml_type", TYPES, ids=lambda t: t.name)
def test_embedding_rows_equal_dequantized_rows(gpu, ggml_type: T) -> None:
    rt, mm = gpu
    rng = np.random.default_rng(int(ggml_type) + 300)
    t = random_weight(ggml_type, N, K, rng)
    table = mm.upload(t)
    w64 = dequant64(t)  # (N, K)
    ids = np.concatenate([[0, N - 1, 5, 5], rng.integers(0, N, 33)]).astype(np.int32)  # (37,) repeats + ends
    dev_ids = rt.alloc(ids.nbytes, "activations", "ids")
    rt.htod(dev_ids, ids)
    out = rt.alloc(4 * ids.size * K, "activations", "rows")
    rt.htod(out, np.full((ids.size, K), np.nan, np.float32))
    try:
        mm.embedding(table, dev_ids.ptr, ids.size, out.ptr)
        host = np.empty((ids.size, K), np.float32)  # (37, K)
        rt.dtoh(host, out)
        rt.synchronize()
        assert np.isfinite(host).all()
        ref = w64[ids]  # (37, K)
        assert np.max(np.abs(host - ref)) <= 1e-6 * np.max(np.abs(ref))
    finally:
        for b in (table.buffer, dev_ids, out):
            rt.free(b)


@pytest.mark.gpu
def test_shared_quantized_input_and_graph_replay(gpu) -> None:
    """matmul_multi (one quantize_act, same-type matrices in one launch: Q/K/V, gate/up) gives bit-identical
    results to separate calls, and a captured graph recomputes correctly after x changes in place."""
    from service.backends.cuda_runtime import CudaGraph

    rt, mm = gpu
    rng = np.random.default_rng(7)
    types = (T.Q4_K, T.Q6_K, T.Q4_K, T.Q8_0, T.Q4_K, T.Q4_K)  # 4 x Q4_K: a 3-matrix launch + a single one
    ws_ = [mm.upload(random_weight(tp, N - 2 * i, K, rng)) for i, tp in enumerate(types)]  # different N too
    x = rng.standard_normal((2, K)).astype(np.float32)  # (2, K)
    bufs = _Bufs(rt, mm, x, N)
    outs = [rt.alloc(4 * 2 * N, "activations", f"o{i}") for i in range(len(ws_))]
    try:
        separate = []
        for w in ws_:
            bufs.poison()
            mm.matmul(bufs.x.ptr, 2, w, bufs.out.ptr, bufs.ws.ptr)
            separate.append(bufs.result().reshape(-1)[:2 * w.n].reshape(2, w.n))  # out is (2, N_i) contiguous

        def step() -> None:
            mm.matmul_multi(bufs.x.ptr, 2, ws_, [o.ptr for o in outs], bufs.ws.ptr)

        graph = CudaGraph(rt)
        graph.capture(step)
        graph.replay()
        rt.synchronize()
        for w, o, ref in zip(ws_, outs, separate):
            host = np.empty((2, w.n), np.float32)  # (2, N_i)
            rt.dtoh(host, o)
            rt.synchronize()
            assert np.array_equal(host, ref)
        x2 = rng.standard_normal((2, K)).astype(np.float32)  # (2, K) new input, same buffer
        rt.htod(bufs.x, x2)
        graph.replay()
        rt.synchronize()
        for w, o in zip(ws_, outs):
            host = np.empty((2, w.n), np.float32)  # (2, N_i)
            rt.dtoh(host, o)
            rt.synchronize()
            ref_q = q8_simulated(x2) @ dequant64(_Tensor("w", w.ggml_type, (w.n, K), _raw_of(w, rt))).T  # (2, N_i)
            assert rel(host, ref_q) <= 1e-4
        graph.destroy()
    finally:
        bufs.free()
        for b in outs + [w.buffer for w in ws_]:
            rt.free(b)


def _raw_of(w, rt) -> np.ndarray:
    """Rebuild the file's block bytes from the device copy (inverse of repack) -> (N, bytes_per_row)."""
    from service.backends.cuda_matmul import _SPLIT

    vals, bb, fields = _SPLIT[w.ggml_type]
    nblk = w.n * (w.k // vals)
    raw = np.empty((nblk, bb), np.uint8)  # (all blocks, block bytes)
    ptrs = {"q": w.q_ptr, "s": w.s_ptr, "h": w.h_ptr}
    for name, (a, b) in fields.items():
        part = np.empty((nblk, b - a), np.uint8)  # (all blocks, field bytes)
        rt.dtoh(part, ptrs[name])
        rt.synchronize()
        raw[:, a:b] = part
    if w.ggml_type == T.Q6_K:
        assert set(fields) == {"q", "s"}
    return raw.reshape(w.n, -1)


@pytest.mark.gpu
@pytest.mark.parametrize("ggml_type", [T.Q4_K, T.Q6_K], ids=lambda t: t.name)
def test_fragment_kernel_matches_float64(gpu, ggml_type: T) -> None:
    """kernels/matmul_frag.cu (Q4_K / Q6_K, <= 64 rows): exact quants in the MMA, scales in f32, so against float64
    with x rounded to f16 (what the kernel is given) it is within f32 accumulation error (<= 2e-5), and against
    exact x within the f16 rounding of x (<= 2e-3). N = 769 leaves a partial 128-row block; K = 21 blocks makes
    uneven splits; a second launch gives the same bits."""
    rt, mm = gpu
    mm.frag_vec_rows, mm.frag_max_rows, mm.use_pipe = 0, 64, False  # every row count here on the fragment kernel
    rng = np.random.default_rng(int(ggml_type) + 400)
    t = random_weight(ggml_type, N, K, rng)
    w = mm.upload(t)
    w64 = dequant64(t)  # (N, K)
    try:
        for n_rows, splits in ((1, None), (3, 2), (VEC_MAX_ROWS + 1, 1), (13, 5), (32, None), (33, 3), (64, 8),
                               (64, None)):
            x = rng.standard_normal((n_rows, K)).astype(np.float32)  # (n_rows, K)
            x[:, 11] *= 40.0  # an outlier channel
            mm.split_override = splits
            case = (n_rows, f"S={splits}")
            out = _matmul_twice(rt, mm, x, w, case)
            ref_x16 = x.astype(np.float16).astype(np.float64) @ w64.T  # (n_rows, N)
            ref = x.astype(np.float64) @ w64.T  # (n_rows, N)
            assert rel(out, ref_x16) <= 2e-5, (case, rel(out, ref_x16))
            assert rel(out, ref) <= 2e-3, (case, rel(out, ref))
    finally:
        rt.free(w.buffer)


@pytest.mark.gpu
def test_decode_kernel_columns_give_each_row_its_batch_1_bits(gpu) -> None:
    """A few sequences' decode step (2 .. 4 rows, int8x2) on the decode kernel's column entries (matmul_dec_*c<NC>,
    DEC_MIXED's for Q / K / V): each row's outputs are bit-identical to that row alone at batch 1 on the same
    configuration (same quantization, same sums in the same order), within 1e-4 of float64 on the same two-pass
    rounding of x, and the column entries are what ran. K = 2304 (the r2s2 body, 36 units) and K = 5376 (> DEC_SHORT_K:
    each row's K split between a pair of warps); N = 771 / 770 / 769: partial row groups; 3 rows: a padded column."""
    rt, _ = gpu
    mm = CudaMatmul(rt, int8x2=True)
    rng = np.random.default_rng(404)
    names: list[str] = []
    real = mm._dec_launch
    mm._dec_launch = lambda *a, **kw: (names.append(kw.get("cols", 0)), real(*a, **kw))[1]
    for k, types in ((2304, (T.Q4_K, T.Q4_K, T.Q6_K)), (2304, (T.Q6_K,)), (K, (T.Q4_K, T.Q6_K))):
        ts = [random_weight(tp, 771 - i, k, rng) for i, tp in enumerate(types)]
        ws_ = [mm.upload(t) for t in ts]
        try:
            for n_rows in (2, 3, 4):
                x = rng.standard_normal((n_rows, k)).astype(np.float32)  # (rows, k)
                x[:, 5] *= 40.0  # an outlier channel
                names.clear()
                got = _multi_outputs(rt, mm, x, ws_)
                assert names and all(c == n_rows for c in names), (k, types, n_rows, names)
                mm.dec_variant = "dec:r2s2/r2k2s2"  # the column entries' configurations, at one row
                try:
                    for r in range(n_rows):
                        one = x[r:r + 1]
                        for i, (t, single) in enumerate(zip(ts, _multi_outputs(rt, mm, one, ws_))):
                            case = (k, types, n_rows, r, i)
                            assert np.isfinite(got[i][r]).all(), case
                            assert np.array_equal(got[i][r], single[0]), (case, rel(got[i][r:r + 1], single))
                            assert rel(single, q8x2_simulated(one) @ dequant64(t).T) <= 1e-4, case
                finally:
                    mm.dec_variant = None
        finally:
            for w in ws_:
                rt.free(w.buffer)


@pytest.mark.gpu
@pytest.mark.parametrize("ggml_type", [T.Q4_K, T.Q6_K], ids=lambda t: t.name)
def test_fragment_kernel_with_weights_ahead_gives_the_same_bits(gpu, ggml_type: T) -> None:
    """matmul_frag_*_n1a<FRAG_AHEAD> (up to 8 rows, weights loaded blocks ahead, x staged once per split) computes
    mmf_body's sums in the same order: the same bits as the n1 entry, for every split (K = 21 blocks: uneven
    splits, one block a split, all in one), and within f32 accumulation error of float64 on f16 x."""
    rt, mm = gpu
    mm.frag_vec_rows, mm.use_pipe = 0, False
    rng = np.random.default_rng(int(ggml_type) + 450)
    t = random_weight(ggml_type, N, K, rng)
    w = mm.upload(t)
    w64 = dequant64(t)  # (N, K)
    try:
        for n_rows, splits in ((1, None), (2, 21), (5, 2), (8, 5), (8, 1)):
            x = rng.standard_normal((n_rows, K)).astype(np.float32)  # (n_rows, K)
            x[:, 11] *= 40.0
            mm.split_override, mm.frag_ahead = splits, 0
            base = _matmul_twice(rt, mm, x, w, (n_rows, splits))
            mm.frag_ahead = FRAG_AHEAD
            case = (n_rows, f"S={splits}")
            entry = f"matmul_frag_{t.ggml_type.name.lower()}_n1a{FRAG_AHEAD}"
            mm._fns.pop(entry, None)
            out = _matmul_twice(rt, mm, x, w, case)
            assert entry in mm._fns, case  # launched (not the n1 entry's fallback)
            assert np.array_equal(out, base), (case, rel(out, base))
            ref_x16 = x.astype(np.float16).astype(np.float64) @ w64.T  # (n_rows, N)
            assert rel(out, ref_x16) <= 2e-5, (case, rel(out, ref_x16))
    finally:
        rt.free(w.buffer)


def pipe_weights16(t: _Tensor) -> np.ndarray:
    """(n, k) float64: the weights as kernels/matmul_pipe.cu rounds them, f16(q f16(d sc) - f16(dmin m)) for Q4_K
    and f16((q - 32) f16(d sc)) for Q6_K (both products exact in float64 before the one rounding), from the gguf
    package's block unpacking."""
    f16, f64 = np.float16, np.float64
    _, bb = GGML_QUANT_SIZES[t.ggml_type]
    blocks = t.data.reshape(-1, bb)  # (blocks, block bytes)
    nb = blocks.shape[0]
    if t.ggml_type == T.Q4_K:
        d = blocks[:, 0:2].copy().view(f16).astype(f64)  # (nb, 1)
        dmin = blocks[:, 2:4].copy().view(f16).astype(f64)  # (nb, 1)
        sc, m = quants.Q4_K.get_scale_min(blocks[:, 4:16].copy())  # (nb, 8) each
        dsc = (d * sc).astype(f16).astype(f64)  # (nb, 8)
        dm = (dmin * m).astype(f16).astype(f64)  # (nb, 8)
        qs = blocks[:, 16:].reshape(nb, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
        q = (qs & 0x0F).reshape(nb, 8, 32).astype(f64)  # (nb, sub-block, 32)
        w = (q * dsc[:, :, None] - dm[:, :, None]).astype(f16)  # (nb, 8, 32)
    else:
        ql, qh = blocks[:, :128], blocks[:, 128:192]
        scales = blocks[:, 192:208].copy().view(np.int8).astype(f64)  # (nb, 16)
        d = blocks[:, 208:210].copy().view(f16).astype(f64)  # (nb, 1)
        dsc = (d * scales).astype(f16).astype(f64)  # (nb, 16)
        lo = (ql.reshape(nb, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & 0x0F
        hi = (qh.reshape(nb, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 0x03
        q = (lo.reshape(nb, 2, 4, 32) | (hi.reshape(nb, 2, 4, 32) << 4)).astype(f64) - 32  # (nb, 2, 4, 32)
        w = (q.reshape(nb, 16, 16) * dsc[:, :, None]).astype(f16)  # (nb, 16, 16)
    return w.astype(f64).reshape(t.shape)


@pytest.mark.gpu
@pytest.mark.parametrize("ggml_type", [T.Q4_K, T.Q6_K], ids=lambda t: t.name)
def test_pipelined_kernel_matches_float64(gpu, ggml_type: T) -> None:
    """kernels/matmul_pipe.cu (Q4_K / Q6_K, many rows): against float64 of the same f16-rounded operands (weights
    emulated by pipe_weights16, x rounded to f16) within f32 accumulation error (<= 1e-4, the tiled path's bound),
    against exact operands within the f16 rounding (<= 2e-3). The emulation is checked against the gguf
    dequantizer too (same values within f16 rounding). N = 769 leaves a partial 128-row weight tile, 3 / 9 / 33 /
    129 / 200 rows partial x tiles; K = 21 blocks makes uneven splits; a second launch gives the same bits."""
    rt, mm = gpu
    mm.use_pipe, mm.pipe_min_rows, mm.frag_vec_rows = True, 1, 0  # every row count here on the pipelined kernel
    rng = np.random.default_rng(int(ggml_type) + 500)
    t = random_weight(ggml_type, N, K, rng)
    w = mm.upload(t)
    w64 = dequant64(t)  # (N, K)
    w16 = pipe_weights16(t)  # (N, K)
    assert rel(w16, w64) <= 1e-3
    try:
        # (rows, K splits, stages): None = the launcher's choice; x tiles of 16 / 32 / 64 / 128 rows
        for n_rows, splits, stages in ((3, None, None), (9, None, 6), (16, 1, None), (32, 3, 6), (33, 2, None),
                                       (64, None, None), (129, 1, None), (200, 4, 3), (200, 3, None),
                                       (512, None, None), (512, None, 3)):
            x = rng.standard_normal((n_rows, K)).astype(np.float32)  # (n_rows, K)
            x[:, 11] *= 40.0  # an outlier channel
            mm.split_override, mm.pipe_stages = splits, stages
            case = (n_rows, f"S={splits}", f"stages={stages}")
            _check_f16_operands(rt, mm, x, w, w16, w64, case)
    finally:
        rt.free(w.buffer)


@pytest.mark.gpu
def test_pipelined_kernel_several_matrices_in_one_launch(gpu) -> None:
    """matmul_multi on the pipelined path: same-type matrices of different N share one launch (three Q4_K + a
    fourth in a second launch, Q6_K alone), with and without K splits (the partials of all matrices in one
    buffer, splitk_reduce_multi); every output is fully written and matches its float64 reference."""
    rt, mm = gpu
    mm.use_pipe, mm.pipe_min_rows, mm.frag_vec_rows = True, 1, 0
    rng = np.random.default_rng(600)
    types = (T.Q4_K, T.Q6_K, T.Q4_K, T.Q4_K, T.Q4_K)
    ts = [random_weight(tp, N - 100 * i, K, rng) for i, tp in enumerate(types)]  # N 769, 669, ... 369
    ws_ = [mm.upload(t) for t in ts]
    try:
        for n_rows, splits in ((32, None), (32, 4), (130, 1), (200, 3)):
            x = rng.standard_normal((n_rows, K)).astype(np.float32)  # (n_rows, K)
            mm.split_override = splits
            bufs = _Bufs(rt, mm, x, N)
            outs = [rt.alloc(4 * n_rows * w.n, "activations", f"o{i}") for i, w in enumerate(ws_)]
            try:
                for w, o in zip(ws_, outs):
                    rt.htod(o, np.full((n_rows, w.n), np.nan, np.float32))
                mm.matmul_multi(bufs.x.ptr, n_rows, ws_, [o.ptr for o in outs], bufs.ws.ptr)
                x16 = x.astype(np.float16).astype(np.float64)  # (n_rows, K)
                for t, w, o in zip(ts, ws_, outs):
                    host = np.empty((n_rows, w.n), np.float32)  # (n_rows, N_i)
                    rt.dtoh(host, o)
                    rt.synchronize()
                    case = (n_rows, splits, w.n)
                    assert np.isfinite(host).all(), case
                    assert rel(host, x16 @ pipe_weights16(t).T) <= 1e-4, case
            finally:
                bufs.free()
                for o in outs:
                    rt.free(o)
    finally:
        for w in ws_:
            rt.free(w.buffer)
