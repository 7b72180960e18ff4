"""The server around the API: Prometheus metrics, graceful drain, TLS, flags/env of `serve`, and SIGTERM on a
real `python -m service serve` process."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from service.api.gen.llm.v1 import completions_pb2, llm_service_pb2_grpc, models_pb2
from service.client import Client, UnavailableError
from tests.conftest import make_test_config, start_server

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(url, timeout=30).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_requests_and_latencies(llm_server):
    before = scrape(llm_server.metrics_url)
    ok_key = ("llm_requests_total", (("code", "OK"), ("method", "CreateCompletion"), ("transport", "grpc")))
    bad_key = ("llm_requests_total", (("code", "INVALID_ARGUMENT"), ("method", "CreateCompletion"),
                                      ("transport", "http")))
    with Client(llm_server.target) as c:
        out = c.completions.create(prompt="Hi", max_tokens=3, temperature=0, ignore_eos=True)
    r = httpx.post(f"{llm_server.http_base}/completions", json={"prompt": "Hi", "max_tokens": -1}, timeout=30)
    assert r.status_code == 400
    after = scrape(llm_server.metrics_url)
    assert after[ok_key] == before.get(ok_key, 0) + 1
    assert after[bad_key] == before.get(bad_key, 0) + 1
    ttft = ("llm_time_to_first_token_seconds_count", ())
    itl = ("llm_inter_token_latency_seconds_count", ())
    assert after[ttft] == before[ttft] + 1
    assert after[itl] >= before[itl] + 1  # 3 tokens: at least one gap between tokens
    assert after[("llm_generated_tokens_total", ())] == before[("llm_generated_tokens_total", ())] + \
        out.usage.completion_tokens
    for gauge in ("llm_queue_depth", "llm_kv_bytes_in_use", "llm_kv_bytes_allocated", "llm_slots_in_use"):
        assert (gauge, ()) in after
    assert after[("llm_kv_bytes_in_use", ())] == 0  # nothing running now


def test_drain_finishes_running_streams_and_refuses_new_work(llm_server, server_loop):
    draining = start_server(server_loop, make_test_config(), engine=llm_server.engine)
    channel = grpc.insecure_channel(draining.target)
    stub = llm_service_pb2_grpc.LLMServiceStub(channel)
    stream = stub.StreamCompletion(completions_pb2.CompletionRequest(prompt="Hi", max_tokens=4, temperature=0,
                                                                     ignore_eos=True), timeout=120)
    first = next(stream)
    stopping = asyncio.run_coroutine_threadsafe(draining.running.stop(60.0), server_loop.loop)
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 10
    while health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with pytest.raises(grpc.RpcError) as info:
        stub.ListModels(models_pb2.ListModelsRequest(), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    rest = list(stream)  # the in-flight stream runs to its end
    finals = [c.choices[0].finish_reason for c in [first, *rest] if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    stopping.result(60)
    channel.close()
    assert llm_server.engine.health() == "SERVING"  # a shared engine is not shut down by another server's stop


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI to make a certificate")
def test_tls(llm_server, server_loop, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    secure = start_server(server_loop, make_test_config(server__tls_cert=str(cert), server__tls_key=str(key)),
                          engine=llm_server.engine)
    try:
        with Client(secure.target, tls=True, root_certificates=cert.read_bytes(), server_name="localhost",
                    max_retries=0, timeout=10) as c:
            assert c.models.list().data[0].id == llm_server.engine.model_name
        with Client(secure.target, max_retries=0, timeout=3) as plain:
            with pytest.raises(UnavailableError):  # a plaintext client cannot talk to the TLS port
                plain.models.list()
        r = httpx.get(f"https://127.0.0.1:{secure.running.http_port}/v1/models",
                      verify=ssl.create_default_context(cafile=str(cert)), timeout=10)
        assert r.status_code == 200  # the gateway serves the same certificate
    finally:
        secure.stop(0.5)


def test_serve_flags_have_environment_equivalents():
    from service import config as cfg
    from service.__main__ import build_parser
    args = build_parser().parse_args(["serve", "--kv-slots", "2", "--http-port", "0"])
    config = cfg.from_args(args, environ={"LLM_PORT": "6001", "LLM_KV_SLOTS": "7", "LLM_API_KEYS": "a,b"})
    assert config.cache.slots == 2  # the flag wins over LLM_KV_SLOTS
    assert config.server.port == 6001 and config.server.api_keys == ("a", "b") and config.server.http_port == 0
    defaults = cfg.from_args(build_parser().parse_args(["serve"]), environ={})
    assert (defaults.server.host, defaults.server.port, defaults.server.http_port) == ("0.0.0.0", 50051, 8000)
    assert defaults.model.path is None  # the default model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sigterm_drains_a_real_serve_process():
    port, http_port = _free_port(), _free_port()
    env = {**os.environ, "PYTHONPATH": REPO, "LLM_BACKEND": "numpy", "LLM_KV_SLOTS": "2",
           "LLM_MAX_POSITIONS": "256", "LLM_METRICS_PORT": "0", "LLM_GRACE_S": "60", "LLM_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--http-port", str(http_port)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 240
        while True:
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else ""
            time.sleep(0.2)
        stub = llm_service_pb2_grpc.LLMServiceStub(channel)
        stream = stub.StreamCompletion(completions_pb2.CompletionRequest(prompt="Hi", max_tokens=4, temperature=0,
                                                                         ignore_eos=True), timeout=120)
        first = next(stream)
        proc.send_signal(signal.SIGTERM)
        rest = list(stream)
        assert [c.choices[0].finish_reason for c in [first, *rest] if c.choices
                and c.choices[0].finish_reason] == ["length"]
        assert proc.wait(timeout=60) == 0
        channel.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
