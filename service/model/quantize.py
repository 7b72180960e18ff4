"""NumPy quantizers (float32 -> GGML blocks) and the `python -m service quantize` command.

The block quantizers follow the semantics of llama.cpp's reference quantizers in ggml-quants.c (the ones
`llama-quantize` uses without an importance matrix), vectorized over blocks: loops run only over the small
search grids, never over blocks.

  Q8_0  d = amax / 127, q = roundf(x / d)                                  (quantize_row_q8_0_ref)
  Q4_0  d = max / -8,  q = min(15, trunc(x / d + 8.5)); Q5_0 likewise with 16 / 31
  Q4_1  d = (max - min) / 15, q = trunc((x - min) / d + 0.5); Q5_1 with 31
  Q4_K  per 32-value sub-block a weighted (scale, min) search (make_qkx2_quants: nmax 15, rmin -1,
        rdelta 0.1, 20 steps, weights av|x| + |x|), then 6-bit scales/mins under f16 super-scales and a
        final re-rounding against the quantized scales                    (quantize_row_q4_K_ref)
  Q5_K  as Q4_K with nmax 31, rmin -0.5, 15 steps, and the 5th bits in qh    (quantize_row_q5_K_ref)
  Q6_K  per 16-value sub-block a symmetric scale search (make_qx_quants: nmax 32, weights x^2, 18 trial
        scales), 8-bit sub-scales under one f16 super-scale, re-rounding    (quantize_row_q6_K_ref)

Sums are accumulated left to right in float32 like the C loops (`seq_sum`), so the searches make the same
choices as the C reference compiled without FMA contraction: tests/test_quantize.py checks byte equality
with a literal scalar transcription (tests/ggml_ref_quants.py), the round-trip error through the `gguf`
package's dequantizers, and, where `gguf` has a quantizer (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1), byte equality.
The model-level recipe (which tensor gets which type) and the GGUF writing live in gguf_writer.py.
"""

from __future__ import annotations

import argparse
import os
from typing import Callable

import numpy as np
from gguf import GGMLQuantizationType as GGMLType

from service.errors import ModelFileError, UnsupportedModelError
from service.model.dequant import block_shape

GROUP_MAX_EPS = np.float32(1e-15)
_F32 = np.float32


def nearest_int(x: np.ndarray) -> np.ndarray:
    """llama.cpp's nearest_int (the 1.5 * 2**23 trick): round half to even, as int32."""
    return np.rint(x).astype(np.int32)


def roundf(x: np.ndarray) -> np.ndarray:
    """C roundf: round half away from zero (float32 in, float32 out)."""
    r = np.trunc(x)  # same shape
    frac = np.abs(x - r)  # exact for float32
    return r + np.where(frac >= 0.5, np.sign(x), 0).astype(x.dtype)


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    """(n,) or (n, 1) float32 -> (n, 2) uint8 little-endian f16 (round to nearest even, like GGML_FP32_TO_FP16)."""
    return v.astype(np.float16).reshape(-1, 1).view(np.uint8)  # (n, 2)


def _pack_nibbles(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return (lo.astype(np.uint8) & 0x0F) | (hi.astype(np.uint8) << 4)


def _safe_inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d == 0, _F32(0), _F32(1) / d).astype(np.float32)


def seq_sum(cols: np.ndarray) -> np.ndarray:
    """Sums over axis 0 of a C-contiguous (k, n) array, in float32, left to right like the C loops.

    NumPy adds the k rows one after another (its pairwise summation applies only along the contiguous
    axis), so each of the n sums has the C code's rounding; the searches below keep their values as (k, n)
    "columns" for this reason (and because it is ~40x faster than a cumsum along rows).
    """
    return cols.sum(axis=0, dtype=np.float32)  # (n,)


