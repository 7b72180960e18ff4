"""Where a greedy decode step's time goes beyond its CUDA graph: the 7B-shaped Q4_K_M dummy model at batch 1.

    python bench/step_gap.py [--depths 16,2048] [--steps 200] [--out DIR]

From each depth, `steps` steps at the next positions (every variant rewrites the same ones, and every step replays
the same graph), ms per step of:
  replay    back-to-back replays of the greedy graph, nothing in between (CUDA events; then wall clock);
  +stage    each replay after begin_step's staging of the step (the host writes it, one host-to-device copy);
  +tokens   launch_greedy as the engine queues it, every step following the one before, no host wait;
  engine    the same with the engine's wait for the step before (LLMEngine's overlapped greedy loop).
Prints a table last and writes DIR/step_gap.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.decode_ab import dummy_7b_model, prefill  # noqa: E402
from bench.gpu_bench import graph_step_ms  # noqa: E402
from service.backends.base import SeqChunk, StepBatch  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", default="16,2048")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--out", default=os.path.join("bench", "out"))
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    be, model = dummy_7b_model()
    depths = [int(d) for d in args.depths.split(",")]
    maxpos = max(depths) + args.steps + 8
    kv = model.alloc_kv(model.kv_layout(slots=len(depths), max_positions=maxpos, sink_tokens=4, dtype="f16"))
    n = args.steps

    def batch(slot: int, pos: int, tok: int) -> StepBatch:
        return StepBatch(np.array([tok], np.int32), (SeqChunk(slot, pos, 1),), maxpos)

    def timed(fn) -> float:
        be.rt.synchronize()
        t0 = time.perf_counter()
        fn()
        be.rt.synchronize()
        return 1e3 * (time.perf_counter() - t0) / n

    rows = []
    for slot, depth in enumerate(depths):
        b = batch(slot, depth, prefill(model, rng, slot, depth, maxpos))
        prev = None
        for _ in range(3):  # eager, capture, replay
            prev = model.launch_greedy(b, follow=prev)
        prev.result()
        graph = be._graphs[be.graph_key(model, b, True)][0]

        def replay() -> None:  # (the greedy graph advances the staged positions itself)
            be.begin_step(b)
            for _ in range(n):
                graph.replay()
            be._dev_meta = None  # (behind the backend's back: the next step is staged in full)

        def staged() -> None:
            for i in range(n):
                be.begin_step(batch(slot, depth + i, 0))
                graph.replay()

        def queued() -> None:
            p = model.launch_greedy(b)
            for i in range(1, n):
                p = model.launch_greedy(batch(slot, depth + i, 0), follow=p)

        def engine() -> None:
            p = model.launch_greedy(b)
            for i in range(1, n):
                nxt = model.launch_greedy(batch(slot, depth + i, 0), follow=p)
                p.result()
                p = nxt
            p.result()

        be.begin_step(b)
        graph.replay()  # (warm)
        row = {"depth": depth, "replay_events": graph_step_ms(be, model, b, reps=n)}
        for name, fn in (("replay", replay), ("+stage", staged), ("+tokens", queued), ("engine", engine)):
            row[name] = min(timed(fn) for _ in range(3))
        rows.append(row)

    print(f"\n{be.rt.name}: ms per batch-1 greedy step, best of 3 runs of {n} steps")
    cols = ("replay_events", "replay", "+stage", "+tokens", "engine")
    print(f"{'depth':>6s} " + " ".join(f"{c:>13s}" for c in cols))
    for r in rows:
        print(f"{r['depth']:6d} " + " ".join(f"{r[c]:13.4f}" for c in cols))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "step_gap.json"), "w") as f:
        json.dump({"device": be.rt.name, "rows": rows}, f, indent=1)
    be.free_kv(kv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
