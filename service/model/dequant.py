"""NumPy dequantization of GGML tensor types (placeholder: delegates to the gguf package until our own lands)."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as GGMLType
from gguf import quants


def dequantize(data: np.ndarray, ggml_type: GGMLType, shape: tuple[int, ...]) -> np.ndarray:
    """Raw storage -> float32 array of the logical `shape`."""
    out = quants.dequantize(np.asarray(data), ggml_type)
    return np.ascontiguousarray(out, dtype=np.float32).reshape(shape)