def _signed_max(x: np.ndarray) -> np.ndarray:
    """Per row, the value of largest magnitude (first one on ties, like the C loops) -> (n, 1)."""
    return np.take_along_axis(x, np.abs(x).argmax(axis=-1, keepdims=True), axis=-1)  # (n, 1)


# -- legacy 32-value blocks -----------------------------------------------------------------------
def _quantize_q8_0(x: np.ndarray) -> np.ndarray:
    d = np.abs(x).max(axis=1, keepdims=True) / _F32(127)  # (n, 1)
    q = roundf(x * _safe_inverse(d)).astype(np.int8).view(np.uint8)  # (n, 32)
    return np.concatenate([_f16_bytes(d), q], axis=1)  # (n, 34)


def _symmetric_ints(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0 / Q5_0: d = max / -nmax, q = min(2 nmax - 1, trunc(x / d + nmax + 0.5)) -> (d (n, 1), q (n, 32))."""
    d = _signed_max(x) / _F32(-nmax)  # (n, 1)
    q = np.trunc(x * _safe_inverse(d) + _F32(nmax + 0.5))  # (n, 32)
    return d, np.clip(q, 0, 2 * nmax - 1).astype(np.uint8)


def _affine_ints(x: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_1 / Q5_1: d = (max - min) / levels, q = trunc((x - min) / d + 0.5) -> (d, min, q)."""
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)  # (n, 1) each
    d = (hi - lo) / _F32(levels)  # (n, 1)
    q = np.trunc((x - lo) * _safe_inverse(d) + _F32(0.5))  # (n, 32)
    return d, lo, np.clip(q, 0, levels).astype(np.uint8)


def _high_bits(q: np.ndarray) -> np.ndarray:
    """(n, 32) 5-bit ints -> (n, 4) uint8: bit i of the little-endian u32 = 5th bit of value i."""
    return np.packbits(q >> 4, axis=1, bitorder="little")  # (n, 4)


def _quantize_q4_0(x: np.ndarray) -> np.ndarray:
    d, q = _symmetric_ints(x, 8)
    return np.concatenate([_f16_bytes(d), _pack_nibbles(q[:, :16], q[:, 16:])], axis=1)  # (n, 18)


def _quantize_q5_0(x: np.ndarray) -> np.ndarray:
    d, q = _symmetric_ints(x, 16)
    return np.concatenate([_f16_bytes(d), _high_bits(q), _pack_nibbles(q[:, :16], q[:, 16:])], axis=1)  # (n, 22)


def _quantize_q4_1(x: np.ndarray) -> np.ndarray:
    d, lo, q = _affine_ints(x, 15)
    return np.concatenate([_f16_bytes(d), _f16_bytes(lo), _pack_nibbles(q[:, :16], q[:, 16:])], axis=1)  # (n, 20)


def _quantize_q5_1(x: np.ndarray) -> np.ndarray:
    d, lo, q = _affine_ints(x, 31)
    return np.concatenate([_f16_bytes(d), _f16_bytes(lo), _high_bits(q),
                           _pack_nibbles(q[:, :16], q[:, 16:])], axis=1)  # (n, 24)


