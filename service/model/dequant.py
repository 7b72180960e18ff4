"""NumPy dequantization of GGML tensor types, written from the GGML block layouts (ggml-common.h).

Every quantized type stores a row as consecutive fixed-size blocks. We view the raw bytes as a
(n_blocks, block_bytes) uint8 matrix, slice each field of the block as a column range, and unpack all
blocks at once: no Python loop over blocks. The float arithmetic follows the reference order
(`d * q + m`, `(d * sc) * q - (dmin * m)`, ...) in float32, so results are bit-identical to the `gguf`
package's dequantizers (tests/test_dequant.py checks that on random blocks and on a real model).

Block layouts (QK = 32 values per block for the legacy types, QK_K = 256 for the k-quants):
  Q4_0  18 B : d f16 | qs[16]                 y = d * (q - 8),    q = low nibbles (values 0..15), high (16..31)
  Q4_1  20 B : d f16 | m f16 | qs[16]         y = d * q + m
  Q5_0  22 B : d f16 | qh u32 | qs[16]        y = d * (q - 16),   q = nibble | bit i of qh << 4
  Q5_1  24 B : d f16 | m f16 | qh u32 | qs[16]
  Q8_0  34 B : d f16 | qs int8[32]            y = d * q
  Q4_K 144 B : d f16 | dmin f16 | scales[12] (8 x 6-bit scale, 8 x 6-bit min) | qs[128]
               64-value chunk c: low nibbles of qs[32c:32c+32] -> sub-block 2c, high nibbles -> 2c+1
  Q5_K 176 B : as Q4_K plus qh[32] after the scales: bit (2c + h) of qh[l] is the 5th bit of value l of half h
  Q6_K 210 B : ql[128] | qh[64] | scales int8[16] | d f16; 16 sub-blocks of 16 values, y = d * sc * (q - 32)
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as GGMLType
from gguf.constants import GGML_QUANT_SIZES

from service.errors import UnsupportedModelError

QK_K = 256


def block_shape(ggml_type: GGMLType) -> tuple[int, int]:
    """(values per block, bytes per block) of a GGML type."""
    return GGML_QUANT_SIZES[GGMLType(ggml_type)]


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """The f16 field at byte `start` of every block -> (n_blocks, 1) float32."""
    return np.ascontiguousarray(blocks[:, start:start + 2]).view(np.float16).astype(np.float32)  # (n_blocks, 1)


def _nibbles(qs: np.ndarray, out: np.ndarray) -> np.ndarray:
    """(n, k, L) bytes -> out (n, k, 2, L): low nibbles first, then high nibbles, in out's dtype."""
    out[:, :, 0, :] = qs & np.uint8(0x0F)
    out[:, :, 1, :] = qs >> np.uint8(4)
    return out


