"""PROTOTYPE: the batch-1 decode step's matmuls as one persistent launch (kernels/decode_stream.cu) against the same
matmuls as the decode graph launches them.

    python bench/stream_proto.py [--rounds 3] [--reps 50] [--out DIR]

Records the matmul launches of one eager batch-1 step of the 7B-shaped Q4_K_M dummy model (every matrix, its input
x in the decode copy, its output), then:
  * checks: every matrix's output from the persistent kernel against the recorded launch replayed into a buffer of
    its own (same x): rows bit-identical, and the largest difference relative to the row's scale;
  * times, alternating in one process (CUDA events, median over rounds): the whole step's graph (auto), the graph with
    only the matmul launches (auto+skip of every other kernel), and the persistent kernel per configuration with
    grid barriers where the graph has launch boundaries (sync1 / sync2: decode_stream.cu's grid_sync modes; counters: its per-group counters) and
    without any (free: an upper bound, its outputs unordered), and the same barriers with no jobs (barriers).
Prints a table last and writes DIR/stream_proto.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.decode_ab import apply, dummy_7b_model, prefill  # noqa: E402
from bench.gpu_bench import copy_bandwidth  # noqa: E402
from service.backends.base import SeqChunk, StepBatch  # noqa: E402

SLOT = 9216  # kernels/decode_stream.cu
CONFIGS = ("w12s2", "w8s3")
POOLS = ("w11n24", "w7n24")  # stream_pool_w<compute warps>n<slots>
PHASE = np.dtype([("q", "u8"), ("s", "u8"), ("out", "u8"), ("xd", "u8"), ("dsd", "u8"), ("xs16", "u8"),
                  ("N", "i4"), ("K", "i4"), ("Kp", "i4"), ("type", "i4"), ("rt", "i4"), ("groups", "i4"),
                  ("sync", "i4"), ("pad", "i4"), ("gid", "i4"), ("prev_jobs", "i4")])


class _Rec:
    """A prepared kernel whose launches are recorded (and made)."""

    def __init__(self, fn, name, log):
        self._fn, self._name, self._log = fn, name, log

    def prepared_async_call(self, grid, block, stream, *args, **kwargs):
        self._log.append((self._name, self._fn, grid, block, list(args), kwargs))
        return self._fn.prepared_async_call(grid, block, stream, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._fn, name)


def record_step(be, model, batch):
    """(matmul launches, names of the other kernels) of one eager decode step."""
    mm, log, others = be.mm, [], set()
    cls = type(be)
    mm._fns = {}
    mm._fn = lambda module, name, sig: _Rec(type(mm)._fn(mm, module, name, sig), name, log)
    be._launch = lambda module, name, *a: (others.add(name), cls._launch(be, module, name, *a))
    key = be.graph_key(model, batch, False)
    be._graphs.pop(key, None)
    be._seen.discard(key)
    be.forward(model, batch)  # unseen key: eager
    be.rt.synchronize()
    del mm._fn, be._launch
    mm._fns = {}
    others |= {e[0] for e in log if not e[0].startswith("matmul_dec_")}  # (the matmul launcher's other kernels)
    return [e for e in log if e[0].startswith("matmul_dec_")], others


def phases_of(log, alloc):
    """Phase records (one per matrix) of the recorded matmul launches, each with an output buffer of its own, and
    the reference launches: (fn, grid, block, args with outputs redirected, kwargs, [(phase index, out arg index)])."""
    phases, refs = [], []
    for name, fn, grid, block, args, kw in log:
        assert name.startswith("matmul_dec_"), name
        members = []  # (q, s, out arg index, N, K, type, xd, dsd, xs16, Kp)
        if name.startswith("matmul_dec_glu_"):
            qg, og, qu, ou, n, k, xd, dsd, kp = args[:9]
            members = [(qg, 0, 1, n, k, 0, xd, dsd, 0, kp), (qu, 0, 3, n, k, 0, xd, dsd, 0, kp)]
            scratch = list(args)
            for i in range(9, 15):  # h and its quantization: to scratch, so that the down projection's x stays
                scratch[i] = alloc(1 << 20)
            args = scratch
        else:
            k, xd, dsd, xs16, kp = args[12:17]
            for i in range(3):
                q, s, _, n = args[4 * i:4 * i + 4]
                if int(n) == 0:
                    continue
                typ = 1 if "_q6_k_" in name and ("_q4_k_q6_k_" not in name or i == 2) else 0
                members.append((q, s, 4 * i + 2, n, k, typ, xd, dsd, xs16, kp))
        ref_args, outs = list(args), []
        for m, (q, s, oi, n, k, typ, xd, dsd, xs16, kp) in enumerate(members):
            n, k = int(n), int(k)
            row = (k // 256) * (208 if typ else 144)
            rt = min(4, SLOT // row)
            out, ref = alloc(4 * n), alloc(4 * n)
            ref_args[oi] = ref
            outs.append((len(phases), ref, n))
            phases.append((int(q), int(s), int(out), int(xd), int(dsd), int(xs16), n, k, int(kp), typ, rt,
                           -(-n // rt), int(m == 0), 0, len(refs), 0))
        refs.append((fn, grid, block, ref_args, kw, outs))
    ph = np.array(phases, PHASE)
    jobs = np.bincount(ph["gid"], weights=ph["groups"]).astype(np.int64)  # per launch group
    ph["prev_jobs"] = np.where(ph["gid"] > 0, jobs[np.maximum(ph["gid"] - 1, 0)], 0)
    first_k = {int(p["gid"]): int(p["K"]) for p in ph[::-1]}  # each group's x width
    ph["pad"] = [first_k.get(int(p["gid"]) + 1, 0) // 256 for p in ph]  # the next group's K blocks (chunked mode)
    return ph, refs


def chunk_expect(ph, ch=4):
    """Jobs of launch group g whose rows fall in chunk c of the next group's x, at g * ch + c (decode_stream.cu)."""
    expect = np.zeros((int(ph["gid"].max()) + 1) * ch, np.int32)
    for p in ph:
        if p["pad"]:
            rows = np.arange(int(p["groups"])) * int(p["rt"])
            np.add.at(expect, int(p["gid"]) * ch + (((rows >> 8) + 1) * ch - 1) // int(p["pad"]), 1)
    return expect


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--out", default=os.path.join("bench", "out"))
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    be, model = dummy_7b_model()
    rt, cuda = be.rt, be.rt._cuda
    maxpos = 2048 + 64
    kv = model.alloc_kv(model.kv_layout(slots=1, max_positions=maxpos, sink_tokens=4, dtype="f16"))
    tok = prefill(model, rng, 0, 16, maxpos)
    batch = StepBatch(np.array([tok], np.int32), (SeqChunk(0, 16, 1),), maxpos)
    apply(be, "auto")
    be.forward(model, batch)  # sizes the pools
    log, others = record_step(be, model, batch)

    bufs = []

    def alloc(n):
        b = cuda.mem_alloc(max(n, 256))
        cuda.memset_d8(b, 0, max(n, 256))
        bufs.append(b)
        return int(b)

    phases, refs = phases_of(log, alloc)
    weight_bytes = sum(int(p["N"]) * (int(p["K"]) // 256) * (208 if p["type"] else 144) for p in phases)
    ph_dev = cuda.to_device(phases)
    empty = np.zeros(int(phases["sync"].sum()), PHASE)  # the same grid barriers, no jobs
    empty["sync"] = 1
    empty_dev = cuda.to_device(empty)
    sync_words = cuda.mem_alloc(4 * (2 + len(refs)))
    cuda.memset_d8(sync_words, 0, 4 * (2 + len(refs)))
    print(f"{len(log)} matmul launches, {len(phases)} matrices, {weight_bytes / 1e9:.3f} GB of weights; "
          f"other kernels: {sorted(others)}")

    drv = cuda  # pycuda.driver
    kernels = {}
    for cfg in CONFIGS:
        sw, st = (int(v) for v in cfg[1:].split("s"))
        fn = rt.function("decode_stream", f"stream_proto_{cfg}")
        fn.prepare("PiPiP")
        fn.set_attribute(drv.function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES, sw * st * SLOT)
        kernels[cfg] = (fn, sw, st)

    expect = chunk_expect(phases)
    expect_dev = cuda.to_device(expect)
    ready_dev = cuda.mem_alloc(4 * expect.size)
    cuda.memset_d8(ready_dev, 0, 4 * expect.size)
    starts_dev = cuda.to_device(np.concatenate([[0], np.cumsum(phases["groups"])]).astype(np.int32))
    for cfg in POOLS:
        nwc, ns = (int(v) for v in cfg[1:].split("n"))
        fn = rt.function("decode_stream", f"stream_pool_{cfg}")
        fn.prepare("PiPPiPPP")
        fn.set_attribute(drv.function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES, ns * SLOT)
        kernels[cfg] = (fn, nwc + 1, ns)

    def launch(cfg, syncs, barriers_only=False, trace=0):
        if cfg in POOLS:
            fn, warps, ns = kernels[cfg]
            fn.prepared_async_call((rt.sm_count, 1), (32 * warps, 1, 1), rt.stream, ph_dev, np.int32(len(phases)),
                                   starts_dev, sync_words, np.int32(syncs), trace, ready_dev, expect_dev,
                                   shared_size=ns * SLOT)
            return
        fn, sw, st = kernels[cfg]
        ph, n = (empty_dev, len(empty)) if barriers_only else (ph_dev, len(phases))
        fn.prepared_async_call((rt.sm_count, 1), (32 * sw, 1, 1), rt.stream, ph, np.int32(n),
                               sync_words, np.int32(syncs), trace, shared_size=sw * st * SLOT)

    # -- check ---------------------------------------------------------------------------------------
    for fn, grid, block, a, kw, _ in refs:
        fn.prepared_async_call(grid, block, rt.stream, *a, **kw)
    rt.synchronize()
    ref_out = {i: cuda.from_device(r, (n,), np.float32) for _, _, _, _, _, outs in refs for i, r, n in outs}
    checks = {}
    for cfg, mode in [(c, m) for c in CONFIGS for m in (3, 4)] + [(c, m) for c in POOLS for m in (1, 2)]:
        for p in phases:
            cuda.memset_d8(int(p["out"]), 0xFF, 4 * int(p["N"]))  # NaN: a row not written shows
        launch(cfg, mode)
        rt.synchronize()
        exact = rows = 0
        worst = 0.0
        for i, p in enumerate(phases):
            got = cuda.from_device(int(p["out"]), (int(p["N"]),), np.float32)
            ref = ref_out[i]
            exact += int(np.sum(got == ref))
            rows += ref.size
            scale = float(np.max(np.abs(ref))) or 1.0
            worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - ref))) / scale if np.all(np.isfinite(got))
                        else float("inf"))
        checks[f"{cfg} mode {mode}"] = {"rows": rows, "bit_identical": exact, "max_rel_diff": worst}
        print(f"check {cfg} mode {mode}: {exact}/{rows} rows bit-identical, max |diff| / max |ref| {worst:.2e}")

    # -- where the barriers' time goes: per barrier, the spread of the blocks' arrivals --------------------
    n_bar = int(phases["sync"].sum()) - 1
    trace = cuda.mem_alloc(16 * n_bar * rt.sm_count)
    spread = {}
    for cfg, mode in [(c, m) for c in CONFIGS for m in (2, 4)] + [(c, 1) for c in POOLS]:
        launch(cfg, mode)  # warm
        launch(cfg, mode, trace=trace)
        rt.synchronize()
        t = cuda.from_device(trace, (n_bar, rt.sm_count, 2), np.uint64).astype(np.int64)
        arrive, leave = t[:, :, 0], t[:, :, 1]
        first, last = arrive.min(1), arrive.max(1)
        gaps = (first[1:] - leave.max(1)[:-1]) / 1e3  # the fastest block's phase: last out of one barrier to first in at the next
        med = np.median(arrive, 1)
        names = [log[i][0] for i in range(n_bar)]  # barrier i follows launch group i
        by_kind = {}
        for i, nm in enumerate(names):
            kind = nm.replace("matmul_dec_", "").rsplit("_r", 1)[0] if "glu" not in nm else "glu"
            by_kind.setdefault(kind, []).append(((last[i] - first[i]) / 1e3, (last[i] - med[i]) / 1e3,
                                                 (leave[i].max() - last[i]) / 1e3))
        spread[f"{cfg} mode {mode}"] = {k: [float(np.mean([v[j] for v in vs])) for j in range(3)] + [len(vs)]
                       for k, vs in by_kind.items()}
        span = (leave.max() - arrive.min()) / 1e3
        print(f"barriers of {cfg} mode {mode} (launch before the barrier: mean us of last - first arrival, last - median arrival, "
              f"release after the last arrival; n), {span:.0f} us from the first to the last barrier:")
        for k, v in spread[f"{cfg} mode {mode}"].items():
            print(f"  {k:14s} {v[0]:7.2f} {v[1]:7.2f} {v[2]:7.2f}  {v[3]}")
        print(f"  the fastest block's time between barriers, mean {np.mean(gaps):.2f} us")

    # -- time ----------------------------------------------------------------------------------------
    graphs = {}
    skip = ",".join(sorted(others))
    for st in ("auto", f"auto+skip:{skip}"):
        apply(be, st)
        key = be.graph_key(model, batch, False)
        be._graphs.pop(key, None)
        be._seen.add(key)
        be.forward(model, batch)  # captures
        graphs["step graph" if st == "auto" else "matmul-only graph"] = be._graphs.pop(key)[0]
    apply(be, "auto")
    rt.synchronize()

    runs = {name: (lambda g=g: g.replay()) for name, g in graphs.items()}
    for cfg in CONFIGS:
        runs[f"stream {cfg} sync1"] = lambda c=cfg: launch(c, 1)
        runs[f"stream {cfg} sync2"] = lambda c=cfg: launch(c, 2)
        runs[f"stream {cfg} counters"] = lambda c=cfg: launch(c, 3)
        runs[f"stream {cfg} tickets"] = lambda c=cfg: launch(c, 4)
        runs[f"stream {cfg} free"] = lambda c=cfg: launch(c, 0)
        runs[f"barriers {cfg} sync1"] = lambda c=cfg: launch(c, 1, True)
        runs[f"barriers {cfg} sync2"] = lambda c=cfg: launch(c, 2, True)
    for cfg in POOLS:
        runs[f"pool {cfg} sync"] = lambda c=cfg: launch(c, 1)
        runs[f"pool {cfg} chunks"] = lambda c=cfg: launch(c, 2)
        runs[f"pool {cfg} free"] = lambda c=cfg: launch(c, 0)
    times = {k: [] for k in runs}
    be.begin_step(batch)
    rt.synchronize()
    for _ in range(args.rounds):
        for name, run in runs.items():
            run()
            e0, e1 = cuda.Event(), cuda.Event()
            e0.record(rt.stream)
            for _ in range(args.reps):
                run()
            e1.record(rt.stream)
            e1.synchronize()
            times[name].append(e1.time_since(e0) / args.reps)
    copy = copy_bandwidth(be)

    res = {"device": rt.name, "copy_gbs": copy / 1e9, "weight_bytes": weight_bytes, "matrices": len(phases),
           "launches": len(log), "checks": checks, "barrier_spread_us": spread, "rows": []}
    base = statistics.median(times["matmul-only graph"])
    print(f"\n{rt.name}  copy {copy / 1e9:.0f} GB/s  {weight_bytes / 1e9:.3f} GB of weights a step  (median of "
          f"{args.rounds} rounds x {args.reps})")
    print(f"{'run':24s} {'ms':>8s} {'weights GB/s':>13s} {'% copy':>7s} {'vs matmul graph':>16s}")
    for name in runs:
        ms = statistics.median(times[name])
        gbs = weight_bytes / ms / 1e6
        res["rows"].append({"run": name, "ms": ms, "all_ms": times[name], "gbs": gbs})
        print(f"{name:24s} {ms:8.4f} {gbs:13.0f} {100 * gbs / (copy / 1e9):6.1f}% {base / ms:15.3f}x")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "stream_proto.json"), "w") as f:
        json.dump(res, f, indent=1)
    be.free_kv(kv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