# -- k-quant searches -----------------------------------------------------------------------------
def make_qkx2_quants(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float,
                     nstep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted affine fit of each row of x (n, k): x ~ scale * L - the_min, L in [0, nmax].

    Starts from the min/max grid, then tries iscale = (nmax + rmin + rdelta * i) / (max - min) for
    i = 0..nstep, solving the weighted least-squares (scale, min) for each rounding and keeping the one
    with the smallest weighted squared error; like the C code, `min` is the best candidate's so far.
    Returns (scale (n,), the_min (n,), L (n, k) uint8).
    """
    xc, wc = np.ascontiguousarray(x.T), np.ascontiguousarray(w.T)  # (k, n) each: see seq_sum
    lo = np.minimum(xc.min(axis=0), _F32(0))  # (n,)
    hi = xc.max(axis=0)  # (n,)
    sum_w = seq_sum(wc)  # (n,)
    sum_x = seq_sum(wc * xc)  # (n,)
    flat = hi == lo  # (n,) constant rows (fixed up at the end)
    span = np.where(flat, _F32(1), hi - lo)  # (n,)

    iscale = _F32(nmax) / span  # (n,)
    scale = _F32(1) / iscale  # (n,)
    best_l = np.clip(np.rint(iscale * (xc - lo)), 0, nmax)  # (k, n) float32 levels
    diff = scale * best_l + lo - xc  # (k, n)
    best_err = seq_sum(wc * (diff * diff))  # (n,)
    best_min = lo.copy()  # (n,)

    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(nstep + 1):
            # as in the C code, a better candidate's min moves the grid of the following steps
            span = np.where(flat, _F32(1), hi - best_min)  # (n,)
            iscale = (_F32(rmin) + _F32(rdelta) * _F32(i) + _F32(nmax)) / span  # (n,)
            l = np.clip(np.rint(iscale * (xc - best_min)), 0, nmax)  # (k, n)
            wl = wc * l  # (k, n)
            sum_l = seq_sum(wl)  # (n,)
            sum_l2 = seq_sum(wl * l)  # (n,)
            sum_xl = seq_sum(wl * xc)  # (n,)
            det = sum_w * sum_l2 - sum_l * sum_l  # (n,)
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det  # (n,)
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det  # (n,)
            positive = this_min > 0
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale)  # (n,)
            this_min = np.where(positive, _F32(0), this_min)  # (n,)
            diff = this_scale * l + this_min - xc  # (k, n)
            err = seq_sum(wc * (diff * diff))  # (n,)
            better = (det > 0) & (err < best_err)  # (n,)
            best_l = np.where(better, l, best_l)  # (k, n)
            best_err = np.where(better, err, best_err)
            scale = np.where(better, this_scale, scale)
            best_min = np.where(better, this_min, best_min)

    scale = np.where(flat, _F32(0), scale).astype(np.float32)  # (n,)
    best_l = np.where(flat, _F32(0), best_l)  # (k, n)
    return scale, (-best_min).astype(np.float32), best_l.T.astype(np.uint8)  # L: (n, k)


def make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric fit of each row of x (n, k) with weights x^2 (rmse_type 1): x ~ scale * (L - nmax).

    Tries iscale = -(nmax + 0.1 i) / max for i = -9..9 and keeps the rounding maximizing
    sumlx^2 / suml2 (the least-squares optimum). Returns (scale (n,), L (n, k) uint8 in [0, 2 nmax - 1]).
    """
    vmax = _signed_max(x)[:, 0]  # (n,)
    zero = np.abs(vmax) < GROUP_MAX_EPS  # (n,)
    vmax = np.where(zero, _F32(1), vmax)  # (n,)
    xc = np.ascontiguousarray(x.T)  # (k, n): see seq_sum
    wc = xc * xc  # (k, n)
    wx = wc * xc  # (k, n)

    def fit(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        l = np.clip(np.rint(iscale * xc), -nmax, nmax - 1)  # (k, n) float32 levels
        return l, seq_sum(wx * l), seq_sum(wc * l * l)

    best_l, sumlx, suml2 = fit(_F32(-nmax) / vmax)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 > 0, sumlx / suml2, _F32(0)).astype(np.float32)  # (n,)
        best = scale * sumlx  # (n,)
        for i in range(-9, 10):
            if i == 0:
                continue
            l, sumlx, suml2 = fit(-(_F32(nmax) + _F32(0.1) * _F32(i)) / vmax)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)  # (n,)
            best_l = np.where(better, l, best_l)  # (k, n)
            scale = np.where(better, sumlx / suml2, scale).astype(np.float32)
            best = np.where(better, scale * sumlx, best)
    scale = np.where(zero, _F32(0), scale).astype(np.float32)  # (n,)
    levels = np.where(zero, _F32(0), best_l + _F32(nmax))  # (k, n): all-zero rows keep L = 0
    return scale, levels.T.astype(np.uint8)  # L: (n, k)


