"""Model loading from a Config: GGUF file (or dummy weights) -> backend -> LlamaModel + tokenizer + chat template.

Backend choice (config.model.backend): "numpy" (reference, host), "cuda" (`service.backends.cuda_backend`;
ConfigError when no GPU is usable), "auto" (cuda when importable and a
GPU is usable, else numpy).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any, Callable

from service.config import Config
from service.errors import ConfigError, LLMError
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


def make_backend(kind: str, config: Config | None = None) -> Any:
    """The backend named by `kind` ("auto" | "numpy" | "cuda")."""
    if kind not in ("auto", "numpy", "cuda"):
        raise ConfigError(f"--backend must be auto, numpy or cuda, not {kind!r}")
    if kind in ("auto", "cuda"):
        try:
            cuda_backend = importlib.import_module("service.backends.cuda_backend")
            kwargs = {}
            if config is not None and config.model.kernel_cache_dir:
                kwargs["kernel_cache_dir"] = config.model.kernel_cache_dir
            try:
                return cuda_backend.CudaBackend(**kwargs)
            except TypeError:
                return cuda_backend.CudaBackend()
        except (ImportError, LLMError, OSError, RuntimeError) as exc:
            if kind == "cuda":
                raise ConfigError(f"--backend cuda: no usable GPU ({type(exc).__name__}: {exc})") from None
            log.info("no usable CUDA backend (%s); using numpy", exc)
    from service.backends.numpy_backend import NumpyBackend
    return NumpyBackend()


def _gguf_for(config: Config) -> GGUFModel:
    if config.model.dummy_weights:
        try:
            dummy = importlib.import_module("service.model.dummy")
        except ModuleNotFoundError:
            raise ConfigError("--dummy-weights needs service.model.dummy, which is not installed") from None
        for fn in ("dummy_gguf", "build_dummy", "load_dummy", "make_dummy"):
            if hasattr(dummy, fn):
                return getattr(dummy, fn)(config.model.dummy_weights)
        raise ConfigError("service.model.dummy has no dummy-model builder")
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


def load_model(config: Config, progress: Callable[[int, int], None] | None = None) -> LoadedModel:
    gguf_model = _gguf_for(config)
    backend = make_backend(config.model.backend, config)
    model = LlamaModel(gguf_model, backend, progress)
    tokenizer, chat_template = load_tokenizer(gguf_model)
    name = config.model.name or (f"dummy-{config.model.dummy_weights}" if config.model.dummy_weights else gguf_model.name)
    return LoadedModel(gguf_model, model, tokenizer, chat_template, backend, name)
