"""StreamingLLM reproduction: perplexity of a long English text streamed through a small KV cache.

Text: the "datamodel" chapter of the Python reference manual, which ships with every CPython install
(`pydoc_data.topics`), tokenized with the model's own tokenizer; the first --tokens tokens are scored.

Variants (every token from the second on is scored, i.e. its log-probability given what the variant keeps):
  sinks       StreamingKVCache of --cache positions: --sinks attention sinks + a ring window (Xiao et al. 2023)
  window      the same cache size with no sinks (plain ring / sliding window without recomputation)
  recompute   sliding window with re-computation: every --stride tokens, a fresh cache is re-filled with the
              last --cache tokens and the next --stride tokens are scored (the paper's "oracle" baseline)
  full        everything in context (up to the model's context_length), for scale

The streaming variants feed the text in chunks of --chunk tokens through the engine's ring: each row of a
chunk attends exactly as it would in one-token decode (sinks + its own window), so the score equals
token-by-token streaming. For speed this script runs the NumPy backend with one gemm per matmul and returns
logits for every row (the server's backend uses per-row gemv for batch invariance; the difference is float32
rounding).

    python bench/streaming_ppl.py                 # table on stdout, JSON in bench/out/streaming_ppl.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from service.backends.base import SeqChunk, StepBatch  # noqa: E402
from service.backends.numpy_backend import NumpyBackend, NumpyStep  # noqa: E402
from service.config import Config  # noqa: E402
from service.model.gguf_file import open_gguf  # noqa: E402
from service.model.llama import LlamaModel  # noqa: E402
from service.model.loader import limit_blas_threads, load_tokenizer  # noqa: E402
from service.model.registry import resolve_model_path  # noqa: E402


class AllRowsGemmBackend(NumpyBackend):
    """NumPy backend that multiplies a whole chunk at once (gemm) and returns logits for every row."""

    def matmul(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return x @ w.T  # (T, N)

    def take_rows(self, x: np.ndarray, step: NumpyStep) -> np.ndarray:
        return x  # (T, D): every row


def english_text() -> str:
    import pydoc_data.topics as topics
    return topics.topics["specialnames"]


def nll_rows(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(n,) negative log-likelihood of targets under logits (n, V), in float64."""
    x = logits.astype(np.float64)  # (n, V)
    m = x.max(axis=1, keepdims=True)  # (n, 1)
    lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=1))  # (n,)
    return lse - x[np.arange(x.shape[0]), targets]


def run_stream(model: LlamaModel, tokens: np.ndarray, max_positions: int, sinks: int, chunk: int) -> np.ndarray:
    """Stream tokens through a ring of max_positions (sinks + window); (N-1,) nll of tokens[1:]."""
    model.alloc_kv(model.kv_layout(1, max_positions, sinks))
    n = tokens.shape[0]
    nll = np.empty(n - 1, np.float64)  # (N-1,)
    for start in range(0, n - 1, chunk):
        end = min(start + chunk, n - 1)
        batch = StepBatch(tokens[start:end].astype(np.int32), (SeqChunk(0, start, end - start, True),), max_positions)
        logits = model.forward(batch)  # (end - start, V)
        nll[start:end] = nll_rows(logits, tokens[start + 1:end + 1])
    return nll


def run_recompute(model: LlamaModel, tokens: np.ndarray, cache: int, stride: int) -> np.ndarray:
    """Sliding window with re-computation: targets in blocks of `stride`, each predicted from a fresh
    context of the last <= `cache` tokens. (N-1,) nll of tokens[1:]."""
    model.alloc_kv(model.kv_layout(1, cache, 0))
    n = tokens.shape[0]
    nll = np.empty(n - 1, np.float64)
    for t0 in range(1, n, stride):  # targets t0 .. t1-1, inputs rows j = t-1
        t1 = min(t0 + stride, n)
        s = max(0, t1 - 1 - cache)
        inputs = tokens[s:t1 - 1].astype(np.int32)  # (<= cache,)
        batch = StepBatch(inputs, (SeqChunk(0, 0, inputs.shape[0], True),), cache)
        logits = model.forward(batch)  # (len, V)
        rows = np.arange(t0 - 1, t1 - 1) - s
        nll[t0 - 1:t1 - 1] = nll_rows(logits[rows], tokens[t0:t1])
    return nll


def summarize(name: str, nll: np.ndarray, cache: int, seconds: float, **extra: Any) -> dict:
    return {"variant": name, "ppl": float(np.exp(nll.mean())), "scored": int(nll.shape[0]),
            "ppl_past_cache": float(np.exp(nll[cache:].mean())) if nll.shape[0] > cache else None,
            "seconds": round(seconds, 1), **extra}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="GGUF file (default: the default model)")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--cache", type=int, default=256)
    ap.add_argument("--sinks", type=int, default=4)
    ap.add_argument("--stride", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--variants", default="sinks,window,recompute,full")
    ap.add_argument("--out", default=os.path.join("bench", "out", "streaming_ppl.json"))
    args = ap.parse_args(argv)

    limit_blas_threads(Config().model.blas_threads)  # as the server does for the NumPy backend
    gguf_model = open_gguf(resolve_model_path(args.model))
    tokenizer, _ = load_tokenizer(gguf_model)
    model = LlamaModel(gguf_model, AllRowsGemmBackend())
    ids = tokenizer.encode(english_text(), add_special=False)
    if len(ids) < args.tokens:
        raise SystemExit(f"text has only {len(ids)} tokens")
    tokens = np.asarray(ids[:args.tokens], dtype=np.int64)  # (N,)
    ctx = int(model.hp.context_length)

    results = []
    for variant in args.variants.split(","):
        t = time.perf_counter()
        if variant == "sinks":
            nll = run_stream(model, tokens, args.cache, args.sinks, args.chunk)
            extra = {"max_positions": args.cache, "sink_tokens": args.sinks, "window": args.cache - args.sinks}
        elif variant == "window":
            nll = run_stream(model, tokens, args.cache, 0, args.chunk)
            extra = {"max_positions": args.cache, "sink_tokens": 0, "window": args.cache}
        elif variant == "recompute":
            nll = run_recompute(model, tokens, args.cache, args.stride)
            extra = {"max_positions": args.cache, "stride": args.stride}
        elif variant == "full":
            full = min(ctx, args.tokens)
            nll = run_stream(model, tokens, full, 0, 256)
            extra = {"max_positions": full, "note": "full context" if full >= args.tokens else "model's context limit"}
        else:
            raise SystemExit(f"unknown variant {variant!r}")
        results.append(summarize(variant, nll, args.cache, time.perf_counter() - t, **extra))
        print(json.dumps(results[-1]), flush=True)

    base = next((r["ppl"] for r in results if r["variant"] == "recompute"), None)
    print(f"\nStreamingLLM perplexity, {os.path.basename(gguf_model.path)}, {args.tokens} tokens of "
          f"pydoc_data.topics['specialnames'], cache {args.cache}")
    print(f"{'variant':<10} {'ppl':>9} {'vs recompute':>13} {'ppl past cache':>15} {'seconds':>8}")
    for r in results:
        rel = f"{(r['ppl'] / base - 1) * 100:+.2f}%" if base else "-"
        past = f"{r['ppl_past_cache']:.3f}" if r["ppl_past_cache"] else "-"
        print(f"{r['variant']:<10} {r['ppl']:>9.3f} {rel:>13} {past:>15} {r['seconds']:>8.1f}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"model": os.path.basename(gguf_model.path), "tokens": args.tokens, "cache": args.cache,
                   "text": "pydoc_data.topics['specialnames']", "python": sys.version.split()[0], "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
