"""Per-kernel GPU time of one decode-graph replay of the 7B-shaped Q4_K_M dummy model, through Nsight Compute.

    python bench/step_profile.py [--seqs 1] [--depth 16] [--setting auto] [--out DIR]

Runs itself under `ncu` (profiling only the one replay between cuProfilerStart / cuProfilerStop, clocks and caches
left as they are), then sums ncu's per-kernel `gpu__time_duration` by kernel name and prints a table: count,
total us, share. Kernels are serialized under ncu, so the sum is larger than the graph's replay time (no overlap,
no launch gaps hidden); it says where the time goes, not what the step takes. --setting applies one of
bench/decode_ab.py's settings (e.g. auto+splitk:128) to the backend first. Writes DIR/step_profile.json.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import io
import json
import os
import subprocess
import sys
from typing import Any, Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MARK = "STEP_PROFILE_CHILD"


def decode_graph(seqs: int, depth: int, setting: str = "", on_backend: Callable[[Any], None] | None = None):
    """The 7B-shaped Q4_K_M dummy model on a CUDA backend (on_backend(backend) first, then the bench/decode_ab.py
    setting, if any), `seqs` sequences prefilled to `depth` tokens, and the CUDA graph of their next decode step,
    captured and replayed once: (backend, the model's hparams, graph)."""
    from service.backends.base import SeqChunk, StepBatch
    from service.backends.cuda_backend import CudaBackend
    from service.model.dummy import dummy_gguf_model
    from service.model.llama import LlamaModel

    rng = np.random.default_rng(0)
    be = CudaBackend(max_rows=512, max_seqs=64)
    if on_backend is not None:
        on_backend(be)
    g = dummy_gguf_model("7b")
    be.reserve_weights(g)
    model = LlamaModel(g, be)
    if setting:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from decode_ab import apply

        apply(be, setting)
    V, S, D = g.hparams.vocab_size, seqs, depth
    maxpos = D + 64
    model.alloc_kv(model.kv_layout(slots=S, max_positions=maxpos, sink_tokens=4, dtype="f16"))
    for s in range(S):
        for a in range(0, D, 512):
            m = min(512, D - a)
            model.forward(StepBatch(rng.integers(0, V, m).astype(np.int32), (SeqChunk(s, a, m),), maxpos))
    batch = StepBatch(rng.integers(0, V, S).astype(np.int32), tuple(SeqChunk(s, D, 1) for s in range(S)), maxpos)
    for _ in range(3):  # eager, capture, replay
        be.forward(model, batch)
    return be, g.hparams, next(iter(be._graphs.values()))[0]


def child(args: argparse.Namespace) -> None:
    be, _, graph = decode_graph(args.seqs, args.depth, args.setting)
    be.rt.synchronize()
    lib = ctypes.CDLL("libcuda.so.1")
    lib.cuProfilerStart()
    graph.replay()
    be.rt.synchronize()
    lib.cuProfilerStop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqs", type=int, default=1)
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--setting", default="", help="a bench/decode_ab.py setting, e.g. auto+splitk:128")
    ap.add_argument("--out", default=os.path.join("bench", "out"))
    args = ap.parse_args(argv)
    if os.environ.get(MARK):
        child(args)
        return 0
    cmd = ["ncu", "--profile-from-start", "off", "--clock-control", "none", "--cache-control", "none",
           "--metrics", "gpu__time_duration.sum", "--csv", "--print-units", "base",
           sys.executable, os.path.abspath(__file__), "--seqs", str(args.seqs), "--depth", str(args.depth),
           "--setting", args.setting]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **{MARK: "1"}))
    text = proc.stdout
    start = text.find('"ID"')
    if proc.returncode != 0 or start < 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        return 1
    per: dict[str, list[float]] = {}
    for row in csv.DictReader(io.StringIO(text[start:])):
        if row.get("Metric Name") == "gpu__time_duration.sum":
            name = row["Kernel Name"].split("(")[0]
            per.setdefault(name, []).append(float(row["Metric Value"].replace(",", "")) / 1e3)  # ns -> us
    total = sum(sum(v) for v in per.values())
    rows = sorted(((k, len(v), sum(v)) for k, v in per.items()), key=lambda r: -r[2])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"step_profile_s{args.seqs}_d{args.depth}.json"), "w") as f:
        json.dump({"seqs": args.seqs, "depth": args.depth, "total_us": total,
                   "kernels": [{"name": k, "count": n, "us": t} for k, n, t in rows]}, f, indent=1)
    print(f"\none decode-graph replay, {args.seqs} sequence(s) at depth {args.depth}: {sum(r[1] for r in rows)} "
          f"kernels, {total:.0f} us serialized")
    print(f"{'kernel':58s} {'count':>5s} {'us':>9s} {'share':>6s} {'us each':>8s}")
    for k, n, t in rows:
        print(f"{k[:58]:58s} {n:5d} {t:9.1f} {100 * t / total:5.1f}% {t / n:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
