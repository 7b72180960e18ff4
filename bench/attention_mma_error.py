"""CPU error model of kernels/attention_mma.cu: its f16 rounding, emulated in float64 NumPy, vs exact attention.

    python bench/attention_mma_error.py [--draws 15] [--seed 0]

The kernel rounds four MMA operands to f16: q * scale * log2(e), K, V (exact for f16 KV; int8 * scale for q8 KV
is rounded once more) and the probabilities P (per 64-key tile, relative to the running max), and accumulates
S, O and the row sums in f32 with a base-2 online softmax. This script does the same arithmetic (causal,
one head block at a time) at the parity tests' input scales (q, v ~ N(0, 1), k ~ N(0, 4)) and prints
max |emulated - exact| / max |exact| per (head_dim, KV dtype): what MMA_TOL in tests/gpu/test_ops_parity.py
is set from.
"""

from __future__ import annotations

import argparse

import numpy as np

BN = 64  # keys per tile (MMA_BN)


def f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float64)


def q8_round_trip(x: np.ndarray) -> np.ndarray:
    """int8 per 32 values with a half scale (the cache's q8 format), read back as float32 -> float64."""
    xb = x.reshape(-1, 32)  # (blocks, 32)
    sc = (np.abs(xb).max(1) / 127).astype(np.float16).astype(np.float32)  # (blocks,)
    q = np.clip(np.rint(xb / np.where(sc > 0, sc, 1)[:, None]), -127, 127)
    return (q * sc[:, None]).reshape(x.shape).astype(np.float32).astype(np.float64)


def trial(rng: np.random.Generator, hd: int, heads: int, n: int, nk: int, q8: bool) -> float:
    q = rng.standard_normal((heads, n, hd)).astype(np.float32).astype(np.float64)  # (H, n, hd)
    k = 2 * rng.standard_normal((heads, nk, hd))  # (H, nk, hd)
    v = rng.standard_normal((heads, nk, hd))
    k, v = (q8_round_trip(k), q8_round_trip(v)) if q8 else (f16(k), f16(v))  # what the cache holds
    causal = np.arange(nk)[None, :] <= (nk - n + np.arange(n))[:, None]  # (n, nk): the last n keys are the rows'
    s = np.where(causal, np.einsum("hnd,hmd->hnm", q, k) / np.sqrt(hd), -np.inf)  # (H, n, nk)
    p = np.exp(s - s.max(-1, keepdims=True))
    ref = np.einsum("hnm,hmd->hnd", p, v) / p.sum(-1, keepdims=True)  # (H, n, hd)

    c = np.log2(np.e) / np.sqrt(hd)
    s2 = np.einsum("hnd,hmd->hnm", f16(q * c), f16(k)).astype(np.float32)  # f32 accumulators, base-2 scores
    s2 = np.where(causal, s2, -np.inf)
    m = np.full((heads, n, 1), -np.inf)
    l = np.zeros((heads, n, 1))
    o = np.zeros((heads, n, hd))
    for k0 in range(0, nk, BN):
        st = s2[:, :, k0:k0 + BN]
        m_new = np.maximum(m, st.max(-1, keepdims=True))
        base = np.where(np.isinf(m_new), 0, m_new)
        corr = np.exp2(m - base)
        pt = np.exp2(st - base).astype(np.float32)
        l = l * corr + pt.sum(-1, keepdims=True)
        o = o * corr + np.einsum("hnm,hmd->hnd", f16(pt), f16(v[:, k0:k0 + BN]))
        m = m_new
    return float(np.max(np.abs(o / l - ref)) / np.max(np.abs(ref)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=15, help="draws per size")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    sizes = [(1, 60, 60), (1, 60, 100), (1, 60, 290), (9, 300, 300), (9, 300, 340), (9, 300, 500)]  # heads, rows, keys
    print(f"{'head_dim':>8s} {'kv':>4s} {'median':>9s} {'max':>9s}   (max |err| / max |ref|, {args.draws} draws x "
          f"{len(sizes)} sizes)")
    for hd in (64, 128):
        for q8 in (False, True):
            errs = [trial(rng, hd, h, n, nk, q8) for h, n, nk in sizes for _ in range(args.draws)]
            print(f"{hd:8d} {'q8' if q8 else 'f16':>4s} {np.median(errs):9.2e} {max(errs):9.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
