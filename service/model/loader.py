"""Model loading from a Config: GGUF file (or dummy weights) -> backend -> LlamaModel + tokenizer + chat template.

Backend choice (config.model.backend, via service.backends.factory): "numpy" (reference, host), "cuda"
(ConfigError when no GPU is usable), "auto" (cuda when pycuda imports and a GPU is usable, else numpy).
Dummy weights (config.model.dummy_weights: "7b", "7b-gqa", "tiny") come from service.model.dummy and carry
no vocabulary: the engine then takes token-id prompts only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from service.config import Config
from service.model.gguf_file import GGUFModel, open_gguf
from service.model.llama import LlamaModel
from service.model.registry import resolve_model_path

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    gguf_file: GGUFModel
    model: LlamaModel
    tokenizer: Any  # service.model.tokenizer.Tokenizer, or None (dummy weights without a vocabulary)
    chat_template: Any  # service.model.chat_template.ChatTemplate, or None
    backend: Any  # service.backends.base.Backend
    name: str  # model id for ListModels


def _gguf_for(config: Config) -> GGUFModel:
    if config.model.dummy_weights:
        from service.model.dummy import dummy_gguf_model
        return dummy_gguf_model(config.model.dummy_weights)
    return open_gguf(resolve_model_path(config.model.path, config.model.cache_dir))


def load_tokenizer(gguf_model: GGUFModel) -> tuple[Any, Any]:
    """(tokenizer, chat_template) from the file's metadata; (None, None) when the file carries no vocabulary."""
    if "tokenizer.ggml.tokens" not in gguf_model.metadata:
        return None, None
    from service.model.tokenizer import Tokenizer
    tokenizer = Tokenizer.from_gguf(gguf_model)
    try:
        from service.model.chat_template import ChatTemplate
    except ModuleNotFoundError:
        return tokenizer, None
    return tokenizer, ChatTemplate.from_gguf(gguf_model, tokenizer)


def limit_blas_threads(n: int) -> None:
    """Cap OpenBLAS/MKL threads for the NumPy backend (--blas-threads). Its matmuls are one gemv per row (for
    batch invariance). Measured on the 2-core machine (SmolLM2-135M decode step, same process, alternating):
    with the cores shared by other jobs, 136 ms with 1 thread vs 1141 ms with 2 (threads spin-wait); on idle
    cores, 68 ms with 1 vs 48-55 ms with 2. One thread is the default because a server's cores are shared
    with its own gRPC/HTTP threads."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it BLAS keeps its default thread count
        log.info("threadpoolctl not installed; BLAS thread count left at its default")
        return
    threadpool_limits(limits=n, user_api="blas")


def load_model(config: Config, progress: Callable[[int, int], None] | None = None) -> LoadedModel:
    gguf_model = _gguf_for(config)
    from service.backends.factory import create_backend  # pycuda, where present, is imported only there
    backend = create_backend(config.model.backend, config)
    if getattr(backend, "name", "") == "numpy":
        limit_blas_threads(config.model.blas_threads)
    if hasattr(backend, "reserve_weights"):  # CUDA: one device slab for all weights (no per-tensor rounding)
        backend.reserve_weights(gguf_model)
    model = LlamaModel(gguf_model, backend, progress)
    tokenizer, chat_template = load_tokenizer(gguf_model)
    name = config.model.name or (f"dummy-{config.model.dummy_weights}" if config.model.dummy_weights else gguf_model.name)
    return LoadedModel(gguf_model, model, tokenizer, chat_template, backend, name)