# -- Q4_K ------------------------------------------------------------------------------------------
def pack_scale_min_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """6-bit scales and mins (n, 8) each -> the 12-byte Q4_K/Q5_K packing (n, 12); see dequant.unpack_scale_min_k4."""
    ls, lm = ls.astype(np.uint8), lm.astype(np.uint8)
    out = np.empty((ls.shape[0], 12), np.uint8)  # (n, 12)
    out[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    out[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:] & 0x0F) | ((lm[:, 4:] & 0x0F) << 4)
    return out


def _k_levels(x: np.ndarray, nmax: int, rmin: float, nstep: int):
    """Shared body of quantize_row_q4_K_ref / q5_K_ref for n blocks x (n, 256): the per-sub-block search,
    6-bit scales/mins under f16 super-scales, then every value re-rounded against the decoded scales.
    Returns (d16 (n, 1) f16, dmin16 (n, 1) f16, ls (n, 8), lm (n, 8), levels (n, 8, 32) uint8 in [0, nmax])."""
    n = x.shape[0]
    sub = x.reshape(n * 8, 32)  # (n * 8, 32) sub-blocks
    sub_c = np.ascontiguousarray(sub.T)  # (32, n * 8): see seq_sum
    av_x = np.sqrt(seq_sum(sub_c * sub_c) / _F32(32))[:, None]  # (n * 8, 1)
    scales, mins, levels = make_qkx2_quants(sub, av_x + np.abs(sub), nmax, rmin, 0.1, nstep)
    scales, mins, levels = scales.reshape(n, 8), mins.reshape(n, 8), levels.reshape(n, 8, 32)

    max_scale = np.maximum(scales.max(axis=1, keepdims=True), _F32(0))  # (n, 1)
    max_min = np.maximum(mins.max(axis=1, keepdims=True), _F32(0))  # (n, 1)
    inv_scale = np.where(max_scale > 0, _F32(63) / np.where(max_scale > 0, max_scale, 1), _F32(0))  # (n, 1)
    inv_min = np.where(max_min > 0, _F32(63) / np.where(max_min > 0, max_min, 1), _F32(0))  # (n, 1)
    ls = np.clip(nearest_int(inv_scale * scales), 0, 63)  # (n, 8)
    lm = np.clip(nearest_int(inv_min * mins), 0, 63)  # (n, 8)
    d16 = (max_scale / _F32(63)).astype(np.float16)  # (n, 1)
    dmin16 = (max_min / _F32(63)).astype(np.float16)  # (n, 1)

    d = d16.astype(np.float32) * ls.astype(np.float32)  # (n, 8)
    dm = dmin16.astype(np.float32) * lm.astype(np.float32)  # (n, 8)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = np.clip(nearest_int((x.reshape(n, 8, 32) + dm[:, :, None]) / d[:, :, None]), 0, nmax)  # (n, 8, 32)
    levels = np.where((d != 0)[:, :, None], requant, levels).astype(np.uint8)  # (n, 8, 32)
    return d16, dmin16, ls, lm, levels


