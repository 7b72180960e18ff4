"""Quantized matmul and embedding launcher of the CUDA backend: uploads GGUF weights (still quantized) and
launches the kernels of kernels/matmul_vec.cu, matmul_dec.cu, matmul_tiled.cu, matmul_frag.cu, matmul_pipe.cu,
quantize_act.cu and get_rows.cu.

    mm = CudaMatmul(rt)
    w = mm.upload(qtensor, layer=3)                     # DeviceWeight, accounted as rt "weights"
    ws = rt.alloc(mm.workspace_bytes(max_rows, max_k), "activations", "matmul_workspace")
    mm.reserve(max_rows, max_k)                         # the tiled path's own buffers (f16 x, split-K partials)
    mm.matmul(x_ptr, n_rows, w, out_ptr, ws.ptr)        # out (n_rows, N) f32 = x (n_rows, K) f32 @ W.T
    mm.embedding(table, ids_ptr, n_rows, out_ptr)       # out (n_rows, K) f32 = dequant(table[ids])

Paths: n_rows <= VEC_MAX_ROWS takes the bandwidth-bound vector kernel (quantized types: x is first quantized
to int8 per 32 values into the workspace, then __dp4a on the weight quants; at one row with int8x2 activations,
Q4_K takes its own decode kernel, kernels/matmul_dec.cu, on a copy of x in its lanes' order, and at 2-4 rows Q4_K and
Q6_K take its column entries, on a copy of each row: a few sequences' decode step); more rows take the tensor-core
tiled kernel (x converted once to f16, f16 MMA on weight tiles dequantized in shared memory; split over K
into partials + a fixed-order reduction when the output tiles alone would leave SMs idle, as in batched
decode). Q4_K / Q6_K, the Q4_K_M types, have their own tensor-core kernels instead: the fragment kernel at a few
rows (kernels/matmul_frag.cu: quants loaded straight into MMA fragments, scales applied to the f32 results)
and from PIPE_MIN_ROWS rows the pipelined kernel (kernels/matmul_pipe.cu: quantized tiles through a cp.async
pipeline, fragments built in registers; same-type matrices sharing x in one launch). Buffers beyond the
caller's workspace (f16 x, split-K partials) are allocated by `reserve` before the first step. Every launch goes
on rt.stream, allocates nothing and reads only device memory, so a step can be captured in a CUDA graph.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as GGMLType

from service.errors import UnsupportedModelError

VEC_MAX_ROWS = 8  # n_rows above this take the tiled tensor-core path
VEC_COLS = (1, 2, 4, 8)  # compiled column counts of the vector kernel
# vector-kernel configuration per column count: "r<R>t<RT>u<UNR>" = R row groups of 128/R threads per block,
# RT rows per group, UNR units in flight per row (kernels/matmul_vec.cu instantiates these for every type)
# Chosen from bench/matmul_bench.py on an H200 (2026-11-28): legacy 4/5-bit types are fastest with one warp per
# row and one unit in flight (fewest registers, most warps); Q4_K with 2 rows per warp (L1-allocating loads);
# Q6_K with 2 rows x 2 units; Q8_0 with 2 rows per 128-thread group; 2-4 columns with 4 rows per warp
# (activation reuse), 8 columns with 2. Q5_K, F16, F32 were not tuned (Q5_K follows Q4_K).
VEC_CONFIG = {1: "r4t1u1", 2: "r4t4u1", 4: "r4t4u1", 8: "r4t2u1"}
VEC_CONFIG_BY_TYPE: dict[str, dict[int, str]] = {
    "q4_k": {1: "r4t2u1"}, "q5_k": {1: "r4t2u1"}, "q6_k": {1: "r4t2u2"}, "q8_0": {1: "r1t2u1"},
    "f16": {1: "r4t2u1"}, "f32": {1: "r4t2u1"},
}
PAIRED_CONFIG = {2: "r4t4u1", 4: "r4t4u1", 8: "r4t2u1"}  # int8x2 (paired) entries, by column count
# ... by type where another is faster (H200, one row: Q6_K 4096x4096 / 11008x4096 / 4096x11008 at 6.8 / 14.2 / 15.0 us
# with r4t2u1, 7.0 / 14.4 / 15.6 with r4t4u1; Q4_K best with r4t4u1)
PAIRED_CONFIG_BY_TYPE: dict[str, dict[int, str]] = {"q6_k": {2: "r4t2u1"}}
# the batch-1 Q4_K / Q6_K decode kernel (kernels/matmul_dec.cu, int8x2 at one row): "r<RT>p1" = RT rows per warp,
# each lane loading its weights one unit ahead into registers; "r<RT>s<STAGES>" = the rows copied into shared memory
# by the bulk-copy engine, a grid that fits on the GPU, each warp walking groups of RT rows with STAGES in flight.
# By type: (configuration up to K = DEC_SHORT_K, configuration above; None: the paired vector kernel there). H200,
# bench/decode_ab.py, GPU time per batch-1 decode step of the 7B Q4_K_M: paired vector kernel 2.409 ms, Q4_K r2s2 at
# every K 2.197, + Q6_K r2s2 up to K = 4096 2.159, with Q4_K r4p1 above K = 4096 2.147. Q6_K at
# K = 11008 (r2s2: 143 KB of rows per block, 1 resident block per SM) took 20.4 us against 15.0 on the paired kernel
# (bench/matmul_bench.py --only dec); at K = 4096 it is as fast or faster (32000x4096: 30.6 vs 32.2 us).
# K split between two warps ("r2k2s2", each warp's stages half a row): Q6_K at K = 11008 15.8 us against 20.4 (r2s2)
# and 15.0 (the paired kernel) in isolation, but the batch-1 step 1.744 -> 1.732 ms in the graph (its first rows
# copied before the wait); Q4_K there 11.7 us against 11.0 (r4p1), the step 1.744 -> 1.749 ms.
DEC_CONFIG = {"q4_k": ("r2s2", "r4p1"), "q6_k": ("r2s2", "r2k2s2")}
DEC_SHORT_K = 4096
DEC_VARIANTS = {  # the entries it compiles, by type ("k2": each row's K split between the two warps of a pair)
    "q4_k": ("r1p1", "r2p1", "r4p1", "r1s2", "r2s2", "r1s4", "r2s3", "r2k2s2"),
    "q6_k": ("r1s2", "r2s2", "r2k2s2"),
}
# one or two Q4_K matrices and one Q6_K matrix sharing x up to K = DEC_SHORT_K (a Q4_K_M layer's Q, K and a Q6_K V)
# in one launch of this entry (the Q6_K one third), instead of one launch per type (CudaMatmul.dec_mixed)
DEC_MIXED = "matmul_dec_q4_k_q6_k_r2s2"
DEC_TYPES = frozenset(DEC_CONFIG)
# A few sequences' decode step (2 .. DEC_COLS[-1] rows, int8x2): the decode kernel over that many columns of x, its
# default shared-memory configurations by K (matmul_dec_<type>_<config>c<NC>, NC the smallest of DEC_COLS that holds
# the rows; DEC_MIXED's c<NC> for Q / K / V), instead of the paired vector or fragment kernels
DEC_COLS = (2, 4)
# Their configurations up to DEC_SHORT_K and above. H200, bench/decode_ab.py, ms per decode step of 2 / 3 / 4 sequences
# at depth 512 with Q4_K up to DEC_SHORT_K on r2s2 2.724 / 3.009 / 3.550, r2s3 +4 / +8 / +8 %, r1s2 +9 / +11 / +12 %,
# r1s4 +16 / +15 / +17 %; on 8 columns (the c8 entries, measured and removed) 5 / 6 / 8 sequences 4.353 / 4.883 / 6.021
# against the fragment kernel's 4.435 / 4.547 / 4.755: the dp4a sums of both passes of 8 columns outweigh the bytes.
DEC_COLS_CONFIG = ("r2s2", "r2k2s2")
DEC_BLOCK_BYTES = {"q4_k": 144, "q6_k": 208}  # bytes per 256 values of the copied rows
DEC_WARPS = 4  # warps per block of its entries (WARPS in the kernel)
# Entries with a twin "<name>f" for one matrix that also prefetches weights into L2 when its blocks are done
# (kernels/matmul_dec.cu, prefetch_next; CudaMatmul.prefetch_kb): the weights after an output or down projection, which
# the matmul after the next norm reads. H200, bench/decode_ab.py, the batch-1 step at depth 16 / 100 / 2048 against
# none (two processes each): 2 MB -0.3 / -0.4 / -0.5..-0.6 %; 4 MB -1.0..-1.4 / -0.8..-1.2 / -1.1..-1.3 %; 6 MB
# -1.1..-1.2 / -1.0..-1.2 / -1.2 %; an earlier build (its flag in Kp's low bits) 8 MB -1.3 % and 16 MB +2.0 % against
# 4 MB's -2.0 %. The same after Q / K / V (the output projection's weights) and after gate / up (the down
# projection's) with twins of DEC_MIXED and the glu entry (not kept): +0.2..+0.5 % and -0.3..0.0 % against 4 MB after
# single matrices.
PREFETCH_ENTRIES = frozenset(f"matmul_dec_{c}" for c in ("q4_k_r2s2", "q4_k_r4p1", "q6_k_r2s2", "q6_k_r2k2s2"))
PREFETCH_KB = 4096
# gate and up of a Q4_K_M feed-forward with silu and the quantization of its output in one launch
# (matmul_dec_glu_q4_k_w<W>s<STAGES>: blocks of W warps, STAGES groups of 2 rows in flight a warp; CudaMatmul.dec_glu):
# the compiled configurations, and the default. H200, bench/decode_ab.py, batch-1 step at depth 16 / 2048 against
# gate / up and silu_mul apart (1.678 / 2.091 ms): w4s1 +1.3 / +1.3 %, w4s2 -2.4 / -2.2 %, w4s3 -0.8 / -0.8 %,
# w4s4 +1.7 / +1.3 %, w8s1 -3.8 / -3.0 %, w8s2 -2.0 / -1.7 %, w16s1 +0.5 / +0.4 % (larger blocks leave less room on
# an SM for the down projection launched behind it, whose first copies go before its wait)
GLU_CONFIGS = ("w4s2", "w8s1", "w8s2")
GLU_DEFAULT = "w8s1"
MULTI_MAX = 3  # matrices one vector launch can serve
TILE_N, TILE_K = 128, 64  # output columns per tiled block, K values per tiled step (kernels/matmul_tiled.cu)
SPLIT_MAX = 8  # most K splits of one tiled matmul
SPLIT_MIN_STEPS = 4  # fewest K steps (of TILE_K values) a split may get
SPLIT_CAP_BYTES = 24 << 20  # bound of the split-K partials buffer (S x M x N f32)
FRAG_TYPES = frozenset({"q4_k", "q6_k"})  # types of the fragment kernel (kernels/matmul_frag.cu)
# Up to 8 rows the fragment kernel's entries matmul_frag_*_n1a<FRAG_AHEAD> load each warp's weights FRAG_AHEAD
# blocks ahead, the first before the wait, and stage the split's x once. H200, bench/decode_ab.py, ms per decode step
# of 5 / 6 / 8 sequences at depth 512 against the n1 entries: -1.9 / -2.4 / -3.1 % (3 blocks ahead: one block per SM,
# +16-20 %). Dynamic shared memory per 256 K values of a split (x as 16 x 8 x 16 halves, sums 8 x 16), and the most a
# launch may take (larger splits take the n1 entry).
FRAG_AHEAD = 2
FRAG_AHEAD_BLOCK_BYTES, FRAG_AHEAD_MAX_SHARED = (16 * 8 * 16 + 8 * 16) * 2, 96 << 10
FRAG_MAX_ROWS = 32  # rows it takes by default (compiled for up to 64: 8 column tiles of 8)
PIPE_TYPES = FRAG_TYPES  # types of the pipelined kernel (kernels/matmul_pipe.cu)
# rows from which it takes those types (fewer: the fragment kernel). H200, bench/matmul_bench.py --only pipe: Q4_K
# at 16 / 32 rows 10-30 % faster than the fragment kernel, even at 8; Q6_K (more work per weight to build the
# fragments) even at 32 rows, slower below
PIPE_MIN_ROWS = {"q4_k": 9, "q6_k": 33}
PIPE_TILES = (16, 32, 64, 128)  # x rows per block of its entries (the smallest that holds the rows, 128 above)
# K stages in flight by tile (H200, a 7B step's matmuls at 16 / 32 / 64 rows: 3.40 / 4.07 / 5.46 ms with 3 stages,
# 3.49 / 4.21 / 5.65 with 4: 3 leave room for 4 resident blocks; 512 rows: 4 stages)
PIPE_STAGES = {16: 3, 32: 3, 64: 3, 128: 4}
PIPE_STAGES_BUILT = {16: (3, 4, 6), 32: (3, 4, 6), 64: (3, 4), 128: (3, 4)}  # entries kernels/matmul_pipe.cu has
# fewest K values per split: its pipeline fill is a fixed cost (H200, 4096-wide Q4_K at 16 / 32 / 64 rows: 4 splits
# of 1024 values 12.2 / 13.8 / 17.8 us, 8 splits of 512 values 12.7 / 14.9 / 19.4 us)
PIPE_SPLIT_MIN_K = 1024
PIPE_ROW_BYTES = {"q4_k": 80, "q6_k": 112 + 4}  # shared memory per weight row and stage (Q6_K: + its d word)
BLOCKS_PER_SM = {32: 2, 64: 2, 128: 1}  # resident tiled blocks per SM by M tile (registers: ~128 / 128 / ~200)
_ALIGN = 256


def _align(n: int, a: int = _ALIGN) -> int:
    return (n + a - 1) // a * a


@dataclass(frozen=True)
class _TypeInfo:
    suffix: str  # kernel name suffix
    k_multiple: int  # K must be a multiple of this
    q8_act: bool  # the vector kernel consumes int8-quantized activations


_TYPES: dict[GGMLType, _TypeInfo] = {
    GGMLType.F32: _TypeInfo("f32", 32, False),
    GGMLType.F16: _TypeInfo("f16", 32, False),
    GGMLType.Q8_0: _TypeInfo("q8_0", 32, True),
    GGMLType.Q4_0: _TypeInfo("q4_0", 32, True),
    GGMLType.Q4_1: _TypeInfo("q4_1", 32, True),
    GGMLType.Q5_0: _TypeInfo("q5_0", 32, True),
    GGMLType.Q5_1: _TypeInfo("q5_1", 32, True),
    GGMLType.Q4_K: _TypeInfo("q4_k", 256, True),
    GGMLType.Q5_K: _TypeInfo("q5_k", 256, True),
    GGMLType.Q6_K: _TypeInfo("q6_k", 256, True),
}
SUPPORTED = frozenset(_TYPES) | {GGMLType.BF16}  # BF16 is widened to F32 at upload (exact)

# (block values, block bytes, {region: (start, end) byte range inside a block}) for the split layouts
_SPLIT: dict[GGMLType, tuple[int, int, dict[str, tuple[int, int]]]] = {
    GGMLType.Q8_0: (32, 34, {"q": (2, 34), "s": (0, 2)}),
    GGMLType.Q4_0: (32, 18, {"q": (2, 18), "s": (0, 2)}),
    GGMLType.Q4_1: (32, 20, {"q": (4, 20), "s": (0, 4)}),
    GGMLType.Q5_0: (32, 22, {"q": (6, 22), "s": (0, 2), "h": (2, 6)}),
    GGMLType.Q5_1: (32, 24, {"q": (8, 24), "s": (0, 4), "h": (4, 8)}),
    GGMLType.Q4_K: (256, 144, {"q": (0, 144)}),
    GGMLType.Q5_K: (256, 176, {"q": (0, 176)}),
    GGMLType.Q6_K: (256, 210, {"q": (0, 208), "s": (208, 210)}),
}


@dataclass(frozen=True)
class DeviceWeight:
    """A weight matrix (N, K) in device memory, in the upload layout of kernels/quant_blocks.cuh."""

    name: str
    ggml_type: GGMLType  # type the kernels see (BF16 files arrive as F32)
    n: int  # rows = output features
    k: int  # columns = input features
    q_ptr: int  # quant region
    s_ptr: int  # scale region (0 if unused)
    h_ptr: int  # high-bit region (0 if unused)
    nbytes: int  # bytes of the allocation
    buffer: Any = None  # the DeviceBuffer keeping the memory alive

    @property
    def suffix(self) -> str:
        return _TYPES[self.ggml_type].suffix


def repack(ggml_type: GGMLType, shape: tuple[int, ...], data: np.ndarray) -> tuple[GGMLType, dict[str, np.ndarray]]:
    """File bytes -> (kernel type, {region: contiguous uint8 bytes}) of the upload layout. Same information:
    the scale / high-bit fields of each block are moved into their own arrays, quants keep their order."""
    ggml_type = GGMLType(ggml_type)
    if len(shape) != 2:
        raise UnsupportedModelError(f"matmul weights must be 2-D, got shape {shape}")
    n, k = (int(s) for s in shape)
    if ggml_type not in SUPPORTED:
        raise UnsupportedModelError(f"no CUDA matmul kernel for {ggml_type.name}")
    if ggml_type == GGMLType.BF16:
        bits = np.ascontiguousarray(data).view(np.uint16).reshape(n, k).astype(np.uint32) << np.uint32(16)  # (n, k)
        return repack(GGMLType.F32, shape, bits.view(np.float32))
    info = _TYPES[ggml_type]
    if k % info.k_multiple:
        raise UnsupportedModelError(f"{ggml_type.name} matmul needs K % {info.k_multiple} == 0, got K = {k}")
    if ggml_type in (GGMLType.F32, GGMLType.F16):
        dt = np.float32 if ggml_type == GGMLType.F32 else np.float16
        arr = np.ascontiguousarray(np.asarray(data).view(dt).reshape(n, k))  # (n, k)
        return ggml_type, {"q": arr.view(np.uint8).reshape(-1)}
    vals, bb, fields = _SPLIT[ggml_type]
    blocks = np.ascontiguousarray(data).view(np.uint8).reshape(n, k // vals, bb)  # (n, blocks per row, block bytes)
    return ggml_type, {name: np.ascontiguousarray(blocks[:, :, a:b]).reshape(-1) for name, (a, b) in fields.items()}


class CudaMatmul:
    """Uploads weights and launches the matmul / embedding kernels on rt.stream."""

    def __init__(self, rt: Any, vec_max_rows: int = VEC_MAX_ROWS, int8x2: bool = False):
        self.rt = rt
        # rows up to this take the int8/dp4a vector path; 0 sends everything through the f16 tiled path
        # (about 5x less activation rounding error per matmul, slower at batch 1)
        self.vec_max_rows = min(int(vec_max_rows), VEC_MAX_ROWS)
        # int8x2: quantized activations get a second int8 pass for the residual (quantize_act_q8x2), run as extra
        # columns of the same vector kernel and summed; n rows need 2n columns, so the vector path stops at 4 rows
        self.int8x2 = int8x2
        if int8x2:
            self.vec_max_rows = min(self.vec_max_rows, VEC_MAX_ROWS // 2)
        self._max_n = 0  # largest output width uploaded (sizes the split-K partials)
        self._xh: Any = None  # tiled path: x as f16 (max_rows, max_k)
        self._part: Any = None  # tiled path: split-K partials (S, M, N) f32, SPLIT_CAP_BYTES at most
        self._part_cap = 0
        self.split_override: int | None = None  # force the K-split count (benchmark)
        self.use_frag = True  # Q4_K / Q6_K at few rows: the fragment kernel (False: vector / tiled only)
        self.frag_max_rows = FRAG_MAX_ROWS  # rows up to this take it (more: the tiled kernel)
        self.frag_vec_rows = 2 if int8x2 else 4  # ... from this many rows + 1 (fewer: the vector kernel)
        self.dec_cols = DEC_COLS[-1]  # rows up to this (from 2) on the decode kernel's column entries (0: none)
        self.frag_ahead = FRAG_AHEAD  # up to 8 rows: weight blocks each warp keeps in flight (0: mmf_body's one)
        self.use_pipe = True  # Q4_K / Q6_K at many rows: the pipelined kernel (False: the tiled one)
        self.use_dec = True  # int8x2 at one row: Q4_K through kernels/matmul_dec.cu (False: the paired vector kernel)
        self.dec_mixed = True  # ... Q4_K and Q6_K matrices sharing x in one launch where they can (DEC_MIXED)
        self.dec_variant: str | None = None  # "dec:<config>[/<config above DEC_SHORT_K>]" in place of DEC_CONFIG
        self.dec_types = DEC_TYPES  # the types it takes (benchmark: a subset)
        self.glu_config = GLU_DEFAULT  # matmul_dec_glu_q4_k_<config> (dec_glu)
        # KB of the weights that follow a single-matrix decode launch's matrix in its slab, prefetched into L2 by the
        # launch's blocks when they are done (PREFETCH_ENTRIES). 0: none.
        self.prefetch_kb = PREFETCH_KB
        # True: the two-pass quantizer writing the decode copy lets its dependent (the decode kernel, which starts its
        # weight copies before its own wait) launch before the quantizer's own PDL wait (kernels/quantize_act.cu).
        # H200, bench/decode_ab.py, batch 1: 2.218 -> 2.182 ms per step with the separate quantizer launches; with the
        # quantization fused into rms_norm / silu_mul (CudaBackend.fuse_quant) 2.165 with it, 2.089 without (the
        # default), so off
        self.quant_trigger_first = False
        self.pipe_min_rows: int | None = None  # override of PIPE_MIN_ROWS for every type (tests, benchmark)
        self.pipe_stages: int | None = None  # override of PIPE_STAGES (benchmark)
        self._slots: dict[tuple, int] = {}  # resident blocks per SM of an entry at a shared-memory size
        self._fns: dict[str, Any] = {}

    # -- kernels -------------------------------------------------------------------------------------
    def _fn(self, module: str, name: str, sig: str) -> Any:
        fn = self._fns.get(name)
        if fn is None:
            fn = self.rt.function(module, name)
            fn.prepare(sig)
            self._fns[name] = fn
        return fn

    def warm_up(self) -> None:
        """Build the kernel modules now (first use would otherwise compile inside a step)."""
        for module in ("quantize_act", "matmul_vec", "matmul_dec", "matmul_tiled", "matmul_frag", "matmul_pipe", "get_rows"):
            self.rt.module(module)

    # -- upload --------------------------------------------------------------------------------------
    def upload(self, tensor: Any, layer: int | None = None) -> DeviceWeight:
        """A GGUF QTensor (N, K) -> device, repacked, accounted under "weights"."""
        ktype, regions = repack(tensor.ggml_type, tuple(tensor.shape), tensor.data)
        offsets: dict[str, int] = {}
        total = 0
        for name in ("q", "s", "h"):
            if name in regions:
                offsets[name] = total
                total = _align(total + regions[name].nbytes)
        host = np.zeros(total, np.uint8)  # (total,) staging image of the allocation
        for name, off in offsets.items():
            host[off:off + regions[name].nbytes] = regions[name]
        buf = self.rt.alloc(total, "weights", tensor.name, layer=layer, ggml_type=GGMLType(tensor.ggml_type).name)
        self.rt.htod(buf, host)
        self.rt.synchronize()  # `host` must outlive the copy
        n, k = (int(s) for s in tensor.shape)
        self._max_n = max(self._max_n, n)
        ptr = lambda r: buf.ptr + offsets[r] if r in offsets else 0  # noqa: E731
        return DeviceWeight(tensor.name, ktype, n, k, ptr("q"), ptr("s"), ptr("h"), total, buf)

    # -- workspace -----------------------------------------------------------------------------------
    def reserve(self, max_rows: int, max_k: int, max_n: int | None = None) -> None:
        """Allocate the tensor-core paths' f16 copy of x and split-K partials for inputs up to max_rows x max_k
        and the widest weight uploaded so far. Call after the uploads and before any graph capture (the backend
        does, with its first matmul workspace); max_n overrides the widest weight (for callers that upload
        later)."""
        if self._xh is None or self._xh.nbytes < 2 * max_rows * max_k:
            if self._xh is not None:
                self.rt.free(self._xh)
            self._xh = self.rt.alloc(_align(2 * max_rows * max_k), "activations", "matmul.x_f16")
        part = min(SPLIT_CAP_BYTES, _align(4 * SPLIT_MAX * max_rows * max(max_n or self._max_n, 1)))
        if part > self._part_cap:
            if self._part is not None:
                self.rt.free(self._part)
            self._part = self.rt.alloc(part, "activations", "matmul.splitk_partials")
            self._part_cap = part

    @staticmethod
    def workspace_bytes(max_rows: int, max_k: int) -> int:
        """Bytes of the workspace matmul needs for up to max_rows x max_k inputs (int8 quants + block scales, then
        the decode kernel's copies of up to DEC_COLS[-1] rows). With int8x2 n rows take paired_cols(n) workspace rows
        (up to VEC_MAX_ROWS), so any input reserves that many."""
        if max_rows <= 0:
            return 0
        n = DEC_COLS[-1]
        return CudaMatmul._dec_offset(max_k) + _align(n * 2 * CudaMatmul.dec_kp(max_k)) + \
            _align(n * (max_k // 32) * 8) + n * (max_k // 16) * 4

    @staticmethod
    def _ws_parts(workspace_ptr: int, n_rows: int, k: int) -> tuple[int, int]:
        """(xq ptr (n_rows, K) int8, xds ptr (n_rows, K/32) float2) inside the workspace."""
        return workspace_ptr, workspace_ptr + _align(n_rows * k)

    @staticmethod
    def dec_kp(k: int) -> int:
        """Bytes per pass of the decode copy of x (K rounded up to 2048: whole 32-unit groups, kernels/matmul_dec.cu)."""
        return -(-k // 2048) * 2048

    @staticmethod
    def _dec_offset(k: int) -> int:
        """Where the decode copy starts in the workspace: after the largest int8 / scale arrays of K-wide rows."""
        return _align(VEC_MAX_ROWS * k) + _align(VEC_MAX_ROWS * (k // 32) * 8)

    @staticmethod
    def _dec_parts(workspace_ptr: int, k: int) -> tuple[int, int, int]:
        """(xd ptr (rows, 2, Kp) int8, dsd ptr (rows, K/32) float2, xs16 ptr (rows, K/16) int32) of the decode copies
        of up to DEC_COLS[-1] rows in the workspace."""
        n = DEC_COLS[-1]
        xd = workspace_ptr + CudaMatmul._dec_offset(k)
        dsd = xd + _align(n * 2 * CudaMatmul.dec_kp(k))
        return xd, dsd, dsd + _align(n * (k // 32) * 8)

    # -- ops -----------------------------------------------------------------------------------------
    def quantize_act(self, x_ptr: int, n_rows: int, k: int, workspace_ptr: int) -> None:
        """x (n_rows, K) f32 -> int8 + scales in the workspace (reusable by several matmuls of the same x)."""
        assert n_rows <= VEC_MAX_ROWS and k % 32 == 0
        xq, xds = self._ws_parts(workspace_ptr, n_rows, k)
        nblocks = n_rows * k // 32
        fn = self._fn("quantize_act", "quantize_act_q8", "PPPi")
        fn.prepared_async_call(((nblocks * 8 + 255) // 256, 1), (256, 1, 1), self.rt.stream,
                               x_ptr, xq, xds, np.int32(nblocks))

    def quantize_act_x2(self, x_ptr: int, n_rows: int, k: int, workspace_ptr: int, res_rows: int | None = None,
                        decode: bool = False) -> None:
        """x (n_rows, K) f32 -> int8 + scales of x in rows [0, n_rows) and of its residual in rows
        [res_rows, res_rows + n_rows) of a (2 res_rows, K) workspace array (res_rows defaults to n_rows); with
        `decode` (up to DEC_COLS[-1] rows) also the copies the decode kernel reads (kernels/act_quant.cuh)."""
        res_rows = res_rows or n_rows
        assert n_rows <= res_rows and 2 * res_rows <= VEC_MAX_ROWS and k % 32 == 0
        assert not decode or n_rows <= DEC_COLS[-1]
        xq, xds = self._ws_parts(workspace_ptr, 2 * res_rows, k)
        xd, dsd, xs16 = self._dec_parts(workspace_ptr, k) if decode else (0, 0, 0)
        if decode and n_rows > 1:  # the decode copies of a few rows (quantize_act_q8x2_rows)
            fn = self._fn("quantize_act", "quantize_act_q8x2_rows", "PPPiiPPPi")
            fn.prepared_async_call((-(-k // 4 // 256), n_rows), (256, 1, 1), self.rt.stream, x_ptr, xq, xds,
                                   np.int32(k), np.int32(res_rows * k // 32), xd, dsd, xs16, np.int32(self.dec_kp(k)))
            return
        nblocks = n_rows * k // 32
        fn = self._fn("quantize_act", "quantize_act_q8x2", "PPPiiPPPii")
        fn.prepared_async_call(((nblocks * 8 + 255) // 256, 1), (256, 1, 1), self.rt.stream,
                               x_ptr, xq, xds, np.int32(nblocks), np.int32(res_rows * k // 32), xd, dsd, xs16,
                               np.int32(self.dec_kp(k)), np.int32(self.quant_trigger_first and decode))

    def row_quant_args(self, workspace_ptr: int, k: int) -> tuple:
        """(xq, xds, xd, dsd, xs16, Kp, trigger_first): where the two-pass quantization of one K-wide row goes in
        the workspace, as matmul_multi reads it at one row (the residual pass one row on; the decode copy when
        use_dec), for the kernels that quantize their own output (CudaBackend.fuse_quant)."""
        xq, xds = self._ws_parts(workspace_ptr, 2 * self.res_rows(1), k)
        xd, dsd, xs16 = self._dec_parts(workspace_ptr, k) if self.use_dec else (0, 0, 0)
        return xq, xds, xd, dsd, xs16, np.int32(self.dec_kp(k)), np.int32(self.quant_trigger_first and self.use_dec)

    def rows_quant_args(self, workspace_ptr: int, k: int, n_rows: int) -> tuple:
        """(xq, xds, xd, dsd, xs16, Kp, res_rows): the same for a few rows on the decode kernel's column entries
        (on_dec_cols), as matmul_multi reads them (each row's decode copy, the residual pass res_rows rows on), for
        the *_x2_rows producers."""
        res_rows = self.res_rows(n_rows)
        xq, xds = self._ws_parts(workspace_ptr, 2 * res_rows, k)
        return (xq, xds, *self._dec_parts(workspace_ptr, k), np.int32(self.dec_kp(k)), np.int32(res_rows))

    @staticmethod
    def res_rows(n_rows: int) -> int:
        """Where the residual pass of n_rows int8x2 rows starts in the workspace's xq / xds, in rows: half of the
        paired vector kernel's columns (what every producer and reader of that quantization agrees on)."""
        return CudaMatmul.paired_cols(n_rows) // 2

    @staticmethod
    def cols_entry(cols: int) -> str:
        """The suffix of the decode kernel's column entry for cols rows (c<NC>, NC the smallest of DEC_COLS that
        holds them), or "" for one row (cols 0)."""
        return f"c{next(c for c in DEC_COLS if c >= cols)}" if cols else ""

    @staticmethod
    def paired_cols(n_rows: int) -> int:
        """Columns of the paired (int8x2) vector kernel for n_rows rows: 2 x n_rows rounded up to a compiled count."""
        return next(c for c in VEC_COLS if c >= 2 * n_rows)

    def vec_kernel(self, w: DeviceWeight, n_rows: int, variant: str | None = None,
                   paired: bool = False) -> tuple[str, int]:
        """(kernel name, rows per block) of the vector kernel for n_rows columns, or with `paired` for n_rows
        rows of int8x2 (2 columns each; variant "r<R>t<RT>u<UNR>" overrides the configured one; the benchmark
        uses it)."""
        nc = self.paired_cols(n_rows) if paired else next(c for c in VEC_COLS if c >= n_rows)
        suffix = w.suffix
        if variant and ":" in variant:  # "<kernel flavour>:<config>", e.g. "st:r4t2u2" -> matmul_vec_q4_kst_...
            flavour, variant = variant.split(":")
            suffix += flavour
        if paired:
            cfg = variant or PAIRED_CONFIG_BY_TYPE.get(w.suffix, {}).get(nc) or PAIRED_CONFIG[nc]
        else:
            cfg = variant or VEC_CONFIG_BY_TYPE.get(w.suffix, {}).get(nc) or VEC_CONFIG[nc]
        r, rest = cfg[1:].split("t")
        rt = rest.split("u")[0]
        return f"matmul_vec_{suffix}_c{nc}{'p' if paired else ''}_{cfg}", int(r) * int(rt)

    def matmul(self, x_ptr: int, n_rows: int, w: DeviceWeight, out_ptr: int, workspace_ptr: int,
               prequantized: bool = False, variant: str | None = None, tile_m: int | None = None) -> None:
        """out (n_rows, N) f32 = x (n_rows, K) f32 @ W.T, on rt.stream. prequantized=True: the workspace
        already holds quantize_act(x) (e.g. Q/K/V sharing one input)."""
        self.matmul_multi(x_ptr, n_rows, [w], [out_ptr], workspace_ptr, prequantized, variant, tile_m)

    def on_vec_path(self, n_rows: int, w: DeviceWeight) -> bool:
        """Whether n_rows x w takes the vector kernel: up to vec_max_rows rows, and for the fragment kernel's types
        only up to frag_vec_rows (H100, bench/matmul_bench.py: a 7B step's matmuls at 4 rows take 3.7 ms on the
        fragment kernel vs ~5.5 ms on the paired int8x2 vector kernel and 3.05 ms on single-pass int8)."""
        if self.on_dec_cols(n_rows, w):
            return True
        limit = self.vec_max_rows
        if self.use_frag and w.suffix in FRAG_TYPES:
            limit = min(limit, self.frag_vec_rows)
        return n_rows <= limit

    def on_dec_cols(self, n_rows: int, w: DeviceWeight | None = None) -> bool:
        """Whether n_rows (from 2) take the decode kernel's column entries (DEC_COLS; w: and w's type)."""
        return 2 <= n_rows <= min(self.dec_cols, DEC_COLS[-1]) and self.int8x2 and self.use_dec and \
            self.dec_variant is None and (w is None or w.suffix in self.dec_types)

    def on_pipe_path(self, n_rows: int, w: DeviceWeight) -> bool:
        """Whether n_rows x w takes the pipelined kernel (Q4_K / Q6_K from PIPE_MIN_ROWS rows)."""
        if not self.use_pipe or w.suffix not in PIPE_TYPES:
            return False
        return n_rows >= (self.pipe_min_rows or PIPE_MIN_ROWS[w.suffix])

    def matmul_multi(self, x_ptr: int, n_rows: int, ws: list[DeviceWeight], outs: list[int], workspace_ptr: int,
                     prequantized: bool = False, variant: str | None = None, tile_m: int | None = None) -> bool:
        """outs[i] (n_rows, N_i) = x (n_rows, K) @ ws[i].T for matrices sharing the input x (Q/K/V, gate/up).
        On the vector path x is quantized once and same-type matrices share launches (up to 3 per launch); the
        others take the fragment or tiled kernel on one f16 copy of x. Returns whether the workspace holds x's
        int8 quantization afterwards (prequantized=True: it did before, and still does)."""
        if n_rows <= 0 or not ws:
            return prequantized
        k = ws[0].k
        assert all(w.k == k for w in ws) and len(outs) == len(ws)
        vec, big = [], []
        for w, o in zip(ws, outs):
            (vec if not tile_m and self.on_vec_path(n_rows, w) else big).append((w, o))
        pipe, rest = [], []
        for w, o in big:
            (pipe if not tile_m and self.on_pipe_path(n_rows, w) else rest).append((w, o))
        if rest:
            xh = self._to_f16(x_ptr, n_rows, k)
            for w, o in rest:
                if not tile_m and self.use_frag and w.suffix in FRAG_TYPES and n_rows <= self.frag_max_rows:
                    self._frag(xh, n_rows, w, o)
                else:
                    self._tiled(xh, n_rows, w, o, tile_m)
        if pipe:  # after the others: its f16 copy of x (pair order) reuses the same buffer
            xh = self._to_f16(x_ptr, n_rows, k, pairs=True)
            for members in self._launch_groups(pipe):
                self._pipe(xh, n_rows, members)
        if not vec:
            return prequantized
        x2 = self.int8x2  # then n_rows <= VEC_MAX_ROWS // 2 here (vec_max_rows)
        # the decode copy is written (whatever the types: x may be reused); several rows: their column entries
        dec = x2 and self.use_dec and (n_rows == 1 or self.on_dec_cols(n_rows))
        cols = n_rows if n_rows > 1 else 0
        res_rows = self.res_rows(n_rows) if x2 else n_rows
        quantized = prequantized
        if not prequantized and any(_TYPES[w.ggml_type].q8_act for w, _ in vec):
            if x2:
                self.quantize_act_x2(x_ptr, n_rows, k, workspace_ptr, res_rows, decode=dec)
            else:
                self.quantize_act(x_ptr, n_rows, k, workspace_ptr)
            quantized = True
        xq, xds = self._ws_parts(workspace_ptr, 2 * res_rows if x2 else n_rows, k)
        if dec and self.dec_mixed and not variant:
            mixed = self._dec_mixed(vec)
            if mixed is not None:
                self._dec_launch(workspace_ptr, mixed, None, mixed=True, cols=cols)
                vec = [m for m in vec if not any(m is n for n in mixed)]
        for members in self._launch_groups(vec):
            if dec and members[0][0].suffix in self.dec_types and not (variant and not variant.startswith("dec")) and \
                    self.dec_kernel(members[0][0], variant or self.dec_variant, cols) is not None:
                self._dec_launch(workspace_ptr, members, variant or self.dec_variant, cols=cols)
                continue
            paired = x2 and _TYPES[members[0][0].ggml_type].q8_act  # both int8 passes, summed in the kernel
            self._vec_launch(x_ptr, xq, xds, n_rows, members, variant, paired)
        return quantized

    @staticmethod
    def _launch_groups(pairs: list[tuple[DeviceWeight, int]]) -> list[list[tuple[DeviceWeight, int]]]:
        """(weight, out) pairs by weight type, in chunks of up to MULTI_MAX: the matrices one multi-matrix launch
        serves (vector and pipelined kernels)."""
        by_type: dict[GGMLType, list[tuple[DeviceWeight, int]]] = {}
        for w, o in pairs:
            by_type.setdefault(w.ggml_type, []).append((w, o))
        return [g[i:i + MULTI_MAX] for g in by_type.values() for i in range(0, len(g), MULTI_MAX)]

    def _vec_launch(self, x_ptr: int, xq: int, xds: int, n_rows: int, members: list[tuple[DeviceWeight, int]],
                    variant: str | None, paired: bool = False) -> None:
        w0 = members[0][0]
        q8 = _TYPES[w0.ggml_type].q8_act
        name, rpb = self.vec_kernel(w0, n_rows, variant, paired)
        fn = self._fn("matmul_vec", name, "PPPPi" * MULTI_MAX + "iPPPi")
        args: list[Any] = []
        blocks = 0
        for i in range(MULTI_MAX):
            if i < len(members):
                w, o = members[i]
                args += [w.q_ptr, w.s_ptr, w.h_ptr, o, np.int32(w.n)]
                blocks += (w.n + rpb - 1) // rpb
            else:
                args += [0, 0, 0, 0, np.int32(0)]
        args += [np.int32(w0.k), xq if q8 else 0, xds if q8 else 0, 0 if q8 else x_ptr, np.int32(n_rows)]
        fn.prepared_async_call((blocks, 1), (128, 1, 1), self.rt.stream, *args)

    @staticmethod
    def dec_kernel(w: DeviceWeight, variant: str | None = None, cols: int = 0) -> tuple[str, int] | None:
        """(kernel name, rows per block) of the decode kernel for w, or None where DEC_CONFIG leaves w's K to the
        paired vector kernel; variant "dec:<config>[/<config>]" (up to DEC_SHORT_K / above) overrides DEC_CONFIG
        where the type has that configuration. cols (2 .. DEC_COLS[-1]): the column entry for that many rows."""
        long_k = w.k > DEC_SHORT_K
        cfg = DEC_COLS_CONFIG[long_k] if cols else DEC_CONFIG[w.suffix][long_k]
        if variant and ":" in variant and not cols:
            want = variant.split(":", 1)[1].split("/")
            want = want[long_k] if len(want) > 1 else want[0]
            if want in DEC_VARIANTS[w.suffix]:
                cfg = want
        if cfg is None:
            return None
        rows_per_warp = int(re.match(r"r(\d+)", cfg).group(1))  # (k2: per pair of warps)
        name = f"matmul_dec_{w.suffix}_{cfg}{CudaMatmul.cols_entry(cols)}"
        return name, (DEC_WARPS // 2 if "k2" in cfg else DEC_WARPS) * rows_per_warp

    def _dec_mixed(self, vec: list[tuple[DeviceWeight, int]]) -> list[tuple[DeviceWeight, int]] | None:
        """The (weight, out) pairs of one DEC_MIXED launch among vec, Q4_K first, or None where vec has none: one or
        two Q4_K and one Q6_K matrix, on the decode kernel's default configuration at their K."""
        if not vec or vec[0][0].k > DEC_SHORT_K or DEC_CONFIG["q4_k"][0] != "r2s2" or DEC_CONFIG["q6_k"][0] != "r2s2":
            return None
        by = {t: [m for m in vec if m[0].suffix == t] for t in ("q4_k", "q6_k")}
        if not (self.dec_types >= {"q4_k", "q6_k"} and 1 <= len(by["q4_k"]) <= 2 and len(by["q6_k"]) == 1):
            return None
        return by["q4_k"] + by["q6_k"]

    def glu_ok(self, n_rows: int, wg: DeviceWeight, wu: DeviceWeight) -> bool:
        """Whether dec_glu takes gate wg and up wu at n_rows rows: one row on the decode path, both Q4_K of one shape
        up to K = DEC_SHORT_K, whole chunks of 32 rows."""
        return n_rows == 1 and self.int8x2 and self.use_dec and self.dec_variant is None and \
            "q4_k" in self.dec_types and wg.suffix == wu.suffix == "q4_k" and (wg.n, wg.k) == (wu.n, wu.k) and \
            wg.k <= DEC_SHORT_K and wg.n % 32 == 0

    def dec_glu(self, workspace_ptr: int, wg: DeviceWeight, og: int, wu: DeviceWeight, ou: int, h: int,
                quant: tuple) -> None:
        """og = x @ wg.T, ou = x @ wu.T (one row; x's decode copy in the workspace), h = silu(og) * ou and, where
        quant = row_quant_args(workspace, N) says, h's two-pass quantization: one launch (kernels/matmul_dec.cu,
        dec_glu_body), as many blocks as are resident at once, up to one per 32 rows."""
        assert self.glu_ok(1, wg, wu)
        warps, stages = (int(v) for v in re.fullmatch(r"w(\d+)s(\d+)", self.glu_config).groups())
        name = f"matmul_dec_glu_q4_k_{self.glu_config}"
        shared = stages * warps * 2 * (wg.k // 256) * DEC_BLOCK_BYTES["q4_k"]
        fn = self._shared_fn("matmul_dec", name, "PPPPiiPPiP" + "PPPPPi", shared, allow_all=True)
        blocks = min(wg.n // 32, self.rt.sm_count * self._resident_blocks(name, fn, warps, shared))
        xd, dsd, _ = self._dec_parts(workspace_ptr, wg.k)
        fn.prepared_async_call((blocks, 1), (32 * warps, 1, 1), self.rt.stream, wg.q_ptr, og, wu.q_ptr, ou,
                               np.int32(wg.n), np.int32(wg.k), xd, dsd, np.int32(self.dec_kp(wg.k)), h, *quant[:6],
                               shared_size=shared)

    def _shared_fn(self, module: str, name: str, sig: str, shared: int, allow_all: bool = False) -> Any:
        """_fn (through it each time: benchmarks wrap it) for an entry launched with `shared` bytes of dynamic shared
        memory: on its first use allowed that much, or with allow_all all a block may have (its sizes vary by K)."""
        fresh = name not in self._fns
        fn = self._fn(module, name, sig)
        if fresh and shared:
            drv = self.rt.driver
            if allow_all:
                optin = getattr(drv.device_attribute, "MAX_SHARED_MEMORY_PER_BLOCK_OPTIN", None)
                most = self.rt.device.get_attribute(optin) if optin is not None else 227 << 10
                shared = most - fn.shared_size_bytes
            fn.set_attribute(drv.function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES, shared)
        return fn

    def _dec_launch(self, workspace_ptr: int, members: list[tuple[DeviceWeight, int]], variant: str | None,
                    mixed: bool = False, cols: int = 0) -> None:
        """One row of int8x2 activations x up to MULTI_MAX Q4_K or Q6_K matrices (kernels/matmul_dec.cu); mixed:
        members = one or two Q4_K then one Q6_K matrix, through DEC_MIXED (the Q6_K one in the third slot); cols:
        that many rows (2 .. DEC_COLS[-1]) on the column entries."""
        w0 = members[0][0]
        if mixed:
            name, rpb = DEC_MIXED + self.cols_entry(cols), DEC_WARPS * 2
            members = members[:-1] + [None] * (MULTI_MAX - len(members)) + members[-1:]
        else:
            found = self.dec_kernel(w0, variant, cols)
            assert found is not None
            name, rpb = found
        cfg = name.rsplit("_", 1)[1].split("c")[0]
        stages = int(cfg.split("s")[1]) if "s" in cfg else 0
        row_bytes = max(DEC_BLOCK_BYTES[m[0].suffix] for m in members if m is not None)
        shared = stages * rpb * (w0.k // 256) * row_bytes  # the copied rows in shared memory
        if "k2" in cfg:  # every warp a stage of the longer half of its rows (dec_pipe_k2_body)
            half_blocks = ((w0.k // 64 // 2 + 3) // 4 * 4) // 4
            shared = stages * DEC_WARPS * (rpb // (DEC_WARPS // 2)) * half_blocks * row_bytes
        nxt = self._next_weights(w0) if len(members) == 1 and name in PREFETCH_ENTRIES else 0
        if nxt:
            name += "f"  # the twin that prefetches
        fn = self._shared_fn("matmul_dec", name, "PPPi" * MULTI_MAX + "iPPPi" + ("Pi" if nxt else "") +
                             ("i" if cols else ""), shared, allow_all=True)
        args: list[Any] = []
        blocks = 0
        for i in range(MULTI_MAX):
            if i < len(members) and members[i] is not None:
                w, o = members[i]
                args += [w.q_ptr, w.s_ptr, o, np.int32(w.n)]
                blocks += (w.n + rpb - 1) // rpb
            else:
                args += [0, 0, 0, np.int32(0)]
        if "s" in cfg:  # pipelined: as many blocks as are resident at once, the warps walk the row groups
            blocks = min(blocks, self.rt.sm_count * self._resident_blocks(name, fn, DEC_WARPS, shared))
        xd, dsd, xs16 = self._dec_parts(workspace_ptr, w0.k)
        args += [np.int32(w0.k), xd, dsd, xs16, np.int32(self.dec_kp(w0.k))]
        if nxt:
            args += [nxt, np.int32(self.prefetch_kb)]
        if cols:
            args += [np.int32(cols)]
        fn.prepared_async_call((blocks, 1), (32 * DEC_WARPS, 1, 1), self.rt.stream, *args, shared_size=shared)

    def _next_weights(self, w: DeviceWeight) -> int:
        """The start of the prefetch_kb KB that follow w's buffer (the next buffer carved from its slab), or 0: no
        prefetch asked, w not in a slab, or the window would leave it."""
        slab = getattr(w.buffer, "slab", None)
        if not self.prefetch_kb or slab is None:
            return 0
        start = _align(w.buffer.ptr + w.buffer.nbytes, 256)
        return start if start + (self.prefetch_kb << 10) <= slab.ptr + slab.nbytes else 0

    def _resident_blocks(self, name: str, fn: Any, warps: int, shared: int) -> int:
        """Blocks of `warps` warps of entry `name` with `shared` dynamic shared memory that one SM holds at once
        (registers are allocated per warp in 256-register units; the driver reserves 1 KB of shared memory per
        block); asked of the device once per entry and size."""
        key = (name, shared)
        if key not in self._slots:
            drv = self.rt.driver
            smem_sm = self.rt.device.get_attribute(drv.device_attribute.MAX_SHARED_MEMORY_PER_MULTIPROCESSOR)
            regs_sm = self.rt.device.get_attribute(drv.device_attribute.MAX_REGISTERS_PER_MULTIPROCESSOR)
            warp_regs = -(-max(fn.num_regs, 1) * 32 // 256) * 256
            by_smem = smem_sm // (shared + fn.shared_size_bytes + 1024)
            self._slots[key] = max(1, min(by_smem, regs_sm // (warps * warp_regs), 64 // warps))
        return self._slots[key]

    @staticmethod
    def tile_m_for(n_rows: int) -> int:
        """M tile of the tiled kernel: the smallest of 32 / 64 / 128 rows that holds the rows, 128 above."""
        return 32 if n_rows <= 32 else 64 if n_rows <= 64 else 128

    def split_k(self, n_rows: int, n: int, k: int, bm: int, per_sm: int | None = None, min_k: int | None = None) -> int:
        """K splits of a tiled matmul: the count that finishes the blocks in the fewest block-waves per unit of
        work, ceil(tiles * S / slots) / S, slots = resident blocks per SM x SMs (smaller S on ties); each split
        keeps at least SPLIT_MIN_STEPS K steps (or min_k K values) and the partials fit the reserved buffer."""
        fits = self._part_cap // (4 * n_rows * n)  # splits whose partials fit the reserved buffer
        if self.split_override:
            assert self.split_override == 1 or self.split_override <= fits, "reserve() a larger partials buffer"
            return self.split_override
        tiles = -(-n // TILE_N) * -(-n_rows // bm)
        slots = (per_sm or BLOCKS_PER_SM[bm]) * self.rt.sm_count
        most = min(SPLIT_MAX, -(-k // TILE_K) // SPLIT_MIN_STEPS if min_k is None else k // min_k, fits)
        return min(range(1, max(1, most) + 1), key=lambda s: (-(-tiles * s // slots) / s, s))

    def _to_f16(self, x_ptr: int, n_rows: int, k: int, pairs: bool = False) -> int:
        """x (n_rows, K) f32 -> the reserved f16 copy (pairs: in the pipelined kernel's order, each 16-value group
        as its even values, then its odd ones); returns its pointer."""
        if self._xh is None or self._xh.nbytes < 2 * n_rows * k:
            raise RuntimeError("CudaMatmul.reserve(max_rows, max_k) must precede tiled matmuls of this size")
        if pairs:
            n16 = n_rows * k // 16
            fn = self._fn("matmul_pipe", "to_f16_pairs", "PPi")
            fn.prepared_async_call(((n16 + 255) // 256, 1), (256, 1, 1), self.rt.stream, x_ptr, self._xh.ptr,
                                   np.int32(n16))
            return self._xh.ptr
        n4 = n_rows * k // 4
        fn = self._fn("matmul_tiled", "to_f16", "PPi")
        fn.prepared_async_call(((n4 + 255) // 256, 1), (256, 1, 1), self.rt.stream, x_ptr, self._xh.ptr, np.int32(n4))
        return self._xh.ptr

    def _plan(self, n_rows: int, n: int, k: int, bm: int, unit: int, per_sm: int | None = None,
              min_k: int | None = None) -> tuple[int, int]:
        """(splits, K values per split) of a tensor-core matmul of n outputs: split_k's count, each split a whole
        number of `unit` K values (rounding can leave fewer non-empty splits)."""
        units = -(-k // unit)
        per = -(-units // min(self.split_k(n_rows, n, k, bm, per_sm, min_k), units))
        return -(-units // per), per * unit

    def _launch_split(self, fn: Any, grid_xy: tuple[int, int], splits: int, args: tuple, n_rows: int,
                      w: DeviceWeight, out_ptr: int, shared: int = 0) -> None:
        """Launch a tensor-core matmul whose last two arguments are (out, ksplit) with grid.z = splits; with
        splits > 1 it writes the partials and splitk_reduce sums them into out in a fixed order."""
        dst = self._part.ptr if splits > 1 else out_ptr
        fn.prepared_async_call((*grid_xy, splits), (256, 1, 1), self.rt.stream, *args[:-1], dst, args[-1],
                               shared_size=shared)
        if splits > 1:
            mn = n_rows * w.n
            red = self._fn("matmul_tiled", "splitk_reduce", "PPii")
            red.prepared_async_call(((mn + 255) // 256, 1), (256, 1, 1), self.rt.stream,
                                    self._part.ptr, out_ptr, np.int32(mn), np.int32(splits))

    def _tiled(self, xh_ptr: int, n_rows: int, w: DeviceWeight, out_ptr: int, tile_m: int | None) -> None:
        bm = tile_m or self.tile_m_for(n_rows)
        splits, ksplit = self._plan(n_rows, w.n, w.k, bm, TILE_K)
        fn = self._fn("matmul_tiled", f"matmul_tiled_{w.suffix}_m{bm}", "PPPiiPiPi")
        args = (w.q_ptr, w.s_ptr, w.h_ptr, np.int32(w.n), np.int32(w.k), xh_ptr, np.int32(n_rows), np.int32(ksplit))
        self._launch_split(fn, (-(-w.n // TILE_N), -(-n_rows // bm)), splits, args, n_rows, w, out_ptr)

    def _frag(self, xh_ptr: int, n_rows: int, w: DeviceWeight, out_ptr: int) -> None:
        """Q4_K / Q6_K at few rows: quants straight into MMA fragments (kernels/matmul_frag.cu); K splits planned
        like the tiled kernel's (one 64-row tile), in whole 256-value blocks."""
        nt = next(c for c in (1, 2, 4, 8) if 8 * c >= n_rows)
        splits, ksplit = self._plan(n_rows, w.n, w.k, 64, 256)
        args = (w.q_ptr, w.s_ptr, np.int32(w.n), np.int32(w.k), xh_ptr, np.int32(n_rows), np.int32(ksplit))
        shared = ksplit // 256 * FRAG_AHEAD_BLOCK_BYTES
        if nt == 1 and self.frag_ahead and shared <= FRAG_AHEAD_MAX_SHARED:
            name = f"matmul_frag_{w.suffix}_n1a{self.frag_ahead}"
            fn = self._shared_fn("matmul_frag", name, "PPiiPiPi", FRAG_AHEAD_MAX_SHARED)
            self._launch_split(fn, (-(-w.n // TILE_N), 1), splits, args, n_rows, w, out_ptr, shared)
            return
        fn = self._fn("matmul_frag", f"matmul_frag_{w.suffix}_n{nt}", "PPiiPiPi")
        self._launch_split(fn, (-(-w.n // TILE_N), 1), splits, args, n_rows, w, out_ptr)

    @staticmethod
    def pipe_tile(n_rows: int) -> int:
        """x rows per block of the pipelined kernel: the smallest of PIPE_TILES that holds the rows, 128 above."""
        return next((m for m in PIPE_TILES if m >= n_rows), PIPE_TILES[-1])

    @staticmethod
    def pipe_smem_bytes(suffix: str, tile: int, stages: int) -> int:
        """Dynamic shared memory of a pipelined entry: per stage, x (tile rows x 136 f16) + 128 weight rows."""
        return stages * (tile * 136 * 2 + TILE_N * PIPE_ROW_BYTES[suffix])

    def _pipe(self, xp_ptr: int, n_rows: int, members: list[tuple[DeviceWeight, int]]) -> None:
        """Q4_K / Q6_K at many rows: quantized tiles through a cp.async pipeline, fragments built in registers
        (kernels/matmul_pipe.cu); x in pair order; up to MULTI_MAX same-type matrices (w, out ptr) sharing x in
        one launch; K splits planned from their tiles and the entry's blocks per SM."""
        w0 = members[0][0]
        tile = self.pipe_tile(n_rows)
        stages = self.pipe_stages or PIPE_STAGES[tile]
        name = f"matmul_pipe_{w0.suffix}_m{tile}_s{stages}"
        shared = self.pipe_smem_bytes(w0.suffix, tile, stages)
        fn = self._shared_fn("matmul_pipe", name, "PPPi" * MULTI_MAX + "iPiPi", shared)
        n_tot = sum(w.n for w, _ in members)
        tiles_n = sum(-(-w.n // TILE_N) for w, _ in members)
        slots = self._resident_blocks(name, fn, 8, shared)
        splits, ksplit = self._plan(n_rows, n_tot, w0.k, tile, 256, slots, PIPE_SPLIT_MIN_K)
        args: list[Any] = []
        for i in range(MULTI_MAX):
            if i < len(members):
                w, o = members[i]
                args += [w.q_ptr, w.s_ptr, o, np.int32(w.n)]
            else:
                args += [0, 0, 0, np.int32(0)]
        args += [np.int32(w0.k), xp_ptr, np.int32(n_rows), self._part.ptr if splits > 1 else 0, np.int32(ksplit)]
        fn.prepared_async_call((-(-n_rows // tile), tiles_n, splits), (256, 1, 1), self.rt.stream, *args,
                               shared_size=shared)
        if splits > 1:
            mns = [n_rows * w.n for w, _ in members] + [0] * (MULTI_MAX - len(members))
            outs = [o for _, o in members] + [0] * (MULTI_MAX - len(members))
            red = self._fn("matmul_pipe", "splitk_reduce_multi", "PPiPiPii")
            red.prepared_async_call((-(-sum(mns) // 256), 1), (256, 1, 1), self.rt.stream, self._part.ptr,
                                    outs[0], np.int32(mns[0]), outs[1], np.int32(mns[1]), outs[2], np.int32(mns[2]),
                                    np.int32(splits))

    def embedding(self, table: DeviceWeight, ids_ptr: int, n_rows: int, out_ptr: int) -> None:
        """out (n_rows, K) f32 = dequantized rows ids[0:n_rows] (int32, device) of the table."""
        if n_rows <= 0:
            return
        fn = self._fn("get_rows", f"get_rows_{table.suffix}", "PPPiiPiP")
        nch = table.k // 32
        fn.prepared_async_call(((nch + 127) // 128, n_rows), (128, 1, 1), self.rt.stream,
                               table.q_ptr, table.s_ptr, table.h_ptr, np.int32(table.n), np.int32(table.k),
                               ids_ptr, np.int32(n_rows), out_ptr)

