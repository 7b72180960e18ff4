"""Locust smoke run: the headless, bounded command of loadtest/README.md (2 users, 20 s) against the shared
NumPy server, then loadtest/plot.py on its CSV. Checks locust's own accounting against the server's
independent Prometheus counters and the invariants between the recorded events.

--stop-timeout lets the streams in flight at --run-time finish (so each user records at least one), which
keeps the check meaningful on a loaded 2-core CI machine; the whole run stays bounded by the timeout.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The shared test server queues at most 2 waiting requests (its overload tests need a small queue): with more
# users than that, all of them submitting within one slow engine step is overload, which the server rightly
# refuses (RESOURCE_EXHAUSTED) and locust counts as a failure. 2 users stay inside the queue bound.
USERS = 2
MAX_TOKENS = 4


def scrape(url: str) -> dict[str, float]:
    """Prometheus text -> {"name{labels}": value} for the server's request and token counters."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^(llm_requests_total\{[^}]*\}|llm_generated_tokens_total)\s+(\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def stream_ok_requests(metrics: dict[str, float]) -> float:
    return sum(v for k, v in metrics.items()
               if k.startswith("llm_requests_total") and 'method="StreamChatCompletion"' in k
               and 'transport="grpc"' in k and 'code="OK"' in k)


def wait_idle(engine, timeout_s: float = 120.0) -> None:
    """The shared server also serves other tests' requests (short deadlines, cancels); start from idle so
    its small test queue (2 waiting) is this run's alone."""
    end = time.monotonic() + timeout_s
    while engine.stats()["requests"] and time.monotonic() < end:
        time.sleep(0.1)
    assert not engine.stats()["requests"], engine.stats()


@pytest.mark.slow
def test_locust_headless_smoke_and_plot(llm_server, tmp_path):
    wait_idle(llm_server.engine)
    before = scrape(llm_server.metrics_url)
    prefix = str(tmp_path / f"u{USERS}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "locust", "-f", os.path.join(ROOT, "loadtest", "locustfile.py"), "--headless",
           "-u", str(USERS), "-r", str(USERS), "--run-time", "20s", "--stop-timeout", "120",
           "--host", llm_server.target, "--csv", prefix, "--only-summary", "--max-tokens", str(MAX_TOKENS)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]  # locust exits 1 on any failure
    after = scrape(llm_server.metrics_url)

    with open(f"{prefix}_stats.csv", newline="") as fh:
        rows = {row["Name"]: row for row in csv.DictReader(fh)}
    streams = rows["StreamChatCompletion"]
    n = int(streams["Request Count"])
    assert n >= USERS and int(streams["Failure Count"]) == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    tokens_per_stream = float(streams["Average Content Size"])
    assert 1 <= tokens_per_stream <= MAX_TOKENS
    # every finished stream reported a TTFT; a stream of t tokens has at most t - 1 inter-token gaps
    assert int(rows["time_to_first_token"]["Request Count"]) == n
    gaps = int(rows["inter_token_latency"]["Request Count"])
    assert 0 < gaps <= round(n * tokens_per_stream) - n
    # the first token comes before the stream's end, and a gap is shorter than a whole stream
    assert float(rows["time_to_first_token"]["Average Response Time"]) < float(streams["Average Response Time"])
    assert float(rows["inter_token_latency"]["Max Response Time"]) < float(streams["Max Response Time"])
    assert float(rows["tokens_per_s"]["Average Response Time"]) > 0

    # the server's own counters saw at least what locust recorded (it may also have seen streams that
    # locust cancelled at --run-time, which locust does not record)
    assert stream_ok_requests(after) - stream_ok_requests(before) >= n
    generated = after["llm_generated_tokens_total"] - before.get("llm_generated_tokens_total", 0.0)
    assert generated >= round(n * tokens_per_stream)

    png = tmp_path / "latency.png"
    plot = subprocess.run([sys.executable, os.path.join(ROOT, "loadtest", "plot.py"), prefix, "-o", str(png)],
                          capture_output=True, text=True, timeout=120)
    assert plot.returncode == 0, plot.stderr
    import matplotlib.image

    image = matplotlib.image.imread(str(png))  # (height, width, channels)
    assert image.shape[0] >= 400 and image.shape[1] >= 600 and image.std() > 0  # a drawn figure, not blank
    assert f"{USERS:>5} {n:>6}" in plot.stdout  # the printed table has this run's user and request counts
