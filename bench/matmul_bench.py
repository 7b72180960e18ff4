"""Benchmark of the CUDA matmul kernels: decode (vector, dp4a) GB/s as % of a device-to-device copy measured in
the same run, tiled (tensor-core) TFLOP/s at 512 rows, and a 7B Q4_K_M decode step's 225 matmuls as one graph.

    python -m bench.matmul_bench [--quick] [--out DIR]      # GPU machine; JSON to DIR (default bench/out/)

Method: random valid blocks (finite random f16 scales, never zeros); every timed region is a CUDA graph of many
launches (so Python's ~9 us per launch stays out), timed with CUDA events over repeated replays; decode timings
rotate through enough weight copies to exceed twice the L2, so weights come from HBM as in a real step.
Bytes counted per matmul = the weight bytes (activations are < 1 % and come from L2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

from service.backends import cuda_matmul
from service.backends.cuda_matmul import CudaMatmul, DeviceWeight

F16_FIELDS = {T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q8_0: (0,),
              T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}
SHAPES_7B = [(4096, 4096), (11008, 4096), (4096, 11008), (32000, 4096)]
# vector-kernel configurations compiled in kernels/matmul_vec.cu (r<R>t<RT>u<UNR>)
VARIANTS_C1 = ["r4t1u1", "r4t1u2", "r4t2u1", "r4t2u2", "r4t4u1", "r2t2u1", "r2t4u1", "r1t2u1", "r1t4u1", "r1t8u1"]
VARIANTS_C1 += ["st:r4t2u1", "st:r4t2u2"]  # Q4_K only: L1-non-allocating weight loads
VARIANTS_CN = {2: ["r4t2u1", "r4t4u1"], 4: ["r4t2u1", "r4t4u1"], 8: ["r4t2u1"]}  # Q4_K, 2 / 4 / 8 columns
VARIANT_TYPES = (T.Q4_K, T.Q6_K, T.Q8_0, T.Q4_1)


@dataclasses.dataclass
class _Tensor:
    name: str
    ggml_type: T
    shape: tuple[int, int]
    data: np.ndarray


def random_tensor(ggml_type: T, n: int, k: int, rng: np.random.Generator) -> _Tensor:
    """Random valid storage of an (n, k) tensor (scales ~ 1e-2 like real weights)."""
    if ggml_type in (T.F16, T.F32):
        dt = np.float16 if ggml_type == T.F16 else np.float32
        return _Tensor("w", ggml_type, (n, k), (rng.standard_normal((n, k), np.float32) * 0.05).astype(dt))  # (n, k)
    vals, bb = GGML_QUANT_SIZES[ggml_type]
    raw = rng.integers(0, 256, (n, k // vals, bb), dtype=np.uint8)  # (n, blocks, block bytes)
    for at in F16_FIELDS[ggml_type]:
        f = (rng.standard_normal((n, k // vals), np.float32) * 1e-2).astype(np.float16)  # (n, blocks)
        raw[:, :, at:at + 2] = f[..., None].view(np.uint8)
    return _Tensor("w", ggml_type, (n, k), raw.reshape(n, -1))


class Bench:
    def __init__(self, quick: bool, only: str = "all"):
        import pycuda.driver as cuda

        from service.backends.cuda_runtime import CudaGraph, CudaRuntime

        self.cuda, self.CudaGraph = cuda, CudaGraph
        self.rt = CudaRuntime(0)
        self.mm = CudaMatmul(self.rt)
        t0 = time.time()
        self.mm.warm_up()
        self.compile_s = time.time() - t0
        self.quick, self.only = quick, only
        self.rng = np.random.default_rng(0)
        self.rows: list[dict[str, Any]] = []
        self._orig: dict[tuple, DeviceWeight] = {}
        self._copies: dict[tuple, list[DeviceWeight]] = {}
        max_k, max_rows, max_n = 11008, 512, 32000
        self.x = self.rt.alloc(4 * max_rows * max_k, "activations", "x")
        self.rt.htod(self.x, self.rng.standard_normal((max_rows, max_k), np.float32))
        self.out = self.rt.alloc(4 * max_rows * max_n, "activations", "out")
        self.ws = self.rt.alloc(self.mm.workspace_bytes(8, max_k), "activations", "ws")
        self.mm.reserve(max_rows, max_k, max_n)
        self.rt.synchronize()

    # -- helpers -------------------------------------------------------------------------------------
    def add(self, row: dict | None) -> None:
        """Keep and print a measured row (cases that cannot run here return None)."""
        if row:
            self.rows.append(row)
            print(json.dumps(row), flush=True)

    def timed(self, launches: list[Callable[[], None]], reps: int) -> float:
        """Seconds per launch-list entry: capture all launches as one graph, replay `reps` times."""
        g = self.CudaGraph(self.rt)
        g.capture(lambda: [f() for f in launches])
        g.replay()
        self.rt.synchronize()
        start, end = self.cuda.Event(), self.cuda.Event()
        start.record(self.rt.stream)
        for _ in range(reps):
            g.replay()
        end.record(self.rt.stream)
        end.synchronize()
        g.destroy()
        return end.time_since(start) / 1e3 / (reps * len(launches))

    def copy_bandwidth(self) -> float:
        nb = 1 << 29
        a = self.rt.alloc(nb, "activations", "copy_a")
        b = self.rt.alloc(nb, "activations", "copy_b")
        self.cuda.memcpy_htod(a.ptr, self.rng.integers(0, 256, nb, dtype=np.uint8))
        cp = lambda: self.cuda.memcpy_dtod_async(b.ptr, a.ptr, nb, self.rt.stream)  # noqa: E731
        cp()
        self.rt.synchronize()
        start, end = self.cuda.Event(), self.cuda.Event()
        start.record(self.rt.stream)
        for _ in range(20):
            cp()
        end.record(self.rt.stream)
        end.synchronize()
        s = end.time_since(start) / 1e3 / 20
        self.rt.free(a)
        self.rt.free(b)
        return 2 * nb / s

    def weights(self, ggml_type: T, n: int, k: int, min_total: int) -> list[DeviceWeight]:
        """Copies of one random tensor, at least `min_total` bytes together (L2 rotation)."""
        key = (ggml_type, n, k)
        if key not in self._orig:
            self._orig[key] = self.mm.upload(random_tensor(ggml_type, n, k, self.rng))
            self._copies[key] = [self._orig[key]]
        w0 = self._orig[key]
        copies = self._copies[key]
        while len(copies) * w0.nbytes < min_total:
            buf = self.rt.alloc(w0.nbytes, "weights", f"copy{len(copies)}")
            self.cuda.memcpy_dtod_async(buf.ptr, w0.buffer.ptr, w0.nbytes, self.rt.stream)
            shift = buf.ptr - w0.buffer.ptr
            copies.append(dataclasses.replace(w0, q_ptr=w0.q_ptr + shift, s_ptr=w0.s_ptr + shift if w0.s_ptr else 0,
                                              h_ptr=w0.h_ptr + shift if w0.h_ptr else 0, buffer=buf))
        self.rt.synchronize()
        n_need = max(1, -(-min_total // w0.nbytes))
        return copies[:n_need]

    def free_weights(self) -> None:
        for copies in self._copies.values():
            for w in copies:
                self.rt.free(w.buffer)
        self._orig.clear()
        self._copies.clear()

    # -- cases ---------------------------------------------------------------------------------------
    def vec(self, ggml_type: T, n: int, k: int, n_rows: int, variant: str | None, with_quant: bool) -> dict:
        ws = self.weights(ggml_type, n, k, 3 * self.rt.l2_bytes)
        per_pass = len(ws)
        passes = max(1, 48 // per_pass)
        launches = [(lambda w=w: self.mm.matmul(self.x.ptr, n_rows, w, self.out.ptr, self.ws.ptr,
                                                prequantized=not with_quant, variant=variant))
                    for _ in range(passes) for w in ws]
        if not with_quant and ggml_type not in (T.F16, T.F32):
            self.mm.quantize_act(self.x.ptr, n_rows, k, self.ws.ptr)  # valid int8 input for the timed kernels
        s = self.timed(launches, reps=10 if self.quick else 30)
        wb = ws[0].nbytes
        cfg = self.mm.vec_kernel(ws[0], n_rows, variant)[0].rsplit("_", 1)[1]
        return dict(path="vec", type=ggml_type.name, n=n, k=k, n_rows=n_rows, variant=variant or f"={cfg}",
                    with_quant=with_quant, us=s * 1e6, gbps=wb / s / 1e9, pct_copy=100 * wb / s / self.copy_bw)

    def frag(self, ggml_type: T, n: int, k: int, m: int, splits: int | None = None) -> dict | None:
        """The fragment kernel (Q4_K / Q6_K, <= mm.frag_max_rows rows), weights rotating past the L2."""
        r = self.tiled(ggml_type, n, k, m, None, splits)
        return r and dict(r, path="frag", variant=f"s{splits or '='}")

    def tiled(self, ggml_type: T, n: int, k: int, m: int, tile_m: int | None, splits: int | None = None) -> dict | None:
        """Tiled path at m rows (f16 conversion of x included). Few rows are bandwidth-bound: weights then rotate
        past the L2 like the vector cases."""
        ws = self.weights(ggml_type, n, k, 3 * self.rt.l2_bytes if m <= 64 else 1)
        passes = max(1, (48 if m <= 64 else 4) // len(ws))
        if splits and splits > 1 and splits * m * n * 4 > self.mm._part_cap:
            return None  # the partials would not fit the reserved buffer
        self.mm.split_override = splits
        vec_max, self.mm.vec_max_rows = self.mm.vec_max_rows, 0  # every row count on the tensor-core kernels
        try:
            chosen = splits or self.mm.split_k(m, n, k, tile_m or 64)
            launches = [(lambda w=w: self.mm.matmul(self.x.ptr, m, w, self.out.ptr, self.ws.ptr, tile_m=tile_m))
                        for _ in range(passes) for w in ws]
            s = self.timed(launches, reps=3 if self.quick else 8)
        finally:
            self.mm.split_override, self.mm.vec_max_rows = None, vec_max
        wb = ws[0].nbytes
        return dict(path="tiled", type=ggml_type.name, n=n, k=k, n_rows=m, variant=f"m{tile_m}s{chosen}" +
                    ("" if splits else "="), us=s * 1e6, tflops=2 * m * n * k / s / 1e12, gbps=wb / s / 1e9,
                    pct_copy=100 * wb / s / self.copy_bw)

    def pipe(self, ggml_type: T, n: int, k: int, m: int, stages: int, splits: int | None = None) -> dict | None:
        """The pipelined kernel (Q4_K / Q6_K, many rows) with `stages` K stages in flight (and `splits` K splits)."""
        saved = self.mm.pipe_min_rows, self.mm.pipe_stages, self.mm.use_frag
        self.mm.pipe_min_rows, self.mm.pipe_stages, self.mm.use_frag = 1, stages, False
        try:
            r = self.tiled(ggml_type, n, k, m, None, splits)
        finally:
            self.mm.pipe_min_rows, self.mm.pipe_stages, self.mm.use_frag = saved
        return r and dict(r, path="pipe", variant=f"s{stages}" + (f"k{splits}" if splits else ""))

    def step_7b(self, fused: bool, n_rows: int = 1, tiled: bool = False, frag: bool = True,
                pipe: bool = True, stages: int | None = None) -> dict:
        """The 225 matmuls of one Llama-2-7B Q4_K_M decode step of n_rows sequences (+ the activation
        quantizations / f16 conversions per layer) as one graph; fused: Q/K/V and gate/up through matmul_multi
        (same-type matrices share a launch).
        Q4_K_M mix (llama.cpp): attn_v and ffn_down are Q6_K in layers i < n/8, i >= 7n/8, (i - n/8) % 3 == 2."""
        n_layers, dim, ffn, vocab = 32, 4096, 11008, 32000
        more_bits = lambda i: i < n_layers // 8 or i >= 7 * n_layers // 8 or (i - n_layers // 8) % 3 == 2  # noqa: E731
        need: dict[tuple, int] = {}
        plan = []
        for i in range(n_layers):
            vt = T.Q6_K if more_bits(i) else T.Q4_K
            for name, tp, n, k in (("q", T.Q4_K, dim, dim), ("k", T.Q4_K, dim, dim), ("v", vt, dim, dim),
                                   ("o", T.Q4_K, dim, dim), ("gate", T.Q4_K, ffn, dim), ("up", T.Q4_K, ffn, dim),
                                   ("down", vt, dim, ffn)):
                key = (tp, n, k)
                plan.append((name, key, need.get(key, 0)))
                need[key] = need.get(key, 0) + 1
        plan.append(("output", (T.Q6_K, vocab, dim), 0))
        need[(T.Q6_K, vocab, dim)] = 1
        pool: dict[tuple, list[DeviceWeight]] = {}
        for key, cnt in need.items():
            tp, n, k = key
            probe = self.weights(tp, n, k, 1)[0]
            pool[key] = self.weights(tp, n, k, cnt * probe.nbytes)
        total_bytes = sum(pool[key][idx].nbytes for _, key, idx in plan)
        mm, x, out, wsp = self.mm, self.x.ptr, self.out.ptr, self.ws.ptr

        def step() -> None:
            i = 0
            while i < len(plan):
                name = plan[i][0]
                group = 3 if (fused and name == "q") else 2 if (fused and name == "gate") else 1
                ws = [pool[key][idx] for _, key, idx in plan[i:i + group]]
                mm.matmul_multi(x, n_rows, ws, [out] * group, wsp, prequantized=name in ("k", "v", "up"))
                i += group

        vec_max = mm.vec_max_rows
        mm.vec_max_rows = 0 if tiled else vec_max  # tiled: every row count takes the tensor-core path
        mm.use_frag = frag and tiled  # ... the fragment kernel for Q4_K / Q6_K up to 64 rows, or the tiled one
        mm.use_pipe = pipe  # the pipelined kernel for Q4_K / Q6_K (from PIPE_MIN_ROWS rows, or mm.pipe_min_rows)
        mm.pipe_stages = stages
        try:
            s = self.timed([step], reps=10 if self.quick else 30)
        finally:
            mm.vec_max_rows, mm.use_frag, mm.use_pipe, mm.pipe_stages = vec_max, True, True, None
        path = ("/frag" if frag else "/tiled") if tiled else ""
        path += ("/pipe" + (f"s{stages}" if stages else "")) if pipe else ""
        return dict(path="step7b", type="Q4_K_M" + ("/fused" if fused else "") + path, n_matmuls=len(plan), n_rows=n_rows,
                    weight_bytes=total_bytes, us=s * 1e6,
                    tok_s=n_rows / s, gbps=total_bytes / s / 1e9, pct_copy=100 * total_bytes / s / self.copy_bw)

    # -- run -----------------------------------------------------------------------------------------
    def run_tiled(self) -> None:
        """Few rows: the fragment kernel vs the tiled one (K splits), 512 rows on the tiled one, and whole 7B
        steps through each next to the vector path."""
        add = self.add
        self.mm.frag_max_rows = 64  # every compiled column count, for the comparison
        try:
            for tp in (T.Q4_K, T.Q6_K):
                for n, k in SHAPES_7B[:3]:
                    for m in (2, 8, 16, 32, 64):
                        add(self.tiled(tp, n, k, m, self.mm.tile_m_for(m)))
                        for sp in (None, 1, 2, 4, 8):
                            add(self.frag(tp, n, k, m, sp))
                    add(self.tiled(tp, n, k, 512, 128))
                self.free_weights()
            for m in (1, 2, 4, 8, 16, 32, 48, 64):
                if m <= self.mm.vec_max_rows:
                    add(self.step_7b(fused=True, n_rows=m))
                add(self.step_7b(fused=True, n_rows=m, tiled=True, frag=False))
                add(self.step_7b(fused=True, n_rows=m, tiled=True))
                self.free_weights()
        finally:
            self.mm.frag_max_rows = cuda_matmul.FRAG_MAX_ROWS

    def vec_pair(self, ggml_type: T, n: int, k: int, variant: str | None, hot: bool = False) -> dict:
        """One row through the paired int8x2 vector kernel (the default decode path at batch 1), weights rotating
        past the L2 (hot: one copy, read from the L2 after the first launch); the activation quantization done
        once outside the timed launches."""
        mm2 = self.mm2
        ws = self.weights(ggml_type, n, k, 1 if hot else 3 * self.rt.l2_bytes)
        passes = max(1, 48 // len(ws))
        mm2.quantize_act_x2(self.x.ptr, 1, k, self.ws.ptr, 1, decode=True)
        launches = [(lambda w=w: mm2.matmul(self.x.ptr, 1, w, self.out.ptr, self.ws.ptr, prequantized=True,
                                            variant=variant)) for _ in range(passes) for w in ws]
        s = self.timed(launches, reps=10 if self.quick else 30)
        wb = ws[0].nbytes
        dec = mm2.use_dec and ws[0].suffix in cuda_matmul.DEC_TYPES and (variant is None or variant.startswith("dec"))
        found = mm2.dec_kernel(ws[0], variant) if dec else None
        dec = found is not None
        name = found[0] if found else mm2.vec_kernel(ws[0], 1, variant, paired=True)[0]
        cfg = name.rsplit("_", 1)[1]
        return dict(path=("dec" if dec else "vec2") + ("/L2" if hot else ""), type=ggml_type.name, n=n, k=k, n_rows=1,
                    variant=variant or f"={cfg}", us=s * 1e6, gbps=wb / s / 1e9, pct_copy=100 * wb / s / self.copy_bw)

    def run_l2(self) -> None:
        """Batch-1 (int8x2) vector kernel with weights from HBM vs from the L2, per 7B shape, and a small matrix
        (the per-launch floor inside a graph): how much of a matmul's time is the DRAM stream."""
        self.mm2 = CudaMatmul(self.rt, int8x2=True)
        for tp in (T.Q4_K, T.Q6_K):
            for n, k in [(512, 4096)] + SHAPES_7B[:3]:
                for hot in (False, True):
                    self.add(self.vec_pair(tp, n, k, None, hot))
            self.free_weights()

    def run_dec(self) -> None:
        """Batch-1 int8x2 Q4_K / Q6_K: the decode kernel (every compiled configuration) vs the paired vector kernel,
        per 7B shape (weights from HBM; the defaults also from the L2)."""
        self.mm2 = CudaMatmul(self.rt, int8x2=True)
        for tp in (T.Q4_K, T.Q6_K):
            suffix = tp.name.lower()
            shapes = [(512, 4096)] + SHAPES_7B[:3] + ([(12288, 4096), (22016, 4096)] if tp == T.Q4_K else SHAPES_7B[3:])
            for n, k in shapes:
                for hot in (False, True):
                    self.mm2.use_dec = False
                    self.add(self.vec_pair(tp, n, k, None, hot))
                    self.mm2.use_dec = True
                    cfgs = cuda_matmul.DEC_VARIANTS[suffix] if not hot else cuda_matmul.DEC_CONFIG[suffix][:1]
                    for v in cfgs:
                        self.add(self.vec_pair(tp, n, k, f"dec:{v}", hot))
                self.free_weights()

    def run_pipe(self) -> None:
        """The pipelined kernel (every built stage count) vs the fragment (<= 32 rows) or tiled kernel per shape and
        row count, and a 7B step's matmuls through each."""
        add = self.add
        self.mm2 = CudaMatmul(self.rt, int8x2=True)
        for tp in (T.Q4_K, T.Q6_K):  # batch 1, int8x2: the paired vector kernel's configurations
            for n, k in SHAPES_7B[:3]:
                for v in (None, "r4t2u1", "r4t2u2", "r4t1u2", "r2t2u2", "r1t2u2"):
                    add(self.vec_pair(tp, n, k, v))
            self.free_weights()
        for m in (16, 32, 64):  # 3 stages (more resident blocks) vs the default
            tile = CudaMatmul.pipe_tile(m)
            for stages in cuda_matmul.PIPE_STAGES_BUILT[tile]:
                add(self.pipe(T.Q4_K, 11008, 4096, m, stages))
                add(self.step_7b(fused=True, n_rows=m, tiled=True, stages=stages))
        self.free_weights()
        rows = (8, 16, 32, 64, 128, 512) if self.quick else (4, 8, 16, 32, 48, 64, 128, 256, 512)
        for tp in (T.Q4_K, T.Q6_K):
            for n, k in SHAPES_7B[:3]:
                for m in rows:
                    add(self.frag(tp, n, k, m) if m <= cuda_matmul.FRAG_MAX_ROWS else
                        self.tiled(tp, n, k, m, self.mm.tile_m_for(m)))
                    tile = CudaMatmul.pipe_tile(m)
                    for stages in cuda_matmul.PIPE_STAGES_BUILT[tile]:
                        add(self.pipe(tp, n, k, m, stages))
            self.free_weights()
        for n, k in SHAPES_7B[:2]:  # K splits at decode sizes (None: the planner's choice)
            for m in (16, 32, 64):
                tile = CudaMatmul.pipe_tile(m)
                for sp in (1, 2, 4, 8):
                    add(self.pipe(T.Q4_K, n, k, m, cuda_matmul.PIPE_STAGES[tile], sp))
        self.free_weights()
        saved, self.mm.pipe_min_rows = self.mm.pipe_min_rows, 1
        try:
            for m in (8, 16, 32, 64, 128, 512):
                add(self.step_7b(fused=True, n_rows=m, tiled=True, pipe=False))
                add(self.step_7b(fused=True, n_rows=m, tiled=True))
                self.free_weights()
        finally:
            self.mm.pipe_min_rows = saved

    def run(self) -> None:
        self.copy_bw = self.copy_bandwidth()
        print(f"device {self.rt.name}  copy {self.copy_bw / 1e12:.2f} TB/s  kernel build {self.compile_s:.1f} s", flush=True)
        add = self.add
        if self.only == "tiled":
            return self.run_tiled()
        if self.only == "pipe":
            return self.run_pipe()
        if self.only == "l2":
            return self.run_l2()
        if self.only == "dec":
            return self.run_dec()
        shapes = SHAPES_7B
        for tp in VARIANT_TYPES:
            for n, k in shapes:
                add(self.vec(tp, n, k, 1, None, True))
                if not self.quick:
                    for v in VARIANTS_C1:
                        if tp == T.Q4_K or ":" not in v:
                            add(self.vec(tp, n, k, 1, v, False))
            self.free_weights()
        for tp in (T.Q4_0, T.Q5_0, T.Q5_K, T.F16):
            for n, k in shapes[:2]:
                add(self.vec(tp, n, k, 1, None, True))
            self.free_weights()
        for tp in (T.Q4_K, T.Q6_K, T.Q8_0, T.Q4_1):
            for n, k in shapes[:3]:
                for r in (2, 4, 8):
                    add(self.vec(tp, n, k, r, None, True))
                    if not self.quick and tp == T.Q4_K:
                        for v in VARIANTS_CN[r]:
                            add(self.vec(tp, n, k, r, v, False))
            self.free_weights()
        add(self.step_7b(fused=False))
        add(self.step_7b(fused=True))
        self.free_weights()
        for tp in (T.Q4_K, T.Q6_K, T.Q8_0, T.Q4_1):
            for n, k in shapes[:3]:
                for tm in (64, 128):
                    add(self.tiled(tp, n, k, 512, tm))
            self.free_weights()
        for tm in (64, 128):
            add(self.tiled(T.Q4_K, 4096, 4096, 64, tm))
        self.free_weights()
        self.run_tiled()

    def table(self) -> str:
        lines = [f"device: {self.rt.name}   copy bandwidth: {self.copy_bw / 1e12:.2f} TB/s (read+write)",
                 f"{'path':7} {'type':6} {'shape':>12} {'rows':>4} {'variant':>8} {'q':>2} {'us':>9} {'GB/s':>7} "
                 f"{'%copy':>6} {'TFLOP/s':>7}"]
        for r in self.rows:
            shape = f"{r.get('n', '')}x{r.get('k', '')}" if "n" in r else f"{r['n_matmuls']} mm"
            lines.append(f"{r['path']:7} {r['type']:6} {shape:>12} {r.get('n_rows', 1):>4} {r.get('variant', ''):>8} "
                         f"{'y' if r.get('with_quant') else '':>2} {r['us']:9.1f} {r.get('gbps', 0):7.0f} "
                         f"{r.get('pct_copy', 0):6.1f} {r.get('tflops', 0):7.1f}"
                         + (f"   {r['tok_s']:.0f} tok/s (matmuls only)" if "tok_s" in r else ""))
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, no tuning variants")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out"), help="folder for the JSON (e.g. $OUT)")
    ap.add_argument("--only", default="all", choices=("all", "tiled", "pipe", "l2", "dec"),
                    help="tiled: only the few-row tensor-core sweep; pipe: only the many-row (prefill) sweep; "
                         "l2: batch-1 vector kernel, weights from HBM vs from the L2; dec: the batch-1 Q4_K decode "
                         "kernel's configurations vs the paired vector kernel")
    args = ap.parse_args(argv)
    b = Bench(args.quick, args.only)
    try:
        b.run()
    finally:  # what was measured survives a failing case
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "matmul_bench.json"), "w") as f:
            json.dump(dict(device=b.rt.name, copy_bw=getattr(b, "copy_bw", None), rows=b.rows), f, indent=1)
        if b.rows:
            print(b.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
