"""Backend choice: `create_backend("auto" | "numpy" | "cuda", config)` (the --backend flag).

"auto" picks CUDA when pycuda imports and a device is usable (a context can be created), else NumPy;
"cuda" raises ConfigError with the reason when no GPU is usable. PyCUDA stays an optional extra: this module
imports it only inside `cuda_usable` / the CUDA backend.
"""

from __future__ import annotations

import logging
from typing import Any

from service.errors import ConfigError, LLMError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "numpy", "cuda")


def cuda_usable() -> tuple[bool, str]:
    """(True, device name) when pycuda imports and device 0 exists, else (False, why)."""
    try:
        import pycuda.driver as cuda
    except ImportError as exc:  # no pycuda, or no libcuda.so.1
        return False, f"pycuda not importable ({exc})"
    try:
        cuda.init()
        if cuda.Device.count() < 1:
            return False, "no CUDA device"
        return True, cuda.Device(0).name()
    except Exception as exc:  # noqa: BLE001 - any driver failure means "not usable"
        return False, f"CUDA driver error ({exc})"


def _sizes(config: Any) -> dict[str, Any]:
    """Step caps of the CUDA backend from the engine/cache configuration."""
    if config is None:
        return {}
    budget = int(config.engine.step_token_budget)
    return {
        "max_rows": max(1, budget),
        "max_seqs": max(1, min(int(config.engine.max_running), int(config.cache.slots), budget)),
        "kernel_cache_dir": config.model.kernel_cache_dir,
        "int8_decode": config.model.decode_activations != "f16",
        "int8x2": config.model.decode_activations == "int8x2",
    }


def create_backend(name: str, config: Any = None) -> Any:
    """The backend named `name`; `config` is a service.config.Config (or None for defaults)."""
    if name not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, not {name!r}")
    if name in ("auto", "cuda"):
        ok, why = cuda_usable()
        if ok:
            try:
                from service.backends.cuda_backend import CudaBackend

                backend = CudaBackend(**_sizes(config))
                log.info("backend: cuda on %s", why)
                return backend
            except (ImportError, LLMError, OSError, RuntimeError) as exc:
                why = f"{type(exc).__name__}: {exc}"
        if name == "cuda":
            raise ConfigError(f"--backend cuda: no usable GPU ({why})")
        log.info("backend: numpy (CUDA not usable: %s)", why)
    from service.backends.numpy_backend import NumpyBackend

    return NumpyBackend()
