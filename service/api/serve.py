"""`python -m service serve`: the gRPC server (grpc.aio), the OpenAI HTTP gateway and the metrics endpoint,
all in one process over one engine.

    running = await serve(config)          # binds (port 0 = pick), loads the model, returns when SERVING
    running.port, running.http_port        # the bound ports
    await running.stop()                   # health NOT_SERVING -> refuse new work -> drain (grace) -> free engine

While the model loads, the server already answers: health says NOT_SERVING and RPCs get UNAVAILABLE.
SIGTERM / SIGINT start the same graceful stop; Helm's terminationGracePeriodSeconds must exceed --grace-s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service import config as cfg
from service.api.core import ApiCore
from service.api.gen.llm.v1 import llm_service_pb2, llm_service_pb2_grpc
from service.api.metrics import Metrics
from service.api.servicer import LLMServicer

log = logging.getLogger(__name__)

SERVICE_NAME = llm_service_pb2.DESCRIPTOR.services_by_name["LLMService"].full_name  # "llm.v1.LLMService"


@dataclass
class RunningServer:
    config: cfg.Config
    grpc_server: grpc.aio.Server
    port: int  # bound gRPC port
    health: health.aio.HealthServicer
    core: ApiCore
    metrics: Metrics
    http_port: int | None = None
    metrics_port: int | None = None
    load_task: asyncio.Task | None = None
    owns_engine: bool = True  # False when the caller passed an engine in (it stays running after stop)
    _http: Any = None  # uvicorn.Server
    _http_task: asyncio.Task | None = None
    _stopped: bool = field(default=False)

    @property
    def engine(self) -> Any:
        return self.core.engine

    async def wait_loaded(self) -> None:
        if self.load_task is not None:
            await self.load_task

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful stop: health NOT_SERVING, new work UNAVAILABLE, running requests finish within the grace,
        then the servers stop and the engine frees its memory."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.config.server.grace_s if grace_s is None else grace_s
        end = time.monotonic() + grace
        await self.health.enter_graceful_shutdown()
        drained = await self.core.drain(grace)
        log.info("drain %s", "complete" if drained else "timed out; aborting what is left")
        if self._http is not None:
            self._http.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._http_task, timeout=max(1.0, end - time.monotonic()))
        await self.grpc_server.stop(max(0.0, end - time.monotonic()))
        if self.load_task is not None and not self.load_task.done():
            self.load_task.cancel()
        if self.engine is not None and self.owns_engine:
            await self.engine.shutdown(0.0)
        self.metrics.stop()


def _engine_gauges(core: ApiCore) -> dict[str, Any]:
    engine = core.engine
    if engine is None:
        return {}
    stats = engine.stats()
    kv = engine.core.cache.stats()
    return {"queue_depth": stats.get("waiting_requests", stats.get("waiting", 0)), "running": stats["running"],
            "slots_in_use": kv["slots_in_use"], "kv_bytes_in_use": kv["bytes_in_use"],
            "kv_bytes_allocated": kv["bytes_allocated"]}


def _bind_grpc(server: grpc.aio.Server, sc: cfg.ServerConfig) -> int:
    address = f"{sc.host}:{sc.port}"
    if sc.tls_cert:
        with open(sc.tls_key, "rb") as k, open(sc.tls_cert, "rb") as c:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        return server.add_secure_port(address, creds)
    return server.add_insecure_port(address)


async def _start_http(app: Any, sc: cfg.ServerConfig, port: int) -> tuple[Any, asyncio.Task, int]:
    import uvicorn

    class _Uvicorn(uvicorn.Server):
        """uvicorn without its own signal handling: this module owns SIGTERM and the shutdown order."""

        @contextlib.contextmanager
        def capture_signals(self):
            yield

    sock = socket.socket(socket.AF_INET6 if ":" in sc.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((sc.host, port))
    uv_config = uvicorn.Config(app, lifespan="off", log_level=sc.log_level.lower(), access_log=False,
                               timeout_graceful_shutdown=max(1, int(sc.grace_s)),
                               ssl_certfile=sc.tls_cert, ssl_keyfile=sc.tls_key)
    server = _Uvicorn(uv_config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # raises the start-up error
        await asyncio.sleep(0.01)
    return server, task, int(sock.getsockname()[1])


async def _load(running: RunningServer, engine: Any) -> None:
    if engine is None:
        from service.engine.engine import AsyncEngine
        engine = await asyncio.to_thread(AsyncEngine.from_config, running.config)
    elif callable(engine) and not hasattr(engine, "generate"):  # a factory: build it off the event loop
        engine = await asyncio.to_thread(engine)
    engine.start()
    running.core.engine = engine
    for name in ("", SERVICE_NAME):
        await running.health.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving %s on gRPC port %d", engine.model_name, running.port)


async def serve(config: cfg.Config, engine: Any = None, *, wait_loaded: bool = True,
                http_port: int | None = None, metrics_port: int | None = None) -> RunningServer:
    """Start everything; `engine` (an AsyncEngine, started or not, or a function returning one, called in a
    thread) replaces loading from the config and is not shut down by stop(). `http_port` / `metrics_port`
    override the config's (0 there means off; here None = the config's, 0 = pick a free port)."""
    sc = config.server
    core = ApiCore(None)
    metrics = Metrics(lambda: _engine_gauges(core))
    core.metrics = metrics
    options = [("grpc.max_send_message_length", sc.max_message_bytes),
               ("grpc.max_receive_message_length", sc.max_message_bytes)]
    server = grpc.aio.server(options=options)
    llm_service_pb2_grpc.add_LLMServiceServicer_to_server(LLMServicer(core, sc.api_keys, metrics), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    port = _bind_grpc(server, sc)
    await server.start()
    running = RunningServer(config, server, port, health_servicer, core, metrics, owns_engine=engine is None)
    http = sc.http_port if http_port is None else http_port
    if http_port is not None or sc.http_port:
        from service.api.gateway import create_app  # FastAPI only when the gateway is on
        running._http, running._http_task, running.http_port = await _start_http(
            create_app(core, sc.api_keys, metrics), sc, http)
    mport = sc.metrics_port if metrics_port is None else metrics_port
    if metrics_port is not None or sc.metrics_port:
        running.metrics_port = metrics.serve(mport, sc.host)
    running.load_task = asyncio.create_task(_load(running, engine))
    if wait_loaded:
        await running.load_task
    return running


# -- the subcommand ---------------------------------------------------------------------------------

def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("serve", help="run the gRPC server, the OpenAI HTTP gateway and /metrics",
                                   description=__doc__.splitlines()[0])
    cfg.add_arguments(parser)
    parser.set_defaults(run=run)


async def _main(config: cfg.Config) -> int:
    running = await serve(config, wait_loaded=False)
    log.info("gRPC on %s:%d, HTTP gateway on %s, metrics on %s (loading the model...)", config.server.host,
             running.port, running.http_port or "off", running.metrics_port or "off")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({stopper, running.load_task}, return_when=asyncio.FIRST_COMPLETED)
    if running.load_task in done and running.load_task.exception() is not None:
        stopper.cancel()
        await running.stop(0.0)
        raise running.load_task.exception()
    await stopper
    log.info("signal received: draining for up to %.1f s", config.server.grace_s)
    await running.stop()
    return 0


def run(args: argparse.Namespace) -> int:
    config = cfg.from_args(args)
    logging.basicConfig(level=config.server.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(_main(config))
