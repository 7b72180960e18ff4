"""CUDA backend: every Backend op on device buffers with our kernels (kernels/*.cu), weights quantized on the GPU.

Same semantics as `numpy_backend.py`, op for op (the parity tests in tests/gpu/ hold them together):
  - activations are float32 row-major (rows, cols) device buffers from a recycling pool (`ActivationPool`):
    an op's output is a pooled buffer that goes back to the pool when its Python handle dies, so a step
    allocates nothing once the pool has seen the step's shape (the first step of a shape grows it);
  - every per-step value (token ids, positions, row -> sequence, slots, n_cached, row starts, logits rows)
    lives in one int32 device block written by a single async copy from pinned staging in `begin_step`;
    launch shapes depend only on (T, S') and static sizes, so a decode step can be captured as a CUDA graph
    and replayed (`forward`, keyed by the batch shape);
  - KV: one device arena per layer holding K and V of every slot, f16 or int8 + f16 scale per 32 values
    (`kv_layout.py`); attention reads the ring plus the step's new K/V (staged in the storage format), and
    the survivors are appended after attention, exactly like the NumPy twin.
Matrix products and embedding rows go through `CudaMatmul` (service/backends/cuda_matmul.py).

Fewer launches (what a decode step's time is mostly made of at batch 1): `add`, `matmul` and `rope` return
tensors whose launch is deferred to their first consumer (`Deferred`); then the residual add runs fused into
the following rms_norm, the matmuls sharing one input (Q/K/V, gate/up) run as one multi-matrix launch over one
int8 quantization of the input, and attention's three rotations (q, q at sink positions, k) run as one
launch. Any other consumer (to_host, take_rows, ...) just issues the deferred op as it is.
"""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from service.backends.base import MemoryRecord, StepBatch
from service.backends.cuda_runtime import CudaGraph, CudaRuntime, DeviceBuffer
from service.backends.kv_layout import Q8_BLOCK, KVLayout
from service.model.dequant import dequantize

ATT_THREADS = 128
ATT_HEAD_DIMS = (64, 128)  # compiled attention variants (kernels/attention.cu)
ATT_GROUPS = (1, 2, 3, 4, 8)
PF_TILE = 16  # rows per prefill-attention tile (kernels/attention.cu)
MMA_THREADS = 128  # block of attention_prefill_mma (kernels/attention_mma.cu)
MMA_VECTORS = 64  # query vectors (rows x heads of one kv head) per attention_prefill_mma block
ROPE_MAX_HALF = 256  # most rotated pairs per head kernels/rope.cu's rope_qk keeps angles for
ATT_MAX_SPLITS = 64  # most key splits of decode attention (COMBINE_MAX_SPLITS in kernels/attention.cu)
ATT_CLUSTER = 4  # blocks per cluster of attention_split_rope_c4_* (ATT_CLUSTER in kernels/attention.cu)
ATT_STAGES = 4  # iterations of keys a split-K block has in flight, the first before its wait (kernels/attention.cu)
TOKEN_RING = 4  # greedy steps whose tokens the host ring holds at once (a step follows one in flight, at most)
# decode attention's split grid, CudaBackend's defaults (split_keys, split_blocks_per_sm, split_half_from below)
SPLIT_KEYS, SPLIT_BLOCKS_PER_SM, SPLIT_HALF_FROM = 64, 8, 512


class CudaTensor:
    """A (rows, cols) float32 activation in a pooled device buffer; the buffer returns to the pool on death."""

    __slots__ = ("buf", "rows", "cols", "pool", "key", "pending", "__weakref__")

    def __init__(self, buf: DeviceBuffer, rows: int, cols: int, pool: "ActivationPool | None", key: Any):
        self.buf, self.rows, self.cols, self.pool, self.key = buf, rows, cols, pool, key
        self.pending: Deferred | None = None  # the launch that will fill buf, not issued yet

    @property
    def ptr(self) -> int:
        return self.buf.ptr

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    def __del__(self) -> None:
        if self.pool is not None:
            self.pool.release(self.key, self.buf)


@dataclass
class Deferred:
    """An op whose launch waits for its first consumer, so it can be fused with its neighbours:
    add -> add+rms_norm, matmuls of one input -> one multi-matrix launch, the three ropes of a layer -> one."""

    kind: str  # "add" | "matmul" | "rope"
    args: tuple


class ActivationPool:
    """float32 device buffers keyed by (cols, capacity rows), recycled LIFO. Capacity is `small_rows` for
    steps up to that many rows (decode, logits) and `max_rows` otherwise (prefill)."""

    def __init__(self, rt: CudaRuntime, max_rows: int, small_rows: int):
        self.rt, self.max_rows, self.small_rows = rt, max_rows, small_rows
        self._free: dict[tuple[int, int], list[DeviceBuffer]] = {}
        self.all: list[DeviceBuffer] = []
        self.grown = 0  # buffers allocated so far (constant once every step shape has been seen)

    def get(self, rows: int, cols: int) -> CudaTensor:
        if rows > self.max_rows:
            raise ValueError(f"step has {rows} rows; this backend was sized for {self.max_rows}")
        cap = self.small_rows if rows <= self.small_rows else self.max_rows
        key = (cols, cap)
        free = self._free.setdefault(key, [])
        if free:
            buf = free.pop()
        else:
            buf = self.rt.alloc(4 * cap * cols, "activations", f"act.{cap}x{cols}.{self.grown}")
            self.all.append(buf)
            self.grown += 1
        return CudaTensor(buf, rows, cols, self, key)

    def release(self, key: tuple[int, int], buf: DeviceBuffer) -> None:
        self._free[key].append(buf)

    def poison(self) -> None:
        """Fill every free buffer with 0xFF bytes (a NaN float32) so unwritten outputs show up in tests."""
        for bufs in self._free.values():
            for b in bufs:
                self.rt.memset_u8(b, 0xFF, b.nbytes)


@dataclass
class VecWeight:
    buf: DeviceBuffer  # (n,) float32
    n: int


@dataclass
class MatWeight:
    dw: Any  # CudaMatmul's DeviceWeight
    rows: int  # N (output features)
    cols: int  # K (input features)
    ggml_type: str


