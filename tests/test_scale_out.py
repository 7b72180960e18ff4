"""Scale-out: a gRPC channel with the round_robin policy over the replicas' addresses (what the chart's headless
Service returns from DNS: one A record per ready pod, same port) spreads calls across replicas, while the
default pick_first sends them all to one. Two replicas on 127.0.0.1 and 127.0.0.2 share the test engine;
each counts its own requests in its own Prometheus registry.
"""

from __future__ import annotations

import json
import socket

import grpc

from service.api.gen.llm.v1 import llm_service_pb2_grpc, tokenize_pb2
from tests.conftest import make_test_config

HOSTS = ("127.0.0.1", "127.0.0.2")
CALLS = 24
ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def _port_free_on_all() -> int:
    """A port number that is free on every replica address."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((HOSTS[0], 0))
            port = probe.getsockname()[1]
        try:
            for host in HOSTS:
                with socket.socket() as s:
                    s.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no common free port")


def _served(running) -> float:
    value = running.metrics.registry.get_sample_value(
        "llm_requests_total", {"method": "Tokenize", "transport": "grpc", "code": "OK"})
    return value or 0.0


def _spread(target: str, options: list) -> list[float]:
    with grpc.insecure_channel(target, options=options) as channel:
        stub = llm_service_pb2_grpc.LLMServiceStub(channel)
        for i in range(CALLS):
            stub.Tokenize(tokenize_pb2.TokenizeRequest(prompt=f"call {i}"), timeout=30, wait_for_ready=True)


def test_round_robin_spreads_calls_across_replicas(llm_server, server_loop):
    from service.api.serve import serve

    port = _port_free_on_all()
    replicas = [server_loop.run(serve(make_test_config(server__host=host, server__port=port, server__http_port=0,
                                                       server__metrics_port=0), engine=llm_server.engine))
                for host in HOSTS]
    try:
        assert [r.port for r in replicas] == [port, port]
        target = "ipv4:" + ",".join(f"{host}:{port}" for host in HOSTS)  # the resolver output of dns:///

        before = [_served(r) for r in replicas]
        _spread(target, [("grpc.service_config", ROUND_ROBIN)])
        rr = [_served(r) - b for r, b in zip(replicas, before)]
        assert sum(rr) == CALLS
        assert min(rr) >= CALLS // 4, f"round_robin left a replica idle: {rr}"

        before = [_served(r) for r in replicas]  # the SDK's option does the same
        from service.client import Client
        with Client(target, load_balancing="round_robin", timeout=30) as client:
            for i in range(CALLS):
                client.tokenize(f"call {i}")
        sdk = [_served(r) - b for r, b in zip(replicas, before)]
        assert sum(sdk) == CALLS and min(sdk) >= CALLS // 4, f"SDK round_robin left a replica idle: {sdk}"

        before = [_served(r) for r in replicas]
        _spread(target, [])  # gRPC's default policy: pick_first
        pf = [_served(r) - b for r, b in zip(replicas, before)]
        assert sorted(pf) == [0, CALLS], f"pick_first should pin one replica: {pf}"
    finally:
        for r in replicas:  # stop only the gRPC servers: the engine belongs to the shared test server
            server_loop.run(r.grpc_server.stop(0))
