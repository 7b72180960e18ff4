"""Configuration: one frozen dataclass tree, filled from CLI flags with environment-variable equivalents.

This is the only module that reads the environment. Every flag `--some-flag` has the variable
`LLM_SOME_FLAG`; an explicit flag wins over the variable, the variable over the default.
The Helm chart sets the same variables.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from service.errors import ConfigError

ENV_PREFIX = "LLM_"


@dataclass(frozen=True)
class ModelConfig:
    path: str | None = None  # GGUF file; None = the default model from the model cache
    name: str | None = None  # id reported by ListModels; default: the file's stem
    backend: str = "auto"  # auto | numpy | cuda
    dummy_weights: str | None = None  # e.g. "7b", "7b-gqa": random weights in the Q4_K_M layout, no file
    cache_dir: str | None = None  # model cache for `pull`; default ~/.cache/llm-grpc-server/models
    kernel_cache_dir: str | None = None  # compiled CUDA modules
    blas_threads: int = 1  # NumPy backend: BLAS threads per gemv (1 is robust when cores are shared)
    decode_activations: str = "int8x2"  # CUDA decode matmuls: int8 (dp4a, fastest) | int8x2 (+ residual pass) | f16


@dataclass(frozen=True)
class CacheConfig:
    max_positions: int = 2048  # per sequence: the StreamingKVCache ring size (sinks + window)
    sink_tokens: int = 4  # StreamingLLM attention sinks kept forever (0 = plain sliding window)
    slots: int = 8  # sequences the arena holds at once
    kv_dtype: str = "f16"  # f16 | q8 (block-scaled int8, half the bytes)
    memory_budget_mb: float | None = None  # if set, slots = as many as fit in this budget


@dataclass(frozen=True)
class EngineConfig:
    max_running: int = 8  # cap on sequences decoding at once (<= cache slots)
    max_waiting: int = 64  # bounded waiting queue; beyond it submit() raises Overloaded
    step_token_budget: int = 512  # tokens per engine step (decode rows + prefill chunk rows)
    prefill_chunk: int | None = None  # prompt tokens per chunk; None = auto (64 on NumPy, else what fits the budget)
    max_tokens_default: int = 256  # max_tokens when a request leaves it unset
    allow_streaming_past_context: bool = True  # generation may run past max_positions (ring + sinks)
    retry_after_s: float = 1.0  # hint carried by an overload error
    # greedy decode steps queued one ahead (the host handles step n while the device runs n + 1): auto = where
    # the backend launches asynchronously (CUDA) | on | off
    overlap_decode: str = "auto"


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 50051  # gRPC
    http_port: int = 8000  # OpenAI HTTP gateway (0 = off)
    metrics_port: int = 9090  # Prometheus metrics (0 = off)
    api_keys: tuple[str, ...] = ()  # accepted `authorization: Bearer <key>`; empty = no auth
    tls_cert: str | None = None
    tls_key: str | None = None
    max_message_bytes: int = 16 * 1024 * 1024
    grace_s: float = 20.0  # SIGTERM drain grace; Helm's terminationGracePeriodSeconds must exceed it
    log_level: str = "INFO"


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    server: ServerConfig = field(default_factory=ServerConfig)


# (flag, section, field, type, help). One table drives argparse, the environment and the docs.
_OPTIONS: list[tuple[str, str, str, Any, str]] = [
    ("--model", "model", "path", str, "GGUF model file (default: the pulled default model)"),
    ("--model-name", "model", "name", str, "model id reported to clients"),
    ("--backend", "model", "backend", str, "auto | numpy | cuda"),
    ("--dummy-weights", "model", "dummy_weights", str, "random Q4_K_M weights at a named shape (7b, 7b-gqa)"),
    ("--model-cache-dir", "model", "cache_dir", str, "where `pull` puts models"),
    ("--kernel-cache-dir", "model", "kernel_cache_dir", str, "where compiled CUDA modules are cached"),
    ("--blas-threads", "model", "blas_threads", int, "NumPy backend BLAS threads (1 = robust on shared cores)"),
    ("--decode-activations", "model", "decode_activations", str, "CUDA decode matmul activations: int8 | int8x2 | f16"),
    ("--max-positions", "cache", "max_positions", int, "KV positions per sequence (ring size)"),
    ("--sink-tokens", "cache", "sink_tokens", int, "attention-sink positions kept forever"),
    ("--kv-slots", "cache", "slots", int, "sequences the KV arena holds"),
    ("--kv-dtype", "cache", "kv_dtype", str, "f16 | q8"),
    ("--kv-budget-mb", "cache", "memory_budget_mb", float, "size the KV arena by a byte budget"),
    ("--max-running", "engine", "max_running", int, "sequences decoding at once"),
    ("--max-waiting", "engine", "max_waiting", int, "waiting-queue bound"),
    ("--step-token-budget", "engine", "step_token_budget", int, "tokens per engine step"),
    ("--prefill-chunk", "engine", "prefill_chunk", int, "prompt tokens per prefill chunk (default: auto)"),
    ("--max-tokens-default", "engine", "max_tokens_default", int, "max_tokens when unset"),
    ("--overlap-decode", "engine", "overlap_decode", str, "queue greedy decode steps one ahead: auto | on | off"),
    ("--host", "server", "host", str, "bind address"),
    ("--port", "server", "port", int, "gRPC port"),
    ("--http-port", "server", "http_port", int, "OpenAI HTTP gateway port (0 = off)"),
    ("--metrics-port", "server", "metrics_port", int, "Prometheus port (0 = off)"),
    ("--api-keys", "server", "api_keys", "csv", "comma-separated accepted API keys"),
    ("--tls-cert", "server", "tls_cert", str, "PEM certificate chain"),
    ("--tls-key", "server", "tls_key", str, "PEM private key"),
    ("--max-message-bytes", "server", "max_message_bytes", int, "gRPC max message size"),
    ("--grace-s", "server", "grace_s", float, "drain grace on SIGTERM, seconds"),
    ("--log-level", "server", "log_level", str, "DEBUG | INFO | WARNING | ERROR"),
]


def env_name(flag: str) -> str:
    """`--kv-slots` -> `LLM_KV_SLOTS`."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def add_arguments(parser: argparse.ArgumentParser, sections: Sequence[str] = ("model", "cache", "engine", "server")) -> None:
    """Add the flags of the given sections; defaults are left None so the environment can fill them."""
    for flag, section, _name, kind, help_text in _OPTIONS:
        if section not in sections:
            continue
        parser.add_argument(flag, type=str if kind == "csv" else kind, default=None,
                            help=f"{help_text} [env {env_name(flag)}]")