@dataclass
class CudaKVArena:
    """Device KV ring for every layer plus the step's staging rows (storage format)."""

    layout: KVLayout
    layers: list[DeviceBuffer]  # per layer: K values, V values, [K scales, V scales]
    k: list[int]  # per layer device pointers
    v: list[int]
    ks: list[int]  # 0 for f16
    vs: list[int]
    st_k: DeviceBuffer  # (max_rows, kv_dim) f16 or int8
    st_v: DeviceBuffer
    st_ks: DeviceBuffer | None  # (max_rows, kv_dim / 32) f16 for q8
    st_vs: DeviceBuffer | None
    slab: Any = None  # the runtime Slab holding every layer

    @property
    def kv_dim(self) -> int:
        return self.layout.n_kv_heads * self.layout.head_dim

    @property
    def value_bytes(self) -> int:
        """Bytes of one tensor's values (K or V) in one layer."""
        lay = self.layout
        return lay.slots * lay.max_positions * self.kv_dim * (2 if lay.dtype == "f16" else 1)

    @property
    def scale_bytes(self) -> int:
        lay = self.layout
        return 0 if lay.dtype == "f16" else lay.slots * lay.max_positions * (self.kv_dim // Q8_BLOCK) * 2


@dataclass
class CudaStep:
    batch: StepBatch
    n_tokens: int  # T
    n_seqs: int  # S
    n_logits: int  # S'
    max_positions: int
    n_tiles: int = 0  # 16-row tiles of the sequences' rows (prefill attention)
    rope_table: Any = None  # the rope config whose angles the step's table holds (CudaBackend._rope_table)
    short: bool = False  # every row has at most CudaBackend.short_keys keys (decode attention in clusters)


@dataclass
class PendingTokens:
    """The tokens of a greedy step launched on the device (LlamaModel.launch_greedy's GreedyTokens)."""

    ring: np.ndarray  # (TOKEN_RING, max_seqs, 2) int32, host-mapped: the step's last kernel (argmax_step_f32)
    serial: int  # writes (serial, token) of row r at [serial % TOKEN_RING, r]
    done: Any  # CUDA event recorded after the step
    slots: tuple[int, ...]  # the step's sequences (a following step must have the same)

    def result(self) -> np.ndarray:
        self.done.synchronize()
        got = self.ring[self.serial % len(self.ring), :len(self.slots)]  # (S, 2)
        if not (got[:, 0] == self.serial).all():  # a later step took the entry: more than TOKEN_RING in flight
            raise RuntimeError(f"greedy step {self.serial}'s tokens were overwritten before they were read")
        return got[:, 1].copy()


class CudaBackend:
    """The Backend protocol on one CUDA device."""

    name = "cuda"

    def __init__(self, rt: CudaRuntime | None = None, max_rows: int = 512, max_seqs: int = 64,
                 kernel_cache_dir: str | None = None, use_graphs: bool = True, int8_decode: bool = True,
                 int8x2: bool = True):
        self.rt = rt or CudaRuntime(0, kernel_cache_dir)
        self.int8_decode = int8_decode  # False: decode matmuls take the f16 tiled path (precise, slower)
        self.int8x2 = int8x2  # int8 decode with a second int8 pass for the activations' residual (precise)
        self.max_rows = int(max_rows)  # T cap of a step (prefill chunk + decode rows)
        self.max_seqs = int(max_seqs)  # S cap of a step
        self.pool = ActivationPool(self.rt, self.max_rows, min(self.max_rows, max(self.max_seqs, 64)))
        self.use_graphs = use_graphs
        self.pdl = True  # decode graphs with programmatic kernel -> kernel edges where that is faster (_pdl_for)
        # kernels whose incoming edges stay plain even so: launched early, the pipelined matmul made 16 / 32 sequences
        # 5 % slower; launched after its predecessor completes, programmatic edges elsewhere gain 1-2 % there
        self.pdl_plain_into: tuple[str, ...] = ("matmul_pipe",)
        # Prefill-heavy steps (>= 32 rows, >= 4 per sequence) take a prefill attention kernel, the others split-K.
        # "mma" (attention_mma.cu, tensor cores, f16 operands: ~4e-4 of max|out| off the f32 paths) is the default:
        # on an H100 (bench/attention_bench.py, 7B shape, 512-token prefill) 57 us per layer vs 344 split-K and
        # 402 for "tiled" (attention.cu, CUDA cores, f32), which is kept and parity-tested as the exact reference.
        self.use_prefill_kernel = True
        self.prefill_kernel = "mma"
        self.defer = True  # deferred add/matmul/rope (fusions); False issues every op at once (profiling)
        # at one row with int8x2 activations, rms_norm, silu_mul and attention's combine write their output's
        # quantization themselves (kernels/quantize_act.cu, attention.cu), so the matmuls after them start from a
        # filled workspace
        self.fuse_quant = True
        # ... and where gate and up are Q4_K on the decode kernel, they, silu_mul and its quantization are one launch
        # (kernels/matmul_dec.cu, dec_glu_body; H200, 7B Q4_K_M batch-1 step: -3.8 % at depth 16, -3.0 % at 2048)
        self.fuse_glu = True
        # at decode, split-K attention rotates q and the new k itself (normal-mode rope, from one angle table per
        # step) instead of taking them from a rope_qk launch
        self.fuse_rope = True
        # fewest keys per split of decode attention: each split beyond a row's first costs the merge of partial states
        self.split_keys = SPLIT_KEYS
        # blocks per SM decode attention's split grid aims at (n_splits)
        self.split_blocks_per_sm = SPLIT_BLOCKS_PER_SM
        # from this many keys on (0: never) a row of decode attention takes at least half the grid's splits, even
        # where that leaves fewer than split_keys keys a split. H200, bench/decode_ab.py, batch 1: 17 splits instead of
        # 9 / 11 / 13 at 512 / 640 / 768 keys -3.7 / -3.8 / -4.2 %; 13 instead of 7 at 384 keys was +0.6 %, hence not
        # below 512 (bench/RESULTS.md, round eleven)
        self.split_half_from = SPLIT_HALF_FROM
        # decode steps whose rows have at most short_keys keys each (0: none) take attention in one cluster of
        # ATT_CLUSTER splits per (row, kv head), merged through distributed shared memory (attention_split_rope_c4_*),
        # not the grid sized for the longest context the ring holds; their CUDA graphs are captured apart. (At
        # head_dim 128 the 4 splits have all their keys in flight before the wait up to 128 keys, 48 at most at 192.)
        self.short_keys = 192
        self._rope_cs: tuple[DeviceBuffer, int] | None = None
        self._mm: Any = None
        self._weights: dict[int, Any] = {}  # id(QTensor) -> handle (a tied head shares token_embd)
        self._max_k = 0
        self._workspace: DeviceBuffer | None = None
        self._inv_freq: dict[tuple, DeviceBuffer] = {}
        self._partials: dict[str, Any] = {}
        self._fn: dict[str, Any] = {}
        # per-step int32 block: ids, pos, row_seq (max_rows each), slot, ncached (max_seqs), row0 (max_seqs+1),
        # logits rows (max_seqs), the prefill tiles' sequence and first row, the greedy step serial (max_rows)
        R, S = self.max_rows, self.max_seqs
        self._max_tiles = (R + PF_TILE - 1) // PF_TILE + S
        NT = self._max_tiles
        self._off = {"ids": 0, "pos": R, "row_seq": 2 * R, "slot": 3 * R, "ncached": 3 * R + S,
                     "row0": 3 * R + 2 * S, "logits": 3 * R + 3 * S + 1, "tile_seq": 3 * R + 4 * S + 1,
                     "tile_row": 3 * R + 4 * S + 1 + NT, "serial": 3 * R + 4 * S + 1 + 2 * NT}
        n_ints = 4 * R + 4 * S + 1 + 2 * NT
        self._stage_host = self.rt.pinned((n_ints,), np.int32, "step.staging")  # (n_ints,) int32
        self._stage_dev = self.rt.alloc(4 * n_ints, "activations", "step.meta")
        self._stage_event = self.rt._cuda.Event()
        self._stage_event.record(self.rt.stream)
        self._host_out: np.ndarray | None = None  # pinned (n,) float32 for to_host
        self._graphs: dict[tuple, tuple[CudaGraph, CudaTensor]] = {}
        self._seen: set[tuple] = set()
        self._capturing = False
        self._step: CudaStep | None = None
        self.graph_replays = 0
        self.last_host_s = 0.0  # host time of the last graph-replayed step up to the replay's launch
        # greedy steps (launch_greedy): the last kernel writes the tokens into a host-mapped ring (PendingTokens), one
        # event per step; each greedy step has a serial number (staged per row), its place in the ring
        self._token_ring = self.rt.pinned((TOKEN_RING, self.max_seqs, 2), np.int32, "step.tokens", mapped=True)
        self._token_ring[:] = -1
        self._token_done = [self.rt._cuda.Event() for _ in range(TOKEN_RING)]
        self._greedy_serial = 0  # the next greedy step's
        self._keep_ids = False  # begin_step leaves the staged ids alone (a greedy step that follows another)
        # what the staging block holds on the device past the ids, as the host last left it (after a greedy step:
        # advanced by its argmax_step_f32), or None if unknown; a step whose staging equals it is not copied
        self._dev_meta: np.ndarray | None = None
        self._last_greedy: PendingTokens | None = None  # the step whose argmax the staged ids hold
        self._ws_x: CudaTensor | None = None  # the input whose int8 quantization the workspace holds
        self._pending_mm: dict[int, list[weakref.ref]] = {}  # id(input) -> deferred matmul outputs on it
        self._weight_slab: Any = None
        self._preload()

    def _preload(self) -> None:
        """Load every kernel module now, so the context's memory is measured with them (MemoryStats)."""
        for module in ("norm", "rope", "elementwise", "argmax", "kv_store", "attention", "attention_mma"):
            self.rt.module(module)
        try:
            self.mm.warm_up()
        except ImportError:  # matmul kernels not installed: ops without weights still work
            pass
        self.rt.measure_context()

    # -- helpers -----------------------------------------------------------------------------------
    def _f(self, module: str, name: str, fmt: str) -> Any:
        fn = self._fn.get(name)
        if fn is None:
            fn = self.rt.function(module, name)
            fn.prepare(fmt)
            self._fn[name] = fn
        return fn

    def _launch(self, module: str, name: str, fmt: str, grid: tuple, block: tuple, *args: Any) -> None:
        self._f(module, name, fmt).prepared_async_call(grid, block, self.rt.stream, *args)

    def _ptr(self, key: str) -> int:
        return self._stage_dev.ptr + 4 * self._off[key]

    def _grid1d(self, n: int, per_block: int = 256) -> tuple[int, int, int]:
        return (max(1, min((n + per_block - 1) // per_block, 8 * self.rt.sm_count)), 1, 1)

    @property
    def mm(self) -> Any:
        if self._mm is None:
            from service.backends import cuda_matmul

            self._mm = cuda_matmul.CudaMatmul(self.rt, cuda_matmul.VEC_MAX_ROWS if self.int8_decode else 0,
                                              int8x2=self.int8x2)
        return self._mm

    def from_host(self, x: np.ndarray) -> CudaTensor:
        """Upload a (rows, cols) float32 array into a pooled tensor (tests, tools)."""
        x = np.ascontiguousarray(x, dtype=np.float32)  # (rows, cols)
        t = self.pool.get(x.shape[0], x.shape[1])
        self.rt._cuda.memcpy_htod_async(t.ptr, x, self.rt.stream)
        self.rt.synchronize()
        return t

    def poison_activations(self) -> None:
        self.pool.poison()

    # -- set-up ------------------------------------------------------------------------------------
    def reserve_weights(self, gguf_model: Any) -> None:
        """Optional, before loading: reserve one device slab for every weight of `gguf_model`, so the
        ~300 tensors cost one driver allocation (no per-allocation rounding, ~0.3 GiB on a 7B model).
        Each tensor is still accounted on its own line."""
        total = 4096  # rope tables
        for t in gguf_model.tensors.values():
            if len(t.shape) == 1:
                total += (4 * int(t.shape[0]) + 255) // 256 * 256
            else:
                total += 2 * t.n_bytes if t.type_name == "BF16" else t.n_bytes  # BF16 is widened to F32
                total += 4 * 256  # per-region alignment of the upload layout + this tensor's own alignment
        self._weight_slab = self.rt.reserve("weights", total, "weights.slab", open_for_alloc=True)

    def load_weight(self, tensor: Any, layer: int | None = None) -> Any:
        key = id(tensor)
        if key in self._weights:
            return self._weights[key]
        if len(tensor.shape) == 1:
            w = dequantize(tensor.data, tensor.ggml_type, tensor.shape).astype(np.float32)  # (n,)
            buf = self.rt.alloc(w.nbytes, "weights", tensor.name, layer, tensor.type_name)
            self.rt._cuda.memcpy_htod(buf.ptr, w)
            handle: Any = VecWeight(buf, int(w.shape[0]))
        else:
            rows, cols = int(tensor.shape[0]), int(tensor.shape[1])
            handle = MatWeight(self.mm.upload(tensor, layer), rows, cols, tensor.type_name)
            self._max_k = max(self._max_k, cols)
        self._weights[key] = handle
        return handle

    def alloc_kv(self, layout: KVLayout) -> CudaKVArena:
        self.rt.close("weights")  # weights are loaded: the slab's tail is not for anything else
        self._graphs.clear()  # captured graphs hold the previous arena's pointers
        self._seen.clear()
        kv_dim = layout.n_kv_heads * layout.head_dim
        q8 = layout.dtype == "q8"
        esize = 1 if q8 else 2
        vbytes = layout.slots * layout.max_positions * kv_dim * esize
        sbytes = layout.slots * layout.max_positions * (kv_dim // Q8_BLOCK) * 2 if q8 else 0
        assert 2 * vbytes + 2 * sbytes == layout.bytes_per_layer
        layers, k, v, ks, vs = [], [], [], [], []
        per_layer = (layout.bytes_per_layer + 255) // 256 * 256
        slab = self.rt.reserve("kv", per_layer * layout.n_layers, "kv.arena")  # one allocation, no rounding
        for i in range(layout.n_layers):
            buf = self.rt.alloc(layout.bytes_per_layer, "kv", f"blk.{i}.kv", i, layout.dtype, slab=slab)
            layers.append(buf)
            k.append(buf.ptr)
            v.append(buf.ptr + vbytes)
            ks.append(buf.ptr + 2 * vbytes if q8 else 0)
            vs.append(buf.ptr + 2 * vbytes + sbytes if q8 else 0)
        R = self.max_rows
        st_k = self.rt.alloc(R * kv_dim * esize, "activations", "kv.staging.k")
        st_v = self.rt.alloc(R * kv_dim * esize, "activations", "kv.staging.v")
        st_ks = self.rt.alloc(R * kv_dim // Q8_BLOCK * 2, "activations", "kv.staging.k_scale") if q8 else None
        st_vs = self.rt.alloc(R * kv_dim // Q8_BLOCK * 2, "activations", "kv.staging.v_scale") if q8 else None
        for buf in layers:  # a fresh arena reads as zeros (like the NumPy twin), never as stale memory
            self.rt.memset_u8(buf, 0, buf.nbytes)
        self.rt.synchronize()
        return CudaKVArena(layout, layers, k, v, ks, vs, st_k, st_v, st_ks, st_vs, slab)

    def free_kv(self, kv: CudaKVArena) -> None:
        """Release an arena (load-time reconfiguration only; graphs captured on it are dropped)."""
        self.rt.synchronize()
        self._graphs.clear()
        self._seen.clear()
        for buf in [kv.st_k, kv.st_v, kv.st_ks, kv.st_vs]:
            if buf is not None:
                self.rt.free(buf)
        if kv.slab is not None:
            self.rt.release(kv.slab)
        else:
            for buf in kv.layers:
                self.rt.free(buf)
        kv.layers.clear()

    def begin_step(self, batch: StepBatch) -> CudaStep:
        self.rt.ensure_current()  # the engine steps on its own thread
        if self._capturing:
            assert self._step is not None
            return self._step  # staged before the capture began
        T, S = batch.n_tokens, len(batch.seqs)
        if T > self.max_rows or S > self.max_seqs:
            raise ValueError(f"step of {T} rows / {S} sequences exceeds the backend's {self.max_rows} / {self.max_seqs}")
        self._pending_mm.clear()  # outputs never consumed last step (none in the forward) are dropped
        self._stage_event.synchronize()  # the previous step's copy has left the staging buffer
        h, o = self._stage_host, self._off
        h[o["ids"]:o["ids"] + T] = batch.token_ids
        h[o["pos"]:o["pos"] + T] = batch.positions
        h[o["row_seq"]:o["row_seq"] + T] = np.repeat(np.arange(S, dtype=np.int32), [s.n_new for s in batch.seqs])
        h[o["slot"]:o["slot"] + S] = [s.slot for s in batch.seqs]
        h[o["ncached"]:o["ncached"] + S] = [s.n_cached for s in batch.seqs]
        h[o["row0"]:o["row0"] + S + 1] = batch.row_starts
        rows = batch.logits_rows
        h[o["logits"]:o["logits"] + len(rows)] = rows
        starts = batch.row_starts
        tiles = [(i, r) for i, ch in enumerate(batch.seqs) for r in range(int(starts[i]), int(starts[i]) + ch.n_new, PF_TILE)]
        h[o["tile_seq"]:o["tile_seq"] + len(tiles)] = [t[0] for t in tiles]
        h[o["tile_row"]:o["tile_row"] + len(tiles)] = [t[1] for t in tiles]
        h[o["serial"]:o["serial"] + T] = self._greedy_serial
        first = o["ids"] + self.max_rows
        known, self._dev_meta = self._dev_meta, None  # (unknown should the copy fail)
        if self._keep_ids:  # the ids are the previous greedy step's argmax, already in place (launch_greedy)
            if known is None or not np.array_equal(known, h[first:]):  # (else: in place, advanced by that step)
                self.rt._cuda.memcpy_htod_async(self._stage_dev.ptr + 4 * first, h[first:], self.rt.stream)
                self._stage_event.record(self.rt.stream)
        else:
            self.rt._cuda.memcpy_htod_async(self._stage_dev.ptr, h, self.rt.stream)
            self._stage_event.record(self.rt.stream)
            self._last_greedy = None  # the ids it left are overwritten
        self._dev_meta = h[first:].copy()
        self._step = CudaStep(batch, T, S, int(len(rows)), batch.max_positions, len(tiles), short=self._short(batch))
        return self._step

    # -- ops ---------------------------------------------------------------------------------------
    def embedding(self, table: MatWeight, step: CudaStep) -> CudaTensor:
        out = self.pool.get(step.n_tokens, table.cols)  # (T, dim)
        self.mm.embedding(table.dw, self._ptr("ids"), step.n_tokens, out.ptr)
        return out

    # -- deferred launches -------------------------------------------------------------------------
    def _ready(self, *tensors: CudaTensor | None) -> None:
        """Issue the deferred launches that fill these tensors."""
        for t in tensors:
            if t is not None and t.pending is not None:
                self._flush(t)

    def _flush(self, t: CudaTensor) -> None:
        d = t.pending
        assert d is not None
        if d.kind == "matmul":
            x = d.args[0]
            group = self._pending_on(x)
            self._pending_mm.pop(id(x), None)
            if t not in group:
                group.append(t)
            ws = [o.pending.args[1] for o in group]
            for o in group:
                o.pending = None
            self._run_matmuls(x, ws, group)
            return
        t.pending = None
        if d.kind == "add":
            a, b = d.args
            self._ready(a, b)
            n = a.rows * a.cols
            self._launch("elementwise", "add_f32", "PPPi", self._grid1d(n // 4 + 1), (256, 1, 1), a.ptr, b.ptr,
                         t.ptr, np.int32(n))
        elif d.kind == "rope":
            x, step, n_heads, rope, sink = d.args
            self._ready(x)
            head_dim = x.cols // n_heads
            name = "rope_f32" if rope.mode == "normal" else "rope_neox_f32"
            self._launch("rope", name, "PPPPiiiii", (x.rows, 1, 1), (256, 1, 1), x.ptr, t.ptr, self._ptr("pos"),
                         self._inv_freq_buf(rope).ptr, np.int32(n_heads), np.int32(head_dim), np.int32(rope.n_rot),
                         np.int32(1 if sink else 0), np.int32(step.max_positions))
        else:  # pragma: no cover
            raise AssertionError(d.kind)

    def _pending_on(self, x: CudaTensor) -> list[CudaTensor]:
        """The deferred matmul outputs of input x (launched together)."""
        return [o for o in (r() for r in self._pending_mm.get(id(x), []))
                if o is not None and o.pending is not None and o.pending.kind == "matmul" and o.pending.args[0] is x]

    def _run_matmuls(self, x: CudaTensor, ws: list[MatWeight], outs: list[CudaTensor]) -> None:
        """outs[i] = x @ ws[i].T, one multi-matrix launch per weight type on the vector path; x's int8
        quantization is made once (and reused by a later group on the same x)."""
        self._ensure_workspace()
        held = self.mm.matmul_multi(x.ptr, x.rows, [w.dw for w in ws], [o.ptr for o in outs], self._workspace.ptr,
                                    prequantized=self._ws_x is x)  # True: the workspace holds x's int8 quantization
        if held:
            self._ws_x = x  # held, so its buffer is not recycled while the workspace describes it

    def _ensure_workspace(self) -> DeviceBuffer:
        if self._workspace is None:
            n = int(self.mm.workspace_bytes(self.max_rows, self._max_k))
            self._workspace = self.rt.alloc(max(n, 16), "activations", "matmul.workspace")
            self.mm.reserve(self.max_rows, self._max_k)
        return self._workspace

    def _quant_out(self, rows: int, cols: int, several: bool = False) -> tuple | None:
        """The quantization arguments (CudaMatmul.row_quant_args) of a fused producer (fuse_quant) of a (rows, cols)
        tensor, or None where the matmuls would not read them: activations other than int8x2, a width no weight has,
        or more than one row; several: a producer that also quantizes a few rows for the decode kernel's column
        entries (CudaMatmul.rows_quant_args, when they take that many rows)."""
        mm = self.mm
        if not (self.fuse_quant and mm.int8x2 and mm.vec_max_rows >= 1 and cols % 32 == 0 and cols <= self._max_k):
            return None
        if rows == 1:
            return mm.row_quant_args(self._ensure_workspace().ptr, cols)
        if several and mm.on_dec_cols(rows):
            return mm.rows_quant_args(self._ensure_workspace().ptr, cols, rows)
        return None

    # -- ops ---------------------------------------------------------------------------------------
    @staticmethod
    def _norm_block(d: int) -> int:
        """Threads of a norm block (one block per row): one float4 of the row each, up to 1024, so a decode row's
        loads are all in flight at once instead of in 256-thread rounds."""
        per = -(-d // 4) if d % 4 == 0 else d
        return max(32, min(1024, -(-per // 32) * 32))

    def rms_norm(self, x: CudaTensor, weight: VecWeight, eps: float) -> CudaTensor:
        out = self.pool.get(x.rows, x.cols)  # (T, D)
        d = x.pending
        quant = self._quant_out(x.rows, x.cols, several=True)
        if quant is not None:  # one launch: [the residual add,] the norm and its quantization for the matmuls
            a, b = x, None
            if d is not None and d.kind == "add":  # x = a + b, written by this launch
                x.pending = None
                a, b = d.args
            self._ready(a, b)
            name = "rms_norm_quant_x2" if x.rows == 1 else "rms_norm_quant_x2_rows"  # (one block per row)
            self._launch("quantize_act", name, "PPPPPif" + "PPPPPii", (x.rows, 1, 1),
                         (self._norm_block(x.cols), 1, 1), a.ptr, b.ptr if b is not None else 0, weight.buf.ptr,
                         x.ptr if b is not None else 0, out.ptr, np.int32(x.cols), np.float32(eps), *quant)
            self._ws_x = out
            return out
        if d is not None and d.kind == "add" and x.cols % 4 == 0:  # residual add fused in front
            x.pending = None
            a, b = d.args
            self._ready(a, b)
            self._launch("norm", "add_rms_norm_f32", "PPPPPif", (x.rows, 1, 1), (self._norm_block(x.cols), 1, 1),
                         a.ptr, b.ptr, weight.buf.ptr, x.ptr, out.ptr, np.int32(x.cols), np.float32(eps))
            return out
        self._ready(x)
        name = "rms_norm_f32_vec4" if x.cols % 4 == 0 else "rms_norm_f32"
        self._launch("norm", name, "PPPif", (x.rows, 1, 1), (self._norm_block(x.cols), 1, 1), x.ptr, weight.buf.ptr,
                     out.ptr, np.int32(x.cols), np.float32(eps))
        return out

    def matmul(self, x: CudaTensor, w: MatWeight) -> CudaTensor:
        assert x.cols == w.cols, (x.shape, w.rows, w.cols)
        self._ready(x)
        out = self.pool.get(x.rows, w.rows)  # (T, N)
        if x.rows == 0:
            return out
        out.pending = Deferred("matmul", (x, w))
        self._pending_mm.setdefault(id(x), []).append(weakref.ref(out))
        if not self.defer:
            self._flush(out)
        return out

    def _inv_freq_buf(self, rope: Any) -> DeviceBuffer:
        key = (rope.n_rot, rope.theta, rope.linear_factor, rope.freq_factors)
        buf = self._inv_freq.get(key)
        if buf is None:
            inv = np.ascontiguousarray(rope.inv_freq(), dtype=np.float64)  # (n_rot / 2,)
            buf = self.rt.alloc(inv.nbytes, "weights", "rope.inv_freq")
            self.rt._cuda.memcpy_htod(buf.ptr, inv)
            self._inv_freq[key] = buf
        return buf

    def rope(self, x: CudaTensor, step: CudaStep, n_heads: int, rope: Any, sink: bool = False) -> CudaTensor:
        out = self.pool.get(x.rows, x.cols)  # (T, n_heads * head_dim)
        out.pending = Deferred("rope", (x, step, n_heads, rope, sink))
        if not self.defer:
            self._flush(out)
        return out

    @staticmethod
    def _qk_ropes(q_win: CudaTensor, q_sink: CudaTensor, k: CudaTensor) -> tuple | None:
        """(q source, k source, step, n_heads, n_kv_heads, rope) when attention gets the layer's three rotations
        still deferred: q at p, the same q at the sink positions, k at p."""
        dw, ds, dk = q_win.pending, q_sink.pending, k.pending
        if not (dw and ds and dk and dw.kind == ds.kind == dk.kind == "rope"):
            return None
        (xq, step, n_heads, rope, sw), (xs, _, hs, rs, ss), (xk, _, n_kv, rk, sk) = dw.args, ds.args, dk.args
        if sw or not ss or sk or xq is not xs or hs != n_heads or rope != rs or rope != rk or xq.rows != xk.rows:
            return None
        return xq, xk, step, n_heads, n_kv, rope

    def _rope_table(self, step: CudaStep, rope: Any) -> DeviceBuffer:
        """The step's (cos, sin) at p and at the sink position per row and pair (rope_table_f32), launched at its
        first use in the step (in front of the first layer's QKV matmuls: attention reads it before its wait):
        every layer's attention rotates from it (fuse_rope)."""
        half = rope.n_rot // 2
        if self._rope_cs is None or self._rope_cs[1] < self.max_seqs * half:
            if self._rope_cs is not None:
                self.rt.free(self._rope_cs[0])
            self._rope_cs = (self.rt.alloc(16 * self.max_seqs * half, "activations", "rope.table"), self.max_seqs * half)
        if step.rope_table is not rope:
            self._launch("rope", "rope_table_f32", "PPPii", (step.n_tokens, 1, 1), (64, 1, 1), self._ptr("pos"),
                         self._inv_freq_buf(rope).ptr, self._rope_cs[0].ptr, np.int32(half), np.int32(step.max_positions))
            step.rope_table = rope
        return self._rope_cs[0]

    def _rope_qk(self, q_win: CudaTensor, q_sink: CudaTensor, k: CudaTensor, v: CudaTensor | None = None,
                 kv: "CudaKVArena | None" = None) -> bool:
        """The layer's three deferred rotations as one launch, when they are what attention gets; with an f16
        arena given, the same launch also stages the new K/V rows in f16 (v must be ready)."""
        ropes = self._qk_ropes(q_win, q_sink, k)
        if ropes is None:
            return False
        xq, xk, step, n_heads, n_kv, rope = ropes
        q_win.pending = q_sink.pending = k.pending = None
        self._ready(xq, xk, v)
        stage = kv is not None and v is not None
        name = "rope_qk_f32" if rope.mode == "normal" else "rope_qk_neox_f32"
        assert rope.n_rot // 2 <= ROPE_MAX_HALF, "kernels/rope.cu holds n_rot / 2 angles in shared memory"
        # blocks per row: a few rows (decode) spread their (head, pair) jobs over ~2 blocks per SM
        jobs = (n_heads + n_kv) * (rope.n_rot // 2)
        per_row = max(1, min(-(-jobs // 256), -(-2 * self.rt.sm_count // xq.rows)))
        self._launch("rope", name, "PPPPPPPiiiii" + "PPP", (xq.rows, per_row, 1), (256, 1, 1), xq.ptr, xk.ptr, q_win.ptr,
                     q_sink.ptr, k.ptr, self._ptr("pos"), self._inv_freq_buf(rope).ptr, np.int32(n_heads),
                     np.int32(n_kv), np.int32(xq.cols // n_heads), np.int32(rope.n_rot), np.int32(step.max_positions),
                     v.ptr if stage else 0, kv.st_k.ptr if stage else 0, kv.st_v.ptr if stage else 0)
        return True

    def n_splits(self, T: int, n_kv_heads: int, max_positions: int) -> int:
        """Key-range splits of attention's grid: as many as fit in one wave of ~8 blocks per SM (loads in flight),
        at least split_keys keys per split of the longest context the graph may see. Each row uses only as many as
        its own keys fill at split_keys each (kernels/kv_common.cuh, active_splits), so a short context is not
        spread over the grid, and from split_half_from keys on at least half of them. (Rounded up to cover the SMs,
        the grid ran a second partial wave at 4 / 6 / 8 / 16 / 32 sequences: H200, bench/decode_ab.py at depth 512,
        rounding down took -2.7 / -2.1 / -2.5 / -3.5 / -3.2 % off their steps, 2 sequences +0.6 %.)"""
        want = self.split_blocks_per_sm * self.rt.sm_count // max(1, T * n_kv_heads)
        return max(1, min(want, math.ceil((max_positions + T) / self.split_keys), ATT_MAX_SPLITS))

    def _partial_bufs(self, n_heads: int, head_dim: int, max_positions: int,
                      n_kv_heads: int) -> tuple[DeviceBuffer, DeviceBuffer, DeviceBuffer]:
        """Split-K partials for the worst step this model shape can take (sized once per shape), and the counters of
        finished splits per (row, kv head) and of merged rows per (sequence, kv head), zero between launches
        (attention_split resets what it counts)."""
        key = (n_heads, head_dim, max_positions, n_kv_heads, self.split_keys, self.split_blocks_per_sm)
        if self._partials.get("key") != key:
            worst = max(T * self.n_splits(T, n_kv_heads, max_positions) for T in range(1, self.max_rows + 1))
            need = worst * n_heads
            if "acc" not in self._partials or self._partials["rows"] < need * head_dim:
                for name in ("ml", "acc"):
                    if name in self._partials:
                        self.rt.free(self._partials.pop(name))
                self._partials["ml"] = self.rt.alloc(4 * 2 * need, "activations", "attention.partial_ml")
                self._partials["acc"] = self.rt.alloc(4 * need * head_dim, "activations", "attention.partial_acc")
                self._partials["rows"] = need * head_dim
            n_done = (self.max_rows + self.max_seqs) * n_kv_heads  # per (row, kv head), then per (sequence, kv head)
            if self._partials.get("done_n", 0) < n_done:
                if "done" in self._partials:
                    self.rt.free(self._partials.pop("done"))
                self._partials["done_n"] = n_done
                self._partials["done"] = self.rt.alloc(4 * n_done, "activations", "attention.done")
                self.rt.memset_u8(self._partials["done"], 0, 4 * n_done)
            self._partials["key"] = key
        return self._partials["ml"], self._partials["acc"], self._partials["done"]

    @staticmethod
    def _mma_row_tiles(step: CudaStep, G: int) -> int:
        """Blocks per kv head of attention_prefill_mma: each sequence's rows in tiles of MMA_VECTORS // G rows."""
        rows = MMA_VECTORS // G
        return sum(-(-s.n_new // rows) for s in step.batch.seqs)

    def attention(self, q: CudaTensor, q_sink: CudaTensor, k: CudaTensor, v: CudaTensor, kv: CudaKVArena,
                  layer: int, step: CudaStep, n_heads: int, n_kv_heads: int) -> CudaTensor:
        lay = kv.layout
        hd, T = lay.head_dim, step.n_tokens
        G = n_heads // n_kv_heads
        if hd not in ATT_HEAD_DIMS or G not in ATT_GROUPS:
            raise NotImplementedError(f"attention kernel not built for head_dim {hd}, group {G}")
        kv_dim = n_kv_heads * hd
        q8 = lay.dtype == "q8"
        meta = (self._ptr("row_seq"), self._ptr("slot"), self._ptr("ncached"), self._ptr("row0"))
        ring = (kv.k[layer], kv.v[layer], kv.ks[layer], kv.vs[layer])
        staging = (kv.st_k.ptr, kv.st_v.ptr, kv.st_ks.ptr if q8 else 0, kv.st_vs.ptr if q8 else 0)
        tail = (np.int32(n_kv_heads), np.int32(lay.sink_tokens), np.int32(lay.window), np.int32(lay.max_positions),
                np.float32(1.0 / math.sqrt(hd)))
        ropes = self._qk_ropes(q, q_sink, k) if self.fuse_rope and T == step.n_seqs else None
        # a decode step: split-K attention rotates q and the new k itself (and encodes the new K/V). It reads the
        # step's angle table before its wait, so in a graph (programmatic edges) the table's launch, at its first use,
        # must not be the one right before it: it goes in front of q's matmul, which is still to be launched
        if ropes is not None and ropes[-1].mode == "normal" and ropes[-1].n_rot // 2 <= ROPE_MAX_HALF and \
                (not self._capturing or step.rope_table is ropes[-1] or ropes[0].pending is not None):
            xq, xk, rope = ropes[0], ropes[1], ropes[-1]
            q.pending = q_sink.pending = k.pending = None
            table = self._rope_table(step, rope)
            self._ready(xq, xk, v)
            new = staging + (xk.ptr, v.ptr, table.ptr, np.int32(rope.n_rot))
            return self._split_attention(xq.ptr, 0, meta, ring, new, tail, step, n_heads, n_kv_heads, hd, q8)
        # 0. rotations (deferred ropes) + 1. the step's new K/V in the cache's storage format (what the NumPy
        # twin's round_trip gives): one launch when the ropes are deferred and the cache is f16
        staged = self._rope_qk(q, q_sink, k, v, None if q8 else kv)
        if not staged:
            self._ready(q, q_sink, k, v)
        if q8:
            nb = T * kv_dim // Q8_BLOCK
            self._launch("kv_store", "kv_stage_q8", "PPPPPPi", self._grid1d(nb * 32), (256, 1, 1), k.ptr, v.ptr,
                         kv.st_k.ptr, kv.st_v.ptr, kv.st_ks.ptr, kv.st_vs.ptr, np.int32(nb))
        elif not staged:
            self._launch("kv_store", "kv_stage_f16", "PPPPi", self._grid1d(T * kv_dim), (256, 1, 1), k.ptr, v.ptr,
                         kv.st_k.ptr, kv.st_v.ptr, np.int32(T * kv_dim))
        if self.use_prefill_kernel and T >= 32 and T >= 4 * step.n_seqs:
            # prefill-heavy step: query tiles share each K/V tile; then append the survivors
            kvs = ring + staging
            esize = 1 if q8 else 2
            words = kv_dim * esize // 4
            swords = (kv_dim // Q8_BLOCK * 2) // 4 if q8 else 0
            append = (np.int32(lay.sink_tokens), np.int32(lay.window), np.int32(lay.max_positions),
                      kv.st_k.ptr, kv.k[layer], np.int32(words), kv.st_v.ptr, kv.v[layer],
                      kv.st_ks.ptr if q8 else 0, kv.ks[layer], np.int32(swords), kv.st_vs.ptr if q8 else 0, kv.vs[layer])
            out = self.pool.get(T, n_heads * hd)  # (T, n_heads * head_dim)
            if self.prefill_kernel == "mma":  # tensor cores: 64 query vectors (rows x heads of a group) per block
                name = f"attention_prefill_mma_{hd}_{G}_{'q8' if q8 else 'f16'}"
                self._launch("attention_mma", name, "PP" + "PPPP" + "PPPPPPPP" + "P" + "ii" + "iiif",
                             (n_kv_heads, self._mma_row_tiles(step, G), 1), (MMA_THREADS, 1, 1), q.ptr, q_sink.ptr,
                             *meta, *kvs, out.ptr, tail[0], np.int32(step.n_seqs), *tail[1:])
            else:
                passes = -(-PF_TILE // (PF_TILE // G))
                name = f"attention_prefill_{hd}_{G}_{'q8' if q8 else 'f16'}"
                self._launch("attention", name, "PP" + "PPPP" + "PP" + "PPPPPPPP" + "P" + "iiiif",
                             (step.n_tiles, n_kv_heads * passes, 1), (ATT_THREADS, 1, 1), q.ptr, q_sink.ptr, *meta,
                             self._ptr("tile_seq"), self._ptr("tile_row"), *kvs, out.ptr, *tail)
            self._launch("kv_store", "kv_append", "PPPP" + "iii" + "PPi" + "PP" + "PPi" + "PP", (T, 4 if q8 else 2, 1),
                         (128, 1, 1), *meta, *append)
            return out
        return self._split_attention(q.ptr, q_sink.ptr, meta, ring, staging + (0, 0, 0, np.int32(0)), tail, step,
                                     n_heads, n_kv_heads, hd, q8)

    def _split_attention(self, q: int, q_sink: int, meta: tuple, ring: tuple, new: tuple, tail: tuple,
                         step: CudaStep, n_heads: int, n_kv_heads: int, hd: int, q8: bool) -> CudaTensor:
        """2. split-K softmax over ring + new keys, the splits merged and the new K/V appended in the same launch
        (kernels/attention.cu, attention_split_*); new = (staged k, v, k scales, v scales, raw k, raw v, rope table,
        n_rot): the new K/V staged in the ring's format, or (rope table given: attention_split_rope_*, a decode step)
        raw, rotated and encoded in the kernel, which rotates q too (q_sink 0); tail = (n_kv_heads, sinks, window,
        the ring's max_positions, scale)."""
        T = step.n_tokens
        out = self.pool.get(T, n_heads * hd)  # (T, n_heads * head_dim)
        max_positions = int(tail[3])  # the ring's
        splits = self.n_splits(T, n_kv_heads, max_positions)
        ml, acc, done = self._partial_bufs(n_heads, hd, max_positions, n_kv_heads)
        assert T * splits * n_heads * hd <= self._partials["rows"]
        quant = self._quant_out(T, n_heads * hd) if hd % 32 == 0 else None  # ... + the O projection's input (fuse_quant)
        rope, split_keys = "rope_" if new[6] else "", self.split_keys
        # a short context's decode step: one cluster per (row, kv head), in a grid that stays one wave (on an H200 a
        # clustered grid of ~1,024 blocks ran as two, 896 as one: bench/RESULTS.md, round eight); a split has at least
        # the keys its block loads before its wait, longer contexts (up to short_keys) spread over the cluster
        if new[6] and step.short and T * n_kv_heads * ATT_CLUSTER <= 7 * self.rt.sm_count:
            rope, splits = f"rope_c{ATT_CLUSTER}_", ATT_CLUSTER
            split_keys = ATT_STAGES * ATT_THREADS // (hd // 8)
        name = f"attention_split_{rope}{hd}_{n_heads // n_kv_heads}_{'q8' if q8 else 'f16'}"
        self._launch("attention", name, "PP" + "PPPP" + "PPPP" + "PPPPPPPi" + "PPPP" + "iiiif" + "PPPPPi" + "ii",
                     (splits, n_kv_heads, T), (ATT_THREADS, 1, 1), q, q_sink, *meta, *ring, *new, ml.ptr, acc.ptr,
                     done.ptr, out.ptr, *tail, *(quant[:6] if quant is not None else (0, 0, 0, 0, 0, np.int32(0))),
                     np.int32(split_keys), np.int32(self.split_half_from))
        if quant is not None:
            self._ws_x = out
        return out

    def _glu_inputs(self, gate: CudaTensor, up: CudaTensor) -> tuple | None:
        """(x, gate weight, up weight) where gate and up are deferred matmuls of one x, pending alone, that
        CudaMatmul.dec_glu computes with silu_mul in one launch from x's quantization in the workspace; else None."""
        dg, du = gate.pending, up.pending
        if not (self.fuse_glu and dg is not None and du is not None and dg.kind == du.kind == "matmul"):
            return None
        x = dg.args[0]
        if du.args[0] is not x or self._ws_x is not x or \
                not self.mm.glu_ok(x.rows, dg.args[1].dw, du.args[1].dw):
            return None
        pending = self._pending_on(x)
        if len(pending) != 2 or not any(o is gate for o in pending) or not any(o is up for o in pending):
            return None
        return x, dg.args[1], du.args[1]

    def silu_mul(self, gate: CudaTensor, up: CudaTensor) -> CudaTensor:
        out = self.pool.get(gate.rows, gate.cols)  # (T, F)
        n = gate.rows * gate.cols
        quant = self._quant_out(gate.rows, gate.cols, several=True)
        glu = self._glu_inputs(gate, up) if quant is not None else None
        if glu is not None:  # one launch: gate, up, silu_mul and its quantization for the down projection
            x, wg, wu = glu
            self._pending_mm.pop(id(x), None)
            gate.pending = up.pending = None
            self.mm.dec_glu(self._workspace.ptr, wg.dw, gate.ptr, wu.dw, up.ptr, out.ptr, quant)
            self._ws_x = out
            return out
        self._ready(gate, up)
        if quant is not None:  # one launch: silu_mul and its quantization for the down projection (a grid row per row)
            name = "silu_mul_quant_x2" if gate.rows == 1 else "silu_mul_quant_x2_rows"
            self._launch("quantize_act", name, "PPPi" + "PPPPPii", (-(-gate.cols // 1024), gate.rows, 1),
                         (256, 1, 1), gate.ptr, up.ptr, out.ptr, np.int32(gate.cols), *quant)
            self._ws_x = out
            return out
        self._launch("elementwise", "silu_mul_f32", "PPPi", self._grid1d(n), (256, 1, 1), gate.ptr, up.ptr, out.ptr,
                     np.int32(n))
        return out

    def add(self, a: CudaTensor, b: CudaTensor) -> CudaTensor:
        out = self.pool.get(a.rows, a.cols)  # (T, D)
        out.pending = Deferred("add", (a, b))  # fused into the next rms_norm, or issued by another consumer
        if not self.defer:
            self._flush(out)
        return out

    def take_rows(self, x: CudaTensor, step: CudaStep) -> CudaTensor:
        if step.n_logits == step.n_tokens == x.rows:  # every row wants logits (a decode step): x itself, still
            return x                                   # deferred (its residual add goes into the final norm)
        self._ready(x)
        out = self.pool.get(step.n_logits, x.cols)  # (S', D)
        if step.n_logits:
            self._launch("elementwise", "take_rows_f32", "PPPi", (step.n_logits, 1, 1), (256, 1, 1), x.ptr,
                         self._ptr("logits"), out.ptr, np.int32(x.cols))
        return out

    def argmax(self, x: CudaTensor) -> np.ndarray:
        """(rows,) int32 greedy token of each row, computed on the device."""
        self._ready(x)
        out = self.pool.get(max(1, x.rows), 1)  # (rows, 1) used as int32
        self._launch("argmax", "argmax_f32", "PPi", (x.rows, 1, 1), (1024, 1, 1), x.ptr, out.ptr, np.int32(x.cols))
        host = np.empty(x.rows, np.int32)  # (rows,)
        self.rt._cuda.memcpy_dtoh_async(host, out.ptr, self.rt.stream)
        self.rt.synchronize()
        return host

    def to_host(self, x: CudaTensor) -> np.ndarray:
        self._ready(x)
        n = x.rows * x.cols
        if self._host_out is None or self._host_out.size < n:
            self._host_out = self.rt.pinned((max(n, 1 << 20),), np.float32, "to_host.staging")  # (n,) float32
        view = self._host_out[:n]
        self.rt._cuda.memcpy_dtoh_async(view, x.ptr, self.rt.stream)
        self.rt.synchronize()
        return view.reshape(x.rows, x.cols).copy()  # (rows, cols)

    # -- CUDA-graph decode -------------------------------------------------------------------------
    def forward(self, model: Any, batch: StepBatch) -> np.ndarray:
        """model.forward(batch), replaying a captured CUDA graph when every sequence decodes one token.

        The first decode step of a batch shape (and context class: graph_key) runs eagerly (it sizes the pools and
        uploads constants), the second is captured and every later one replays; prefill chunks always run eagerly."""
        t0 = time.perf_counter()
        if not self._decode_only(batch):
            return model.forward(batch)
        logits = self._decode_step(model, batch, greedy=False)
        self.last_host_s = time.perf_counter() - t0
        return self.to_host(logits)

    def launch_greedy(self, model: Any, batch: StepBatch, follow: "PendingTokens | None" = None) -> "PendingTokens":
        """LlamaModel.launch_greedy on the device: the step's graph ends with argmax_step_f32, which writes each row's
        argmax into the step's own token-id input (`ids` of the staging block) and into the host-mapped token ring,
        then advances the staged positions. Returns at once. With `follow` (the step launched just before, same
        sequences in the same order), this step's staging leaves the ids in place, so it reads the previous step's
        tokens without a round trip through the host, and copies nothing at all when its positions are the ones the
        device advanced to: the host queues step n + 1 while step n still runs."""
        t0 = time.perf_counter()
        slots = tuple(s.slot for s in batch.seqs)
        assert self._decode_only(batch) and all(s.want_logits for s in batch.seqs), "greedy steps decode one token"
        if follow is not None:
            assert follow is self._last_greedy and follow.slots == slots, "follow the previous greedy step's sequences"
        self._keep_ids = follow is not None
        try:
            self._decode_step(model, batch, greedy=True)
        except BaseException:
            self._dev_meta = None  # the step may or may not have run
            raise
        finally:
            self._keep_ids = False
        serial, self._greedy_serial = self._greedy_serial, self._greedy_serial + 1
        meta, o, first = self._dev_meta, self._off, self._off["ids"] + self.max_rows
        if meta is not None:  # what the step's argmax_step_f32 advances
            T, S = batch.n_tokens, len(batch.seqs)
            for key, n in (("pos", T), ("ncached", S), ("serial", T)):
                meta[o[key] - first:o[key] - first + n] += 1
        done = self._token_done[serial % TOKEN_RING]
        done.record(self.rt.stream)
        self._last_greedy = PendingTokens(self._token_ring, serial, done, slots)
        self.last_host_s = time.perf_counter() - t0
        return self._last_greedy

    def _decode_only(self, batch: StepBatch) -> bool:
        return self.use_graphs and bool(batch.seqs) and all(s.n_new == 1 for s in batch.seqs)

    def _short(self, batch: StepBatch) -> bool:
        """Whether every row of the step has at most short_keys keys (ring entries + the sequence's new rows)."""
        return bool(batch.seqs) and max(min(s.n_cached, batch.max_positions) + s.n_new
                                        for s in batch.seqs) <= self.short_keys

    def graph_key(self, model: Any, batch: StepBatch, greedy: bool) -> tuple:
        """The decode graph a step replays: its shape, and whether its contexts are short (_short)."""
        return (id(model), len(batch.seqs), tuple(s.want_logits for s in batch.seqs), batch.max_positions, greedy,
                self._short(batch))

    def _decode_step(self, model: Any, batch: StepBatch, greedy: bool) -> CudaTensor:
        """Enqueue a decode-only step, through its CUDA graph from the second step of its shape on; returns the
        logits tensor (S', vocab) and, greedy, leaves each row's argmax in the staged token ids."""
        key = self.graph_key(model, batch, greedy)
        entry = self._graphs.get(key)
        if entry is None and key not in self._seen:
            self._seen.add(key)
            return self._decode_launches(model, batch, greedy)  # eager: stages the step itself
        self.begin_step(batch)
        if entry is None:
            graph = CudaGraph(self.rt, programmatic=self._pdl_for(len(batch.seqs)), plain_into=self.pdl_plain_into)
            captured: list[CudaTensor] = []  # the graph's logits tensor, read after each replay
            self._capturing = True
            try:
                graph.capture(lambda: captured.append(self._decode_launches(model, batch, greedy)))
            finally:
                self._capturing = False
            entry = (graph, captured[0])
            self._graphs[key] = entry
        graph, logits = entry
        graph.replay()
        self.graph_replays += 1
        return logits

    def _decode_launches(self, model: Any, batch: StepBatch, greedy: bool) -> CudaTensor:
        logits = model.logits(batch)  # (S', vocab)
        self._ready(logits)
        if greedy:  # each row's token into the ids the next step's embedding reads and the host's ring; advance
            self._launch("argmax", "argmax_step_f32", "PPiPPPPii", (logits.rows, 1, 1), (1024, 1, 1), logits.ptr,
                         self._ptr("ids"), np.int32(logits.cols), self._ptr("pos"), self._ptr("ncached"),
                         self._ptr("serial"), self.rt.mapped_ptr(self._token_ring), np.int32(TOKEN_RING),
                         np.int32(self.max_seqs))
        return logits

    def _pdl_for(self, n_seqs: int) -> bool:
        """Programmatic edges in the decode graph of n_seqs sequences? Measured on an H200 (`bench/decode_ab.py`,
        bench/RESULTS.md): 1 sequence (the one-row vector kernel) and 3-8 (the fragment kernel) gain 4-5 %, 16 and 32
        (the pipelined kernel, its own edges plain: pdl_plain_into) 1-2 %; 2 sequences (the two-row vector kernel)
        lose 5 %, or gain 2 % with the vector kernel's edges plain, which costs batch 1 1.4 %: off at 2."""
        return self.pdl and n_seqs != 2

    def kv_to_host(self, kv: CudaKVArena, layer: int) -> dict[str, np.ndarray]:
        """One layer's ring as NumPy arrays shaped like NumpyKVArena's (tests)."""
        lay = kv.layout
        shape = (lay.slots, lay.max_positions, lay.n_kv_heads, lay.head_dim)
        dt = np.float16 if lay.dtype == "f16" else np.int8
        out = {"k": np.empty(shape, dt), "v": np.empty(shape, dt)}  # (slots, max_positions, kvh, hd)
        self.rt.synchronize()
        self.rt._cuda.memcpy_dtoh(out["k"], kv.k[layer])
        self.rt._cuda.memcpy_dtoh(out["v"], kv.v[layer])
        if lay.dtype == "q8":
            sshape = shape[:-1] + (lay.head_dim // Q8_BLOCK,)
            out["k_scale"], out["v_scale"] = np.empty(sshape, np.float16), np.empty(sshape, np.float16)
            self.rt._cuda.memcpy_dtoh(out["k_scale"], kv.ks[layer])
            self.rt._cuda.memcpy_dtoh(out["v_scale"], kv.vs[layer])
        return out

    # -- accounting --------------------------------------------------------------------------------
    def memory_records(self) -> Sequence[MemoryRecord]:
        recs = self.rt.memory_records()
        recs.append(MemoryRecord("context", "cuda_context", int(self.rt.context_bytes), None, None, device=True))
        return recs

    def device_info(self) -> dict[str, Any]:
        free, total = self.rt.mem_get_info()
        accounted = self.rt.accounted_device_bytes()
        used = self.rt.process_used_bytes()
        return {
            "device": self.rt.name, "arch": self.rt.arch, "sm_count": self.rt.sm_count,
            "total_bytes": total, "free_bytes": free,
            "baseline_used_bytes": self.rt.baseline_used_bytes,  # in use before our context (NVML), None if unknown
            "process_used_bytes": used, "accounted_device_bytes": accounted, "context_bytes": self.rt.context_bytes,
            "unaccounted_bytes": used - accounted - self.rt.context_bytes,
            "activation_buffers": self.pool.grown, "graphs": len(self._graphs), "graph_replays": self.graph_replays,
        }
