"""llama.cpp on this machine's GPU, on the model bench/gpu_bench.py uses: the issue's four rows, measured here.

The issue's llama.cpp figures were measured on an H100. To compare on whatever GPU the device lends, this runs
llama.cpp's own benchmark tools (built by scripts/build_llamacpp.sh) on the same 7B-shaped Q4_K_M dummy model,
written as a GGUF file by `python -m service dummy-model` (same tensors, types and bytes; no vocabulary):

| row | llama.cpp tool and test |
| --- | --- |
| decode, batch 1 | llama-bench tg128 (128 tokens, flash attention on, every layer on the GPU) |
| decode, batch 1, depth 2048 | llama-bench tg128 at -d 2048 |
| prefill, 512-token prompt | llama-bench pp512 |
| aggregate decode, 8 / 32 / 64 sequences | llama-batched-bench -npp 512 -ntg 128: S_TG (all sequences' tokens / time) |

Prints a table last and writes JSON. With `--ours bench/out/gpu_bench.json` (a gpu_bench run on the same GPU)
the table gains our figures and the ratio.

    python3 bench/llamacpp_baseline.py --bin-dir build/llamacpp --ours bench/out/gpu_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROWS = (  # (label, key in our gpu_bench.json)
    ("decode b1 (tg128)", "decode_b1"),
    ("decode b1 at depth 2048", "decode_d2048"),
    ("prefill 512 (pp512)", "prefill_512"),
    ("aggregate decode 8 seqs", "agg_8"),
    ("aggregate decode 32 seqs", "agg_32"),
    ("aggregate decode 64 seqs", "agg_64"),
)


def run_tool(cmd: list[str], log_path: str) -> str:
    """Run one llama.cpp tool; its stderr (the load log) goes to log_path, its stdout is returned."""
    print("+", " ".join(cmd), flush=True)
    with open(log_path, "w") as log:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{cmd[0]} exited with {done.returncode}; see {log_path}")
    return done.stdout


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin-dir", default=os.path.join("build", "llamacpp"),
                    help="folder with llama-bench and llama-batched-bench")
    ap.add_argument("--model", default="/tmp/dummy-7b.gguf", help="GGUF to run; written (7b dummy) if missing")
    ap.add_argument("--reps", type=int, default=5, help="llama-bench repetitions per test")
    ap.add_argument("--batches", default="8,32,64")
    ap.add_argument("--ours", help="our gpu_bench.json from the same GPU, for the ratio column")
    ap.add_argument("--out", default=os.path.join("bench", "out"))
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    if not os.path.exists(args.model):
        from service.model.dummy import dummy_gguf_model, write_gguf

        t0 = time.time()
        write_gguf(dummy_gguf_model("7b"), args.model)
        print(f"wrote {args.model} in {time.time() - t0:.0f} s", flush=True)
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                         stdout=subprocess.PIPE, text=True).stdout.strip()
    res: dict = {"device": gpu, "model": args.model, "model_bytes": os.path.getsize(args.model)}

    bench = os.path.join(args.bin_dir, "llama-bench")
    out = run_tool([bench, "-m", args.model, "-ngl", "99", "-fa", "1", "-p", "512", "-n", "128", "-d", "0,2048",
                    "-r", str(args.reps), "-o", "json"], os.path.join(args.out, "llama-bench.log"))
    tests = json.loads(out)
    res["llama_bench"] = tests
    res["build"] = {k: tests[0].get(k) for k in ("build_commit", "build_number", "backends", "gpu_info")}
    for t in tests:
        if t["n_prompt"] == 512 and t["n_gen"] == 0 and t["n_depth"] == 0:
            res["prefill_512"] = t["avg_ts"]
        elif t["n_prompt"] == 0 and t["n_gen"] == 128:
            res["decode_b1" if t["n_depth"] == 0 else f"decode_d{t['n_depth']}"] = t["avg_ts"]

    batches = [int(b) for b in args.batches.split(",") if b]
    ctx = max(batches) * (512 + 128)
    out = run_tool([os.path.join(args.bin_dir, "llama-batched-bench"), "-m", args.model, "-ngl", "99", "-fa", "on",
                    "-c", str(ctx), "-b", "2048", "-ub", "512", "-npp", "512", "-ntg", "128",
                    "-npl", ",".join(map(str, batches)), "--output-format", "jsonl"],
                   os.path.join(args.out, "llama-batched-bench.log"))
    rows = json_lines(out)
    if not rows:
        raise SystemExit(f"llama-batched-bench printed no results; see {args.out}/llama-batched-bench.log")
    res["batched_bench"] = rows
    for r in rows:
        res[f"agg_{r['pl']}"] = r["speed_tg"]

    ours = None
    if args.ours:
        with open(args.ours) as f:
            ours = json.load(f)
        res["ours"] = {key: ours.get(key) for _, key in ROWS}
        res["ours_device"] = ours.get("device")
    with open(os.path.join(args.out, "llamacpp_baseline.json"), "w") as f:
        json.dump(res, f, indent=1)

    print(f"\n{gpu}  llama.cpp {res['build']['build_commit']} ({res['build']['backends']})  "
          f"{res['model_bytes'] / 2**30:.2f} GiB model")
    print(f"{'row':28s} {'llama.cpp':>10s}" + (f" {'ours':>10s} {'ours / llama.cpp':>17s}" if ours else ""))
    for label, key in ROWS:
        theirs = res.get(key, float("nan"))
        line = f"{label:28s} {theirs:10.1f}"
        if ours and ours.get(key) is not None:
            line += f" {ours[key]:10.1f} {ours[key] / theirs:16.2f}x"
        print(line + "  tok/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
