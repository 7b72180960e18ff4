"""CPU throughput of the engine on the NumPy backend: prefill tok/s, time to first token, decode tok/s at
batch 1 and at a few concurrent streams, for the default model (or --model).

Runs the real engine (LLMEngine: scheduler, per-row gemv matmuls, sampling, detokenizer) step by step and
times the steps; prints a table and writes JSON (bench/out/cpu_decode.json).

    python bench/cpu_decode.py [--prompt-tokens 128] [--decode-tokens 64] [--batches 1,4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from service.config import Config, replace  # noqa: E402
from service.engine.core import LLMEngine  # noqa: E402
from service.engine.request import SamplingParams  # noqa: E402
from service.model.loader import load_model  # noqa: E402


def prompt_ids(tokenizer, n: int, salt: int) -> list[int]:
    import pydoc_data.topics as topics
    ids = tokenizer.encode(topics.topics["specialnames"], add_special=False)
    return ids[salt * 7: salt * 7 + n]


def run_batch(engine: LLMEngine, tokenizer, batch: int, prompt_tokens: int, decode_tokens: int) -> dict:
    params = SamplingParams(temperature=0.0, max_tokens=decode_tokens, ignore_eos=True)
    reqs = [engine.add_request(prompt_ids(tokenizer, prompt_tokens, i), params) for i in range(batch)]
    t0 = time.perf_counter()
    first_token_at = None
    prefill_done = None
    decode_steps = 0
    decode_time = 0.0
    while engine.has_work():
        t = time.perf_counter()
        engine.step()
        dt = time.perf_counter() - t
        outputs = sum(len(s.output_ids) for r in reqs for s in r.seqs)
        if first_token_at is None and outputs > 0:
            first_token_at = time.perf_counter() - t0
        if prefill_done is None and all(len(s.output_ids) > 0 for r in reqs for s in r.seqs):
            prefill_done = time.perf_counter() - t0
        elif prefill_done is not None:
            decode_steps += 1
            decode_time += dt
    generated = sum(len(s.output_ids) for r in reqs for s in r.seqs)
    decoded_after_prefill = generated - batch  # the first token of each stream comes from prefill
    return {
        "batch": batch,
        "prompt_tokens": prompt_tokens,
        "ttft_s": round(first_token_at or 0.0, 3),
        "prefill_tok_s": round(batch * prompt_tokens / prefill_done, 1) if prefill_done else None,
        "decode_steps": decode_steps,
        "decode_tok_s": round(decoded_after_prefill / decode_time, 2) if decode_time else None,
        "decode_ms_per_step": round(1000 * decode_time / decode_steps, 1) if decode_steps else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--out", default=os.path.join("bench", "out", "cpu_decode.json"))
    ap.add_argument("--blas-threads", type=int, default=1, help="as the server's --blas-threads")
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    config = replace(Config(), model__path=args.model, model__backend="numpy", model__blas_threads=args.blas_threads, cache__slots=max(batches),
                     cache__max_positions=args.prompt_tokens + args.decode_tokens + 16,
                     engine__max_running=max(batches), engine__step_token_budget=max(512, args.prompt_tokens + 8))
    t = time.perf_counter()
    loaded = load_model(config)
    load_s = time.perf_counter() - t
    engine = LLMEngine(loaded.model, loaded.tokenizer, config)
    run_batch(engine, loaded.tokenizer, 1, 8, 4)  # warm-up
    load_before = os.getloadavg()[0]
    rows = [run_batch(engine, loaded.tokenizer, b, args.prompt_tokens, args.decode_tokens) for b in batches]
    load_after = os.getloadavg()[0]
    print(f"\nCPU engine throughput, {loaded.name} on the numpy backend, {os.cpu_count()} CPUs "
          f"({platform.processor() or platform.machine()}), {args.blas_threads} BLAS thread(s), model load {load_s:.1f} s, "
          f"1-min load average {load_before:.1f} -> {load_after:.1f} (other processes share these cores)")
    print(f"{'batch':>5} {'prompt':>6} {'TTFT s':>7} {'prefill tok/s':>13} {'decode tok/s':>12} {'ms/step':>8}")
    for r in rows:
        print(f"{r['batch']:>5} {r['prompt_tokens']:>6} {r['ttft_s']:>7} {r['prefill_tok_s']:>13} "
              f"{r['decode_tok_s']:>12} {r['decode_ms_per_step']:>8}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"model": loaded.name, "backend": "numpy", "cpus": os.cpu_count(), "blas_threads": args.blas_threads, "load_s": round(load_s, 1),
                   "loadavg_1m": [round(load_before, 2), round(load_after, 2)],
                   "decode_tokens": args.decode_tokens, "results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