def _parse_value(kind: Any, raw: str) -> Any:
    if kind == "csv":
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return kind(raw)


def from_args(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None,
              **overrides: Any) -> Config:
    """Build the Config: flag > environment variable > default. `overrides` use "section.field" keys
    written with "__" (e.g. cache__slots=2), for tests and library use."""
    environ = os.environ if environ is None else environ
    values: dict[str, dict[str, Any]] = {"model": {}, "cache": {}, "engine": {}, "server": {}}
    for flag, section, name, kind, _help in _OPTIONS:
        dest = flag.lstrip("-").replace("-", "_")
        raw = getattr(args, dest, None) if args is not None else None
        if raw is None and env_name(flag) in environ and environ[env_name(flag)] != "":
            raw = environ[env_name(flag)]
        if raw is None:
            continue
        values[section][name] = _parse_value(kind, raw) if isinstance(raw, str) else raw
    for key, value in overrides.items():
        section, name = key.split("__", 1)
        values[section][name] = value
    config = Config(
        model=ModelConfig(**values["model"]),
        cache=CacheConfig(**values["cache"]),
        engine=EngineConfig(**values["engine"]),
        server=ServerConfig(**values["server"]),
    )
    validate(config)
    return config


def validate(config: Config) -> None:
    """Reject contradictory settings at start-up with a one-line reason."""
    c, e = config.cache, config.engine
    problems = []
    if config.model.backend not in ("auto", "numpy", "cuda"):
        problems.append(f"--backend must be auto, numpy or cuda, not {config.model.backend!r}")
    if config.model.blas_threads < 1:
        problems.append("--blas-threads must be at least 1")
    if config.model.decode_activations not in ("int8", "int8x2", "f16"):
        problems.append(f"--decode-activations must be int8, int8x2 or f16, not {config.model.decode_activations!r}")
    if c.kv_dtype not in ("f16", "q8"):
        problems.append(f"--kv-dtype must be f16 or q8, not {c.kv_dtype!r}")
    if c.max_positions < 16:
        problems.append("--max-positions must be at least 16")
    if not 0 <= c.sink_tokens < c.max_positions // 2:
        problems.append("--sink-tokens must be >= 0 and below half of --max-positions")
    if e.overlap_decode not in ("auto", "on", "off"):
        problems.append(f"--overlap-decode must be auto, on or off, not {e.overlap_decode!r}")
    if e.prefill_chunk is not None and e.prefill_chunk < 1:
        problems.append("--prefill-chunk must be positive")
    if c.slots < 1 or e.max_running < 1 or e.max_waiting < 0 or e.step_token_budget < 1:
        problems.append("--kv-slots, --max-running and --step-token-budget must be positive")
    if bool(config.server.tls_cert) != bool(config.server.tls_key):
        problems.append("--tls-cert and --tls-key go together")
    if problems:
        raise ConfigError("; ".join(problems))


def replace(config: Config, **changes: Any) -> Config:
    """Copy with "section__field" changes, e.g. replace(cfg, cache__slots=2)."""
    sections: dict[str, dict[str, Any]] = {}
    for key, value in changes.items():
        section, name = key.split("__", 1)
        sections.setdefault(section, {})[name] = value
    out = dataclasses.replace(config, **{
        s: dataclasses.replace(getattr(config, s), **kv) for s, kv in sections.items()})
    validate(out)
    return out
