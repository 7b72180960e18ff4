"""Prometheus metrics of the API (prometheus-client): request counts by status, time to first token,
inter-token latency, and gauges read from the engine at scrape time (queue depth, KV bytes, slots).

Each server gets its own CollectorRegistry, so several servers (tests) can live in one process.
"""

from __future__ import annotations

from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class _EngineGauges:
    """A custom collector: reads the engine's stats() when Prometheus scrapes, so it is never stale."""

    def __init__(self, read_stats: Callable[[], dict[str, Any]]):
        self._read = read_stats

    def collect(self):  # noqa: D401 - prometheus-client collector protocol
        try:
            stats = self._read()
        except Exception:  # noqa: BLE001 - a scrape during start-up or shutdown shows nothing rather than fail
            return
        for key, help_text in (("queue_depth", "requests waiting for a KV slot"),
                               ("running", "sequences decoding now"),
                               ("kv_bytes_in_use", "KV cache bytes holding valid entries"),
                               ("kv_bytes_allocated", "KV cache bytes allocated"),
                               ("slots_in_use", "KV slots held by live sequences")):
            if key in stats:
                yield GaugeMetricFamily(f"llm_{key}", help_text, value=float(stats[key]))


class Metrics:
    def __init__(self, read_engine_stats: Callable[[], dict[str, Any]] | None = None):
        self.registry = CollectorRegistry()
        self.requests = Counter("llm_requests", "finished requests by method, transport and status code",
                                ["method", "transport", "code"], registry=self.registry)
        self.ttft = Histogram("llm_time_to_first_token_seconds", "request arrival to its first generated token",
                              buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.inter_token = Histogram("llm_inter_token_latency_seconds", "time between a choice's tokens",
                                     buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.generated_tokens = Counter("llm_generated_tokens", "completion tokens produced",
                                        registry=self.registry)
        self.prompt_tokens = Counter("llm_prompt_tokens", "prompt tokens processed", registry=self.registry)
        if read_engine_stats is not None:
            self.registry.register(_EngineGauges(read_engine_stats))
        self._http: Any = None

    def count(self, method: str, transport: str, code: str) -> None:
        self.requests.labels(method=method, transport=transport, code=code).inc()

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Start the /metrics HTTP endpoint in a daemon thread; return the bound port (port 0 picks one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return int(server.server_port)

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