def _quantize_q4_k(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    d16, dmin16, ls, lm, levels = _k_levels(x, 15, -1.0, 20)
    pairs = levels.reshape(n, 4, 2, 32)  # (n, chunk, half, 32)
    qs = _pack_nibbles(pairs[:, :, 0], pairs[:, :, 1]).reshape(n, 128)  # (n, 128)
    return np.concatenate([d16.view(np.uint8), dmin16.view(np.uint8), pack_scale_min_k4(ls, lm), qs], axis=1)  # (n, 144)


_Q5K_BITS = (np.uint8(1) << np.arange(8, dtype=np.uint8)).reshape(1, 4, 2, 1)  # qh bit (2c + h): chunk c, half h


def _quantize_q5_k(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    d16, dmin16, ls, lm, levels = _k_levels(x, 31, -0.5, 15)
    pairs = levels.reshape(n, 4, 2, 32)  # (n, chunk, half, 32)
    qs = _pack_nibbles(pairs[:, :, 0], pairs[:, :, 1]).reshape(n, 128)  # (n, 128)
    qh = np.bitwise_or.reduce(np.where(pairs > 15, _Q5K_BITS, np.uint8(0)).reshape(n, 8, 32), axis=1)  # (n, 32)
    return np.concatenate([d16.view(np.uint8), dmin16.view(np.uint8), pack_scale_min_k4(ls, lm),
                           qh.astype(np.uint8), qs], axis=1)  # (n, 176)


# -- Q6_K ------------------------------------------------------------------------------------------
def _quantize_q6_k(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    scales, levels = make_qx_quants(x.reshape(n * 16, 16), 32)
    scales, levels = scales.reshape(n, 16), levels.reshape(n, 16, 16)

    max_scale = _signed_max(scales)  # (n, 1): the sub-scale of largest magnitude, with its sign
    zero = np.abs(max_scale[:, 0]) < GROUP_MAX_EPS  # (n,)
    iscale = _F32(-128) / np.where(zero[:, None], _F32(1), max_scale)  # (n, 1)
    d16 = (_F32(1) / iscale).astype(np.float16)  # (n, 1)
    sc = np.minimum(127, nearest_int(iscale * scales)).astype(np.int8)  # (n, 16)

    d = d16.astype(np.float32) * sc.astype(np.float32)  # (n, 16)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = np.clip(nearest_int(x.reshape(n, 16, 16) / d[:, :, None]), -32, 31) + 32  # (n, 16, 16)
    levels = np.where((d != 0)[:, :, None], requant, levels).astype(np.uint8).reshape(n, 2, 4, 32)  # (n, half, k, 32)

    ql = np.concatenate([_pack_nibbles(levels[:, :, 0], levels[:, :, 2]),
                         _pack_nibbles(levels[:, :, 1], levels[:, :, 3])], axis=2).reshape(n, 128)  # (n, 128)
    hi = levels >> 4  # (n, half, k, 32)
    qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(n, 64)  # (n, 64)
    out = np.concatenate([ql, qh, sc.view(np.uint8), d16.view(np.uint8)], axis=1)  # (n, 210)
    out[zero] = 0  # an all-zero super-block is stored as zeros (d = 0)
    return out


_BLOCK_QUANT: dict[GGMLType, Callable[[np.ndarray], np.ndarray]] = {
    GGMLType.Q8_0: _quantize_q8_0, GGMLType.Q4_0: _quantize_q4_0, GGMLType.Q4_1: _quantize_q4_1,
    GGMLType.Q5_0: _quantize_q5_0, GGMLType.Q5_1: _quantize_q5_1,
    GGMLType.Q4_K: _quantize_q4_k, GGMLType.Q5_K: _quantize_q5_k, GGMLType.Q6_K: _quantize_q6_k,
}
QUANTIZABLE = frozenset(_BLOCK_QUANT) | {GGMLType.F32, GGMLType.F16}

_CHUNK_VALUES = 1 << 18  # values quantized per call: bounds the search temporaries


def quantize(x: np.ndarray, ggml_type: GGMLType) -> np.ndarray:
    """(rows, cols) float32 -> storage: (rows, bytes_per_row) uint8 for quantized types, typed for F32/F16."""
    ggml_type = GGMLType(int(ggml_type))
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x.reshape(1, -1)  # (1, cols)
    if ggml_type == GGMLType.F32:
        return x
    if ggml_type == GGMLType.F16:
        return x.astype(np.float16)
    if ggml_type not in _BLOCK_QUANT:
        raise UnsupportedModelError(f"cannot quantize to {ggml_type.name}")
    rows, cols = x.shape
    per_block, block_bytes = block_shape(ggml_type)
    if cols % per_block:
        raise UnsupportedModelError(f"{ggml_type.name} needs rows of a multiple of {per_block} values, got {cols}")
    blocks = x.reshape(-1, per_block)  # (n_blocks, per_block)
    out = np.empty((blocks.shape[0], block_bytes), np.uint8)  # (n_blocks, block_bytes)
    step = max(1, _CHUNK_VALUES // per_block)
    fn = _BLOCK_QUANT[ggml_type]
    for start in range(0, blocks.shape[0], step):
        out[start:start + step] = fn(blocks[start:start + step])
    return out.reshape(rows, cols // per_block * block_bytes)  # (rows, bytes_per_row)


# -- command line and the test fixture -----------------------------------------------------------
def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from service.model.gguf_writer import RECIPES

    p = subparsers.add_parser("quantize", help="requantize a GGUF model (llama.cpp recipes, e.g. Q4_K_M)",
                              description="Requantize a llama GGUF file, copying all metadata.")
    p.add_argument("input", help="source .gguf file")
    p.add_argument("output", help="destination .gguf file")
    p.add_argument("--type", default="Q4_K_M", help=f"target recipe: {', '.join(RECIPES)} (default Q4_K_M)")
    p.add_argument("--keep-layers", type=int, default=None, metavar="N",
                   help="keep only the first N transformer blocks (small test files)")
    p.add_argument("--output-tensor-type", default=None, metavar="TYPE",
                   help="type of output.weight (and of a tied token_embd.weight), e.g. Q5_0 for a small file")
    p.add_argument("--token-embedding-type", default=None, metavar="TYPE", help="type of an untied token_embd.weight")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from service.model.gguf_writer import requantize_file

    summary = requantize_file(args.input, args.output, args.type, keep_layers=args.keep_layers,
                              progress=not args.quiet, output_type=args.output_tensor_type,
                              token_embd_type=args.token_embedding_type)
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(summary.type_counts.items()))
    print(f"wrote {args.output}: {summary.n_tensors} tensors ({counts}), "
          f"{summary.out_bytes / 1e6:.1f} MB (from {summary.in_bytes / 1e6:.1f} MB) in {summary.seconds:.1f} s")
    return 0


def q4_k_m_fixture_path(cache: str | None = None, keep_layers: int | None = None) -> str:
    from service.model.registry import cache_dir

    suffix = f".{keep_layers}L" if keep_layers else ""
    return os.path.join(cache_dir(cache), f"SmolLM2-135M-Instruct.Q4_K_M{suffix}.gguf")


def ensure_q4_k_m_fixture(cache: str | None = None, keep_layers: int | None = None) -> str:
    """Path of a Q4_K_M requantization of the default model, made once into the model cache.

    Full model: ~104 MB, ~6 s of CPU. With `keep_layers=N`: only the first N blocks and the tied
    embedding/head in Q5_0 instead of Q8_0, so that N = 2 gives a ~24 MB real-weights file for the GPU machine
    (the same as `python -m service quantize SRC DST --keep-layers 2 --output-tensor-type Q5_0`).
    """
    from service.model.gguf_writer import requantize_file
    from service.model.registry import resolve_model_path

    target = q4_k_m_fixture_path(cache, keep_layers)
    if os.path.exists(target):
        return target
    source = resolve_model_path(None, cache)
    tmp = f"{target}.tmp{os.getpid()}"
    try:
        requantize_file(source, tmp, "Q4_K_M", keep_layers=keep_layers, progress=False,
                        output_type="Q5_0" if keep_layers else None)
        os.replace(tmp, target)  # atomic: a concurrent test never sees a half-written file
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    if not os.path.exists(target):
        raise ModelFileError(f"could not create {target}")
    return target
