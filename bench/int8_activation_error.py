"""How much logit error do 8-bit activations cost on a real model? A CPU-only estimate of the CUDA int8 path.

The CUDA decode path quantizes each matmul input to int8 with one scale per 32 values (llama.cpp's q8_1
scheme) and multiplies with dp4a: exact integer arithmetic on the quantized inputs. This script reproduces
only that rounding on the NumPy reference (activations rounded the same way before every matmul with a
quantized weight; everything else float32), then measures what the GPU end-to-end test measures: greedy
tokens of the plain NumPy model for 3 prompts x 32, the int8-activation model teacher-forced on them,
L2-relative logit error per position and top-1 agreement where the reference's margin is > 0.1.

    python bench/int8_activation_error.py [--model PATH] [--schemes q8/32,q8/16,q8x2/32]
    (prints a table, writes bench/out/int8_activation_error.json)

Besides today's scheme it evaluates two candidates for a more precise fast path (per-16 scales; an int8
residual pass, which doubles the dp4a work but reads no more weight bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from service.backends.base import SeqChunk, StepBatch  # noqa: E402
from service.backends.numpy_backend import NumpyBackend  # noqa: E402
from service.model.gguf_file import GGMLType, open_gguf  # noqa: E402
from service.model.llama import LlamaModel  # noqa: E402
from service.model.registry import resolve_model_path  # noqa: E402
from service.model.tokenizer import Tokenizer  # noqa: E402

PROMPTS = ["The capital of France is", "Once upon a time, in a small village by the sea,",
           "Water boils at a temperature of"]
N_GEN = 32
FLOAT_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)


def q8_round(x: np.ndarray, block: int = 32) -> np.ndarray:
    """x (T, K) rounded as the CUDA activation quantizer does: int8, one float scale per `block` values."""
    blocks = x.reshape(x.shape[0], -1, block).astype(np.float32)  # (T, K/block, block)
    d = np.abs(blocks).max(axis=-1, keepdims=True) / 127.0  # (T, K/block, 1)
    q = np.rint(np.divide(blocks, d, out=np.zeros_like(blocks), where=d > 0))
    return (q * d).reshape(x.shape).astype(np.float32)


# activation rounding schemes: the CUDA path's, and two candidates for a more precise int8 path
SCHEMES = {
    "q8/32": lambda x: q8_round(x, 32),  # what kernels/quantize_act.cu does today
    "q8/16": lambda x: q8_round(x, 16),  # twice the scales
    "q8x2/32": lambda x: q8_round(x, 32) + q8_round(x - q8_round(x, 32), 32),  # int8 + int8 residual: 2x dp4a
}


class Int8ActivationBackend(NumpyBackend):
    """The NumPy reference with every quantized-weight matmul fed int8-rounded activations."""

    def __init__(self, scheme: str = "q8/32") -> None:
        super().__init__()
        self.round = SCHEMES[scheme]
        self._quantized: set[int] = set()  # id() of dequantized arrays whose source type is quantized

    def load_weight(self, tensor, layer=None):
        w = super().load_weight(tensor, layer)
        if tensor.ggml_type not in FLOAT_TYPES:
            self._quantized.add(id(w))
        return w

    def matmul(self, x, w):
        return super().matmul(self.round(x) if id(w) in self._quantized else x, w)


def run(model: LlamaModel, prompts: list[list[int]], forced: np.ndarray | None = None):
    """Prefill, then N_GEN single-token steps per prompt: logits (P, N_GEN, V), tokens (P, N_GEN)."""
    logits, tokens = [], []
    for slot, ids in enumerate(prompts):
        seen, out_l, out_t = 0, [], []
        step_ids = list(ids)
        for j in range(N_GEN):
            batch = StepBatch(np.asarray(step_ids, np.int32), (SeqChunk(slot, seen, len(step_ids)),), 512)
            row = model.forward(batch)[0]  # (V,)
            seen += len(step_ids)
            out_l.append(row)
            nxt = int(forced[slot][j]) if forced is not None else int(np.argmax(row))
            out_t.append(nxt)
            step_ids = [nxt]
        logits.append(np.stack(out_l))
        tokens.append(out_t)
    return np.stack(logits), np.array(tokens)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=os.path.join("bench", "out", "int8_activation_error.json"))
    ap.add_argument("--schemes", default=",".join(SCHEMES), help=f"comma-separated, from {', '.join(SCHEMES)}")
    args = ap.parse_args(argv)
    g = open_gguf(resolve_model_path(args.model))
    tok = Tokenizer.from_gguf(g)
    prompts = [tok.encode(p) for p in PROMPTS]
    results: dict = {}
    ref_model = LlamaModel(g, NumpyBackend())
    ref_model.alloc_kv(ref_model.kv_layout(len(prompts), 512, 4))
    ref_logits, ref_tokens = run(ref_model, prompts)
    for scheme in args.schemes.split(","):
        q_model = LlamaModel(g, Int8ActivationBackend(scheme))
        q_model.alloc_kv(q_model.kv_layout(len(prompts), 512, 4))
        q_logits, _ = run(q_model, prompts, forced=ref_tokens)
        rel = np.linalg.norm(q_logits - ref_logits, axis=-1) / np.linalg.norm(ref_logits, axis=-1)  # (P, N)
        top2 = np.sort(ref_logits, axis=-1)[..., -2:]  # (P, N, 2)
        decisive = (top2[..., 1] - top2[..., 0]) > 0.1
        same = np.argmax(q_logits, axis=-1) == np.argmax(ref_logits, axis=-1)
        results[scheme] = {"positions": int(rel.size), "max_rel": float(rel.max()), "mean_rel": float(rel.mean()),
                           "first_step_rel": [float(r) for r in rel[:, 0]], "decisive": int(decisive.sum()),
                           "top1_mismatch_decisive": int((decisive & ~same).sum())}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"model": g.name, "results": results}, f, indent=1)
    print(f"\nactivation rounding vs float32 activations, {g.name}, NumPy, 3 prompts x {N_GEN}, teacher-forced")
    print(f"{'scheme':>8} {'max rel':>8} {'mean rel':>9} {'first step':>22} {'decisive top-1 mismatches':>26}")
    for scheme, r in results.items():
        first = ", ".join(f"{v:.2g}" for v in r["first_step_rel"])
        print(f"{scheme:>8} {r['max_rel']:>8.3g} {r['mean_rel']:>9.3g} {first:>22} "
              f"{r['top1_mismatch_decisive']:>17} of {r['decisive']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
