"""Shared fixtures: a real server (the default SmolLM2 model on the NumPy backend) on free loopback ports.

The server runs in its own thread with its own asyncio loop, session-scoped, so every test file reuses one
loaded model:

    def test_x(llm_server):
        llm_server.target        # "127.0.0.1:<grpc port>"
        llm_server.http_base     # "http://127.0.0.1:<port>/v1"  (OpenAI gateway)
        llm_server.metrics_url   # "http://127.0.0.1:<port>/metrics"
        llm_server.engine        # the AsyncEngine
        llm_server.run(coro)     # run a coroutine on the server's loop and wait for it

`start_server(loop_thread, config, engine=...)` starts another server (e.g. with API keys) that shares the
already loaded engine. Settings are small so the suite stays fast on 2 CPU cores: keep generations to a few
tokens per test.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass
from typing import Any

import pytest

from service import config as cfg

# slots 4, ring 512, at most 2 requests waiting (so overload is reachable with a handful of requests)
TEST_SETTINGS = dict(model__backend="numpy", cache__slots=4, cache__max_positions=512, cache__sink_tokens=4,
                     engine__max_running=4, engine__max_waiting=2, engine__max_tokens_default=8,
                     engine__retry_after_s=0.25, server__host="127.0.0.1", server__port=0, server__http_port=0,
                     server__metrics_port=0, server__grace_s=2.0, server__log_level="WARNING")


@contextlib.contextmanager
def kernel_launches(be: Any) -> Any:
    """The names of the kernels a CudaBackend launches inside the block, in order, as (those its ops launch, those
    its matmul launcher takes through CudaMatmul._fn), filled as they launch."""
    ops: list[str] = []
    matmuls: list[str] = []
    real_launch, real_fn = be._launch, be.mm._fn
    be._launch = lambda module, name, *a: (ops.append(name), real_launch(module, name, *a))[1]
    be.mm._fn = lambda module, name, sig: (matmuls.append(name), real_fn(module, name, sig))[1]
    try:
        yield ops, matmuls
    finally:
        be._launch, be.mm._fn = real_launch, real_fn


def make_test_config(**changes: Any) -> cfg.Config:
    return cfg.from_args(None, environ={}, **{**TEST_SETTINGS, **changes})


class LoopThread:
    """An asyncio loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-server-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 120.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@dataclass
class ServerHandle:
    running: Any  # service.api.serve.RunningServer
    loop_thread: LoopThread

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.running.http_port}/v1"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.running.metrics_port}/metrics"

    @property
    def engine(self) -> Any:
        return self.running.engine

    def run(self, coro: Any, timeout: float = 120.0) -> Any:
        return self.loop_thread.run(coro, timeout)

    def stop(self, grace_s: float | None = None) -> None:
        self.run(self.running.stop(grace_s))


def start_server(loop_thread: LoopThread, config: cfg.Config, engine: Any = None, http: bool = True,
                 **kwargs: Any) -> ServerHandle:
    """Start a server on the loop thread (free ports); `engine` shares an already loaded model; http=False
    leaves the OpenAI gateway off (no FastAPI needed)."""
    from service.api.serve import serve
    metrics = 0 if config.server.metrics_port == 0 else None
    if not http:
        config = cfg.replace(config, server__http_port=0)
    running = loop_thread.run(serve(config, engine=engine, http_port=0 if http else None, metrics_port=metrics,
                                    **kwargs))
    return ServerHandle(running, loop_thread)


@pytest.fixture(scope="session")
def server_loop() -> Any:
    loop_thread = LoopThread()
    yield loop_thread
    loop_thread.close()


def pytest_addoption(parser: Any) -> None:
    parser.addoption("--backend", default="numpy", choices=("numpy", "cuda"),
                     help="backend of the shared test server (cuda: the API tests on the GPU machine)")


@pytest.fixture(scope="session")
def llm_server(server_loop: LoopThread, request: Any) -> Any:
    """The shared server: default model, TEST_SETTINGS, the NumPy backend unless --backend cuda. The OpenAI
    gateway runs when FastAPI is installed (the GPU machine has none: gRPC only there)."""
    import importlib.util
    http = importlib.util.find_spec("fastapi") is not None
    handle = start_server(server_loop, make_test_config(model__backend=request.config.getoption("--backend")),
                          http=http)
    yield handle
    handle.stop(1.0)
