"""Plot locust CSV results: latency percentiles (TTFT, inter-token, whole stream) and throughput against users.

Reads the `<prefix>_stats.csv` (+ `_stats_history.csv` for the user count) of one or more headless locust runs
made with loadtest/locustfile.py, one run per user count, and writes one PNG (matplotlib, Agg backend):

    python loadtest/plot.py loadtest/out/u1 loadtest/out/u2 loadtest/out/u4 -o loadtest/out/latency.png

A run's user count is the largest "User Count" in its stats history, else the digits of its prefix (u4 -> 4).
Prints the table it plots, one line per run.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

PERCENTILES = ("50%", "90%", "99%")
SERIES = (("time_to_first_token", "time to first token"), ("inter_token_latency", "inter-token latency"),
          ("StreamChatCompletion", "whole stream"))


@dataclass(frozen=True)
class Run:
    users: int
    rows: dict[str, dict[str, str]]  # Name -> its row of _stats.csv

    def percentile(self, name: str, pct: str) -> float:
        value = self.rows.get(name, {}).get(pct, "N/A")
        return float(value) if value not in ("", "N/A") else float("nan")

    def number(self, name: str, column: str) -> float:
        value = self.rows.get(name, {}).get(column, "")
        return float(value) if value not in ("", "N/A") else float("nan")

    @property
    def stream_tokens_per_s(self) -> float:
        """Aggregate decode throughput: completion tokens per stream x streams per second."""
        return self.number("StreamChatCompletion", "Average Content Size") * self.number("StreamChatCompletion", "Requests/s")


def read_run(prefix: str) -> Run:
    stats_path = f"{prefix}_stats.csv"
    if not os.path.exists(stats_path):
        raise FileNotFoundError(f"{stats_path} not found (run locust with --csv {prefix})")
    with open(stats_path, newline="") as fh:
        rows = {row["Name"]: row for row in csv.DictReader(fh)}
    users = 0
    history = f"{prefix}_stats_history.csv"
    if os.path.exists(history):
        with open(history, newline="") as fh:
            users = max((int(row["User Count"]) for row in csv.DictReader(fh) if row["User Count"].isdigit()), default=0)
    if users == 0:
        digits = re.findall(r"\d+", os.path.basename(prefix))
        if not digits:
            raise ValueError(f"cannot tell the user count of {prefix}")
        users = int(digits[-1])
    return Run(users, rows)


def plot(runs: list[Run], out: str) -> None:
    runs = sorted(runs, key=lambda r: r.users)
    users = [r.users for r in runs]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    for ax, (name, title) in zip(axes.flat, SERIES):
        for pct in PERCENTILES:
            ax.plot(users, [r.percentile(name, pct) for r in runs], marker="o", label=f"p{pct.rstrip('%')}")
        ax.set_title(title)
        ax.set_xlabel("concurrent users")
        ax.set_ylabel("ms")
        ax.grid(True, alpha=0.3)
        ax.legend()
    ax = axes.flat[3]
    ax.plot(users, [r.stream_tokens_per_s for r in runs], marker="o", label="all streams (tokens/s)")
    ax.plot(users, [r.number("tokens_per_s", "Average Response Time") for r in runs], marker="s",
            label="per stream, mean (tokens/s)")
    ax.set_title("decode throughput")
    ax.set_xlabel("concurrent users")
    ax.set_ylabel("tokens / s")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.suptitle("llm-grpc-server: StreamChatCompletion under load (locust)")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefixes", nargs="+", help="--csv prefixes of locust runs")
    parser.add_argument("-o", "--out", default="loadtest/out/latency.png")
    args = parser.parse_args(argv)
    runs = [read_run(p) for p in args.prefixes]
    print(f"{'users':>5} {'reqs':>6} {'fails':>5} {'ttft p50':>9} {'ttft p99':>9} {'itl p50':>8} {'itl p99':>8} "
          f"{'tok/s all':>9}")
    for r in sorted(runs, key=lambda r: r.users):
        s = "StreamChatCompletion"
        print(f"{r.users:>5} {r.number(s, 'Request Count'):>6.0f} {r.number(s, 'Failure Count'):>5.0f} "
              f"{r.percentile('time_to_first_token', '50%'):>9.0f} {r.percentile('time_to_first_token', '99%'):>9.0f} "
              f"{r.percentile('inter_token_latency', '50%'):>8.0f} {r.percentile('inter_token_latency', '99%'):>8.0f} "
              f"{r.stream_tokens_per_s:>9.2f}")
    plot(runs, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
