"""Timeline of one decode-attention launch inside a decode-graph replay of the 7B-shaped Q4_K_M dummy model.

    python bench/attention_timeline.py [--seqs 1] [--depth 2048] [--setting auto] [--reps 5] [--define X=V] [--out DIR]

Builds kernels/attention.cu with -DATT_TIMELINE (thread 0 of every attention_split block writes %globaltimer at
the points of ATT_STAMP there: entry, after pdl_wait, keys done, its state merged and written; and in the block that
merges a row's splits: counted last, the splits' weights, splits merged), loads that build in place of the normal
one, replays the step's CUDA graph (programmatic edges as in serving) and reads the stamps of the step's last
attention launch. Prints, relative to the first block's entry, the percentiles of each point over the blocks, the
launch's span, and per (row, kv head) the merge tail: from the last of its blocks writing its state to its splits
merged. Writes DIR/attention_timeline.json. The probe adds a few instructions per block; use it for where the time
goes, bench/decode_ab.py for what a change saves. It also prints the whole step's GPU time with this build, the
spread of the blocks' key times by split, kv head and SM, and takes timing-only builds: --define ATT_PROBE_NO_MERGE
leaves the splits unmerged (no output), which prices the merge inside the step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

POINTS = ("entry", "waited", "keys done", "state written", "counted last", "weights", "splits merged")
MAX_BLOCKS = 16384


def build(arch: str, defines: list[str]) -> str:
    """kernels/attention.cu with the probe (and -D<each of defines>), cached beside the normal build."""
    from service.backends.cuda_runtime import KERNEL_DIR, NVCC_OPTIONS, cubin_path

    tag = "".join(f"-{d.replace('=', '_')}" for d in defines)
    out = cubin_path("attention", arch).replace(".cubin", f"-timeline{MAX_BLOCKS}{tag}.cubin")
    if not os.path.exists(out):
        subprocess.run(["nvcc", "-cubin", f"-arch={arch}", *NVCC_OPTIONS, f"-DATT_TIMELINE={MAX_BLOCKS}",
                        *(f"-D{d}" for d in defines), f"-I{KERNEL_DIR}", "-o", out,
                        os.path.join(KERNEL_DIR, "attention.cu")], check=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqs", type=int, default=1)
    ap.add_argument("--depth", type=int, default=2048)
    ap.add_argument("--setting", default="", help="a bench/decode_ab.py setting, e.g. auto+splitk:128")
    ap.add_argument("--reps", type=int, default=5, help="replays measured (the median span's is printed)")
    ap.add_argument("--define", action="append", default=[], help="a -D flag for the probe's build (repeatable)")
    ap.add_argument("--out", default=os.path.join("bench", "out"))
    args = ap.parse_args(argv)

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from step_profile import decode_graph

    probe: dict = {}

    def load_probe(be) -> None:  # the probe's build in place of the normal one, before any attention launch
        probe["mod"] = be.rt._modules["attention"] = be.rt._cuda.module_from_file(build(be.rt.arch, args.define))

    be, hp, graph = decode_graph(args.seqs, args.depth, args.setting, load_probe)
    stamps_ptr, stamps_bytes = probe["mod"].get_global("att_timeline")
    smid_ptr, _ = probe["mod"].get_global("att_smid")
    S, D = args.seqs, args.depth
    runs = []
    host = np.zeros((MAX_BLOCKS, len(POINTS)), dtype=np.uint64)
    smid = np.zeros(MAX_BLOCKS, dtype=np.uint32)
    for _ in range(args.reps):
        be.rt.memset_u8(stamps_ptr, 0, stamps_bytes)
        be.rt.synchronize()
        graph.replay()
        be.rt.synchronize()
        be.rt._cuda.memcpy_dtoh(host, stamps_ptr)
        be.rt._cuda.memcpy_dtoh(smid, smid_ptr)
        used = host[:, 0] > 0
        stamps = host[used].astype(np.int64)
        t0 = stamps[:, 0].min()
        rel = np.where(stamps > 0, stamps - t0, -1) / 1e3  # us after the first entry; -1: not reached
        runs.append((rel, smid[used].copy()))
    spans = [r.max() for r, _ in runs]
    rel, sms = runs[int(np.argsort(spans)[len(spans) // 2])]
    step_ms = float(np.median([graph.replay_ms(20) for _ in range(5)]))
    summary = {"seqs": S, "depth": D, "setting": args.setting or "auto", "defines": args.define,
               "blocks": int(rel.shape[0]), "span_us": float(rel.max()), "spans_us": [float(x) for x in spans],
               "step_ms": step_ms, "points": {}}
    print(f"\nlast attention launch of a decode replay: {S} sequence(s) at depth {D}, {rel.shape[0]} blocks, "
          f"span {rel.max():.2f} us (replays: {', '.join(f'{x:.2f}' for x in spans)}); whole step (this build, "
          f"5 x 20 replays) {step_ms:.4f} ms")
    print(f"{'point':16s} {'blocks':>6s} {'min':>7s} {'p10':>7s} {'p50':>7s} {'p90':>7s} {'max':>7s}  (us)")
    for i, name in enumerate(POINTS):
        col = rel[:, i][rel[:, i] >= 0]
        if col.size == 0:
            continue
        q = np.percentile(col, [0, 10, 50, 90, 100])
        summary["points"][name] = {"blocks": int(col.size), "percentiles_0_10_50_90_100": [float(x) for x in q]}
        print(f"{name:16s} {col.size:6d} " + " ".join(f"{x:7.2f}" for x in q))
    n_groups = S * hp.n_kv_heads  # blocks are numbered split-fastest: (split, kv head, row)
    if rel.shape[0] % n_groups == 0 and rel.shape[0] > n_groups:
        per = rel.reshape(n_groups, -1, len(POINTS))  # (row x kv head, split, point)
        merged = per[:, :, -1].max(axis=1)
        tail = merged - per[:, :, 3].max(axis=1)
        ok = merged >= 0
        if ok.any():
            q = np.percentile(tail[ok], [0, 10, 50, 90, 100])
            summary["merge_tail_us"] = [float(x) for x in q]
            print(f"{'merge tail':16s} {int(ok.sum()):6d} " + " ".join(f"{x:7.2f}" for x in q))
        # is a block's key time its split's, its kv head's or its SM's? (spread of the group means; 0: no effect)
        keys = per[:, :, 2] - per[:, :, 1]
        by_sm = np.array([keys.reshape(-1)[sms == m].mean() for m in np.unique(sms)])
        spread = {"block": keys.std(), "split": keys.mean(axis=0).std(), "kv head": keys.mean(axis=1).std(),
                  "SM": by_sm.std()}
        summary["keys_after_wait_std_us"] = {k: float(v) for k, v in spread.items()}
        print("keys after the wait, std of means by " + ", ".join(f"{k} {v:.2f}" for k, v in spread.items())
              + " us")
    summary["blocks_us"] = [[round(float(x), 3) for x in r] for r in rel]  # (block, point), -1: not reached
    summary["blocks_sm"] = [int(x) for x in sms]
    os.makedirs(args.out, exist_ok=True)
    tag = "".join(f"_{d}" for d in args.define)
    with open(os.path.join(args.out, f"attention_timeline_s{S}_d{D}{tag}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
