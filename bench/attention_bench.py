"""Prefill attention on the CUDA backend: split-K vs the tiled prefill kernel vs the tensor-core (mma) kernel.

    python bench/attention_bench.py [--rows 512] [--cached 0] [--dtype f16] [--reps 20] [--out DIR]

One layer of a Llama-2-7B shape by default (32 query heads, 32 KV heads, head_dim 128, f16 KV, 4 sinks,
2048-position ring), a prompt chunk of --rows tokens after --cached tokens already in the cache. Each path is
timed as the whole `CudaBackend.attention` op it runs in a prefill (K/V staging + attention + ring append):
--reps calls captured in one CUDA graph (no host launch gaps), the inputs rotating over 4 sets (larger than L2),
CUDA events around each replay, median over --iters replays. Before timing, each path's output is compared
with the NumPy reference (max |err| / max |ref|). Prints a table last; writes DIR/attention_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from service.backends.base import SeqChunk, StepBatch  # noqa: E402
from service.backends.kv_layout import KVLayout  # noqa: E402
from service.backends.numpy_backend import NumpyBackend  # noqa: E402

PATHS = {"split": (False, "tiled"), "tiled": (True, "tiled"), "mma": (True, "mma")}  # use_prefill_kernel, kernel


def causal_flops(rows: int, cached: int, n_heads: int, hd: int, window: int, sinks: int) -> float:
    """2 * (QK^T + PV) multiply-adds over the keys each query row sees (sinks + window, causal)."""
    keys = sum(min(cached + i + 1, window + sinks) for i in range(rows))
    return 4.0 * n_heads * hd * keys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=512, help="prompt tokens in the step")
    ap.add_argument("--cached", type=int, default=0, help="tokens already in the cache (filled by one step first)")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=32)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--dtype", choices=["f16", "q8"], default="f16")
    ap.add_argument("--max-positions", type=int, default=2048)
    ap.add_argument("--sinks", type=int, default=4)
    ap.add_argument("--reps", type=int, default=20, help="attention calls per graph replay")
    ap.add_argument("--iters", type=int, default=15, help="timed replays (median)")
    ap.add_argument("--paths", default="split,tiled,mma")
    ap.add_argument("--out", default=None, help="directory for attention_bench.json")
    args = ap.parse_args(argv)

    from service.backends.cuda_backend import CudaBackend
    from service.backends.cuda_runtime import CudaGraph

    H, KVH, hd, T = args.heads, args.kv_heads, args.head_dim, args.rows
    be = CudaBackend(max_rows=max(T, args.cached, 32), max_seqs=8)
    rt = be.rt
    layout = KVLayout(n_layers=1, slots=1, max_positions=args.max_positions, sink_tokens=args.sinks, n_kv_heads=KVH,
                      head_dim=hd, dtype=args.dtype)
    kv = be.alloc_kv(layout)
    nb = NumpyBackend()
    np_kv = nb.alloc_kv(layout)
    rng = np.random.default_rng(0)

    def inputs(n: int) -> tuple[np.ndarray, ...]:
        return (rng.standard_normal((n, H * hd)).astype(np.float32),  # q (n, H * hd)
                rng.standard_normal((n, H * hd)).astype(np.float32),  # q_sink
                (2 * rng.standard_normal((n, KVH * hd))).astype(np.float32),  # k (n, KVH * hd)
                rng.standard_normal((n, KVH * hd)).astype(np.float32))  # v

    if args.cached:  # fill the cache prefix once, through split-K (both backends)
        be.use_prefill_kernel = False
        pre = StepBatch(np.zeros(args.cached, np.int32), (SeqChunk(0, 0, args.cached),), args.max_positions)
        x = inputs(args.cached)
        nb.attention(*x, np_kv, 0, nb.begin_step(pre), H, KVH)
        be.attention(*(be.from_host(a) for a in x), kv, 0, be.begin_step(pre), H, KVH)
        rt.synchronize()

    batch = StepBatch(np.zeros(T, np.int32), (SeqChunk(0, args.cached, T),), args.max_positions)
    step = be.begin_step(batch)
    host_sets = [inputs(T) for _ in range(4)]
    dev_sets = [tuple(be.from_host(a) for a in s) for s in host_sets]
    # without a wrap the step's appends land past the prefix it reads, so every call sees the same keys
    ref = nb.attention(*host_sets[0], np_kv, 0, nb.begin_step(batch), H, KVH)
    no_wrap = args.cached + T <= args.max_positions
    flops = causal_flops(T, args.cached, H, hd, args.max_positions - args.sinks, args.sinks)

    res: dict = {"device": rt.name, "rows": T, "cached": args.cached, "heads": H, "kv_heads": KVH, "head_dim": hd,
                 "dtype": args.dtype, "max_positions": args.max_positions, "sinks": args.sinks, "reps": args.reps,
                 "iters": args.iters, "flops_per_layer": flops, "paths": {}}
    for path in args.paths.split(","):
        be.use_prefill_kernel, be.prefill_kernel = PATHS[path]
        be.poison_activations()
        got = be.to_host(be.attention(*dev_sets[0], kv, 0, step, H, KVH))  # (T, H * hd)
        # once the ring wraps, the appends of the path before change the keys this step reads: no reference then
        err = float(np.max(np.abs(got.astype(np.float64) - ref)) / np.max(np.abs(ref))) if no_wrap else float("nan")
        finite = bool(np.isfinite(got).all())
        for s in dev_sets:  # warm-up: modules, pools, partial buffers
            be.attention(*s, kv, 0, step, H, KVH)
        rt.synchronize()
        def calls() -> None:
            for i in range(args.reps):  # each output dies at once: its pooled buffer serves the next call
                be.attention(*dev_sets[i % 4], kv, 0, step, H, KVH)

        graph = CudaGraph(rt)
        graph.capture(calls)
        graph.replay()
        rt.synchronize()
        times = [graph.replay_ms() / 1e3 / args.reps for _ in range(args.iters)]  # seconds per attention op
        graph.destroy()
        t = statistics.median(times)
        res["paths"][path] = {"us_per_layer": t * 1e6, "ms_32_layers": 32 * t * 1e3, "tflops": flops / t / 1e12,
                              "spread_us": (max(times) - min(times)) * 1e6, "rel_err_vs_numpy": err,
                              "finite": finite}

    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "attention_bench.json"), "w") as f:
            json.dump(res, f, indent=1)
    print(f"{rt.name}: {T} rows after {args.cached} cached, {H}/{KVH} heads, head_dim {hd}, {args.dtype} KV; "
          f"{flops / 1e9:.2f} GFLOP per layer; attention op = staging + kernel(s) + append")
    print(f"{'path':8s} {'us/layer':>10s} {'ms/32 layers':>13s} {'TFLOP/s':>8s} {'spread us':>10s} "
          f"{'err vs numpy':>13s}")
    for path, r in res["paths"].items():
        print(f"{path:8s} {r['us_per_layer']:10.1f} {r['ms_32_layers']:13.3f} {r['tflops']:8.1f} "
              f"{r['spread_us']:10.1f} {r['rel_err_vs_numpy']:13.2e}{'' if r['finite'] else '  NON-FINITE'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
