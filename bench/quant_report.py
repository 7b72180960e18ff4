"""Quantization report: round-trip error per type, the Q4_K_M requantization of the default model, and how
often it picks the same next token as the original.

Prints a table and writes bench/out/quant_report.json.

  python bench/quant_report.py [--model PATH] [--tokens 32]

1. round-trip RMSE of our quantizers (dequantized by the `gguf` package) on N(0, 1) data and relative RMSE
   (error RMS / tensor RMS) on real default-model tensors (dequantized from their Q4_1 storage first; those
   values already lie on Q4_1's affine 16-level grid per 32 values, which Q4_K's 32-value sub-blocks with
   scale + min nearly reproduce, so Q4_K's real-tensor error is far below its Gaussian one);
2. the Q4_K_M requantization: tensors per type, file size, time;
3. top-1 agreement under teacher forcing: the original model generates `--tokens` greedy tokens for each of
   3 prompts; the Q4_K_M model reads the same tokens, and we count the positions where its argmax equals the
   original's; also the mean KL(original || Q4_K_M) of the next-token distributions;
4. dequantization time of the whole default model: ours vs the `gguf` package's (same run, same machine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf import quants  # noqa: E402

from service.backends.base import SeqChunk, StepBatch  # noqa: E402
from service.backends.numpy_backend import NumpyBackend  # noqa: E402
from service.model.dequant import dequantize  # noqa: E402
from service.model.gguf_file import open_gguf  # noqa: E402
from service.model.gguf_writer import requantize_file  # noqa: E402
from service.model.llama import LlamaModel  # noqa: E402
from service.model.quantize import quantize  # noqa: E402
from service.model.registry import resolve_model_path  # noqa: E402
from service.model.tokenizer import Tokenizer  # noqa: E402

TYPES = (T.Q4_K, T.Q6_K, T.Q8_0, T.Q5_0)
PROMPTS = ("The capital of France is", "def fibonacci(n):\n", "Once upon a time, in a small village,")
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "quant_report.json")


def rel_rmse(x: np.ndarray, ggml_type: T) -> float:
    back = quants.dequantize(quantize(x, ggml_type), ggml_type).reshape(x.shape)  # independent dequantizer
    return float(np.sqrt(np.mean((back.astype(np.float64) - x) ** 2) / np.mean(x.astype(np.float64) ** 2)))


def round_trip(model) -> dict:
    gauss = np.random.default_rng(0).standard_normal((256, 4096)).astype(np.float32)  # (256, 4096)
    out = {"gaussian_rmse": {t.name: rel_rmse(gauss, t) for t in TYPES}, "real_rel_rmse": {}}
    # real tensors: the ffn_down rows (1536 = 6 x 256) take every type; four layers across the depth
    names = [f"blk.{i}.ffn_down.weight" for i in (0, 10, 20, model.hparams.n_layers - 1)]
    xs = [dequantize(model.tensor(n).data, model.tensor(n).ggml_type, model.tensor(n).shape) for n in names]
    for t in TYPES:
        errs = [rel_rmse(x, t) for x in xs]
        out["real_rel_rmse"][t.name] = float(np.sqrt(np.mean(np.square(errs))))
    out["real_tensors"] = names
    return out


def greedy_and_teacher_forced(ref: LlamaModel, test: LlamaModel, prompts: list[list[int]], n_tokens: int) -> dict:
    """Original greedy tokens; the test model reads them; agreement of argmax and mean KL per position."""
    max_pos = max(len(p) for p in prompts) + n_tokens + 1
    for m in (ref, test):
        m.alloc_kv(m.kv_layout(len(prompts), max_pos, 4))
    ids = np.concatenate([np.array(p, np.int32) for p in prompts])  # (sum of prompt lengths,)
    chunks = tuple(SeqChunk(s, 0, len(p)) for s, p in enumerate(prompts))
    lr = ref.forward(StepBatch(ids, chunks, max_pos))  # (S, vocab)
    lt = test.forward(StepBatch(ids, chunks, max_pos))  # (S, vocab)
    agree, kls, generated = [], [], [[] for _ in prompts]
    n_cached = [len(p) for p in prompts]
    for _ in range(n_tokens):
        nxt = lr.argmax(axis=1)  # (S,)
        agree.extend((lt.argmax(axis=1) == nxt).tolist())
        pr = np.exp(lr - lr.max(axis=1, keepdims=True)); pr /= pr.sum(axis=1, keepdims=True)  # (S, vocab)
        lq = lt - lt.max(axis=1, keepdims=True); lq -= np.log(np.exp(lq).sum(axis=1, keepdims=True))  # (S, vocab)
        lp = np.log(np.maximum(pr, 1e-30))  # (S, vocab)
        kls.extend((pr * (lp - lq)).sum(axis=1).tolist())
        for s, tok in enumerate(nxt):
            generated[s].append(int(tok))
        chunks = tuple(SeqChunk(s, n_cached[s], 1) for s in range(len(prompts)))
        batch = StepBatch(nxt.astype(np.int32), chunks, max_pos)
        lr, lt = ref.forward(batch), test.forward(batch)
        n_cached = [n + 1 for n in n_cached]
    return {"top1_agreement": float(np.mean(agree)), "positions": len(agree), "mean_kl": float(np.mean(kls)),
            "generated": generated}


def dequant_timing(model) -> dict:
    tensors = list(model.tensors.values())
    t0 = time.process_time()
    for t in tensors:
        quants.dequantize(np.asarray(t.data), t.ggml_type)
    t1 = time.process_time()
    for t in tensors:
        dequantize(t.data, t.ggml_type, t.shape)
    t2 = time.process_time()
    return {"gguf_cpu_s": t1 - t0, "ours_cpu_s": t2 - t1}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="source GGUF (default: the default model)")
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    src_path = resolve_model_path(args.model)
    src = open_gguf(src_path)
    report: dict = {"model": os.path.basename(src_path)}

    report["dequant_time"] = dequant_timing(src)
    report["round_trip"] = round_trip(src)

    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "q4_k_m.gguf")
        t0 = time.process_time()
        summary = requantize_file(src_path, out_path, "Q4_K_M", progress=False)
        report["q4_k_m"] = {
            "type_counts": summary.type_counts, "file_mb": summary.file_bytes / 1e6,
            "source_file_mb": os.path.getsize(src_path) / 1e6, "quantize_cpu_s": time.process_time() - t0,
        }
        q4 = open_gguf(out_path)
        tok = Tokenizer.from_gguf(src)
        prompts = [tok.encode(p, add_special=False) for p in PROMPTS]
        ref, test = LlamaModel(src, NumpyBackend()), LlamaModel(q4, NumpyBackend())
        tf = greedy_and_teacher_forced(ref, test, prompts, args.tokens)
        tf["prompts"] = list(PROMPTS)
        tf["continuations"] = [tok.decode(g) for g in tf.pop("generated")]
        report["teacher_forcing"] = tf

    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(report, f, indent=2)

    rt = report["round_trip"]
    print(f"model: {report['model']}")
    print(f"{'type':6} {'bpw':>6} {'N(0,1) RMSE':>12} {'real rel. RMSE':>15}")
    for t in TYPES:
        per_block, block_bytes = quants.GGML_QUANT_SIZES[t]
        print(f"{t.name:6} {8 * block_bytes / per_block:6.3f} {rt['gaussian_rmse'][t.name]:12.5f} "
              f"{rt['real_rel_rmse'][t.name]:15.5f}")
    qk = report["q4_k_m"]
    print(f"Q4_K_M: {', '.join(f'{k} {v}' for k, v in sorted(qk['type_counts'].items()))}; "
          f"{qk['file_mb']:.1f} MB (source {qk['source_file_mb']:.1f} MB); {qk['quantize_cpu_s']:.1f} s CPU")
    tf = report["teacher_forcing"]
    print(f"teacher forcing, {tf['positions']} positions: top-1 agreement {tf['top1_agreement']:.3f}, "
          f"mean KL {tf['mean_kl']:.4f} nats")
    for p, c in zip(tf["prompts"], tf["continuations"]):
        print(f"  {p!r} -> {c!r}")
    dt = report["dequant_time"]
    print(f"dequantize whole model: ours {dt['ours_cpu_s']:.2f} s CPU, gguf {dt['gguf_cpu_s']:.2f} s CPU")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