# -- legacy 32-value blocks -----------------------------------------------------------------------
def _q4_0(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    d = _f16(blocks, 0)  # (n, 1)
    q = _nibbles(blocks[:, None, 2:18], np.empty((n, 1, 2, 16), np.float32)).reshape(n, 32)  # (n, 32)
    q -= np.float32(8)
    q *= d
    return q


def _q4_1(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    d, m = _f16(blocks, 0), _f16(blocks, 2)  # (n, 1) each
    q = _nibbles(blocks[:, None, 4:20], np.empty((n, 1, 2, 16), np.float32)).reshape(n, 32)  # (n, 32)
    q *= d
    q += m
    return q


def _q5_ints(blocks: np.ndarray, qh_at: int) -> np.ndarray:
    """5-bit unsigned values of Q5_0 / Q5_1 blocks -> (n, 32) uint8."""
    n = blocks.shape[0]
    q = _nibbles(blocks[:, None, qh_at + 4:qh_at + 20], np.empty((n, 1, 2, 16), np.uint8)).reshape(n, 32)  # (n, 32)
    high = np.unpackbits(blocks[:, qh_at:qh_at + 4], axis=1, bitorder="little")  # (n, 32): bit i of the u32
    q |= high << np.uint8(4)
    return q


def _q5_0(blocks: np.ndarray) -> np.ndarray:
    d = _f16(blocks, 0)  # (n, 1)
    q = _q5_ints(blocks, 2).astype(np.float32)  # (n, 32)
    q -= np.float32(16)
    q *= d
    return q


def _q5_1(blocks: np.ndarray) -> np.ndarray:
    d, m = _f16(blocks, 0), _f16(blocks, 2)  # (n, 1) each
    q = _q5_ints(blocks, 4).astype(np.float32)  # (n, 32)
    q *= d
    q += m
    return q


def _q8_0(blocks: np.ndarray) -> np.ndarray:
    d = _f16(blocks, 0)  # (n, 1)
    q = blocks[:, 2:].view(np.int8).astype(np.float32)  # (n, 32)
    q *= d
    return q


# -- k-quants: 256-value super-blocks ------------------------------------------------------------
def unpack_scale_min_k4(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K packed scales (n, 12) uint8 -> (sc, m), each (n, 8) uint8 of 6-bit values.

    bytes 0-3: low 6 bits = sc[0:4], top 2 bits = high bits of sc[4:8]
    bytes 4-7: low 6 bits =  m[0:4], top 2 bits = high bits of  m[4:8]
    bytes 8-11: low nibble = low 4 bits of sc[4:8], high nibble = low 4 bits of m[4:8]
    """
    a, b, c = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]  # (n, 4) each
    sc = np.concatenate([a & 0x3F, (c & 0x0F) | ((a >> 6) << 4)], axis=1)  # (n, 8)
    m = np.concatenate([b & 0x3F, (c >> 4) | ((b >> 6) << 4)], axis=1)  # (n, 8)
    return sc, m


def _k_scales(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: per-sub-block (d * sc, dmin * m) -> two (n, 8, 1) float32."""
    d, dmin = _f16(blocks, 0), _f16(blocks, 2)  # (n, 1) each
    sc, m = unpack_scale_min_k4(blocks[:, 4:16])  # (n, 8) each
    return (d * sc.astype(np.float32))[:, :, None], (dmin * m.astype(np.float32))[:, :, None]  # (n, 8, 1) each


def _q4_k(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    ds, dm = _k_scales(blocks)  # (n, 8, 1) each
    q = _nibbles(blocks[:, 16:144].reshape(n, 4, 32), np.empty((n, 4, 2, 32), np.float32)).reshape(n, 8, 32)  # (n, 8, 32)
    q *= ds
    q -= dm
    return q.reshape(n, QK_K)


_Q5K_SHIFTS = np.arange(8, dtype=np.uint8).reshape(1, 4, 2, 1)  # bit (2c + h) of qh: chunk c, half h


def _q5_k(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    ds, dm = _k_scales(blocks)  # (n, 8, 1) each
    q = _nibbles(blocks[:, 48:176].reshape(n, 4, 32), np.empty((n, 4, 2, 32), np.uint8))  # (n, 4, 2, 32)
    high = (blocks[:, None, None, 16:48] >> _Q5K_SHIFTS) & np.uint8(1)  # (n, 4, 2, 32)
    q |= high << np.uint8(4)
    out = q.reshape(n, 8, 32).astype(np.float32)  # (n, 8, 32)
    out *= ds
    out -= dm
    return out.reshape(n, QK_K)


_Q6K_SHIFTS = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)  # 2-bit field k of qh


def _q6_k(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    ql = blocks[:, 0:128].reshape(n, 2, 2, 32)  # (n, half, j, 32): bytes l and l+32 of each 64-byte half
    qh = blocks[:, 128:192].reshape(n, 2, 1, 32)  # (n, half, 1, 32)
    sc = blocks[:, 192:208].view(np.int8).astype(np.float32)  # (n, 16)
    d = _f16(blocks, 208)  # (n, 1)
    low = np.empty((n, 2, 2, 2, 32), np.uint8)  # (n, half, nibble, j, 32): value group k = 2 * nibble + j
    low[:, :, 0] = ql & np.uint8(0x0F)
    low[:, :, 1] = ql >> np.uint8(4)
    q = low.reshape(n, 2, 4, 32)  # (n, half, k, 32)
    q |= ((qh >> _Q6K_SHIFTS) & np.uint8(3)) << np.uint8(4)
    out = (q.view(np.int8) - np.int8(32)).astype(np.float32).reshape(n, 16, 16)  # (n, 16 sub-blocks, 16)
    out *= (d * sc)[:, :, None]
    return out.reshape(n, QK_K)


_BLOCK_DEQUANT = {
    GGMLType.Q4_0: _q4_0, GGMLType.Q4_1: _q4_1, GGMLType.Q5_0: _q5_0, GGMLType.Q5_1: _q5_1,
    GGMLType.Q8_0: _q8_0, GGMLType.Q4_K: _q4_k, GGMLType.Q5_K: _q5_k, GGMLType.Q6_K: _q6_k,
}
FLOAT_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)
SUPPORTED = frozenset(_BLOCK_DEQUANT) | frozenset(FLOAT_TYPES)

# Blocks dequantized per call: bounds the temporaries (a few x 4 MB) so they stay in cache.
_CHUNK_VALUES = 1 << 20


def dequantize_blocks(blocks: np.ndarray, ggml_type: GGMLType) -> np.ndarray:
    """(n_blocks, block_bytes) uint8 -> (n_blocks, block_values) float32."""
    fn = _BLOCK_DEQUANT[GGMLType(ggml_type)]
    n = blocks.shape[0]
    per_block, _ = block_shape(ggml_type)
    step = max(1, _CHUNK_VALUES // per_block)
    if n <= step:
        return fn(blocks)
    out = np.empty((n, per_block), np.float32)  # (n_blocks, block_values)
    for start in range(0, n, step):
        out[start:start + step] = fn(blocks[start:start + step])
    return out


def _raw_bytes(data: np.ndarray) -> np.ndarray:
    """Any storage view (typed or uint8, any shape) -> flat contiguous uint8 (no copy when contiguous)."""
    return np.ascontiguousarray(data).reshape(-1).view(np.uint8)  # (n_bytes,)


def dequantize(data: np.ndarray, ggml_type: GGMLType, shape: tuple[int, ...]) -> np.ndarray:
    """Raw storage -> float32 array of the logical `shape` (numpy order: (rows, cols) for matrices)."""
    ggml_type = GGMLType(int(ggml_type))
    n_values = int(np.prod(shape))
    if ggml_type == GGMLType.F32:
        return _raw_bytes(data).view(np.float32).reshape(shape)  # shape
    if ggml_type == GGMLType.F16:
        return _raw_bytes(data).view(np.float16).astype(np.float32).reshape(shape)  # shape
    if ggml_type == GGMLType.BF16:
        return (_raw_bytes(data).view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)  # shape
    if ggml_type not in _BLOCK_DEQUANT:
        raise UnsupportedModelError(f"cannot dequantize tensor type {ggml_type.name}")
    per_block, block_bytes = block_shape(ggml_type)
    raw = _raw_bytes(data)  # (n_bytes,)
    if n_values % per_block or raw.size != n_values // per_block * block_bytes:
        raise UnsupportedModelError(
            f"{ggml_type.name} data of {raw.size} bytes does not hold a tensor of shape {tuple(shape)}")
    blocks = raw.reshape(-1, block_bytes)  # (n_blocks, block_bytes)
    return dequantize_blocks(blocks, ggml_type).reshape(shape)  # shape


def dequantize_rows(data: np.ndarray, ggml_type: GGMLType, cols: int, rows: slice | np.ndarray) -> np.ndarray:
    """Selected rows of a (rows, cols) tensor -> (n_selected, cols) float32, touching only those rows' bytes.

    `data` is the tensor's storage with one row per leading index: (rows, bytes_per_row) uint8 for quantized
    types, (rows, cols) for float types. Used for embedding lookups (one row per token).
    """
    picked = np.asarray(data)[rows]  # (n_selected, bytes_per_row) or (n_selected, cols)
    picked = picked.reshape(-1, picked.shape[-1]) if picked.ndim else picked.reshape(1, -1)
    return dequantize(picked, ggml_type, (picked.shape[0], cols))  # (n_selected, cols)
