"""Run the locust gRPC user headless at several user counts (one bounded run each), then plot the percentiles.

    python loadtest/sweep.py --host 127.0.0.1:50051 --users 1 2 4 8 --run-time 60s --max-tokens 32

Each run is `locust --headless -u N -r N --run-time T --csv <out>/u<N>` (see loadtest/README.md); results land
in <out> (default loadtest/out): the locust CSVs of every run and latency.png from loadtest/plot.py.
Exit status: 0 when every run passed (locust exits 1 if any request failed), else the first non-zero.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def locust_command(host: str, users: int, run_time: str, prefix: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", os.path.join(HERE, "locustfile.py"), "--headless",
            "-u", str(users), "-r", str(users), "--run-time", run_time, "--stop-timeout", "30",
            "--host", host, "--csv", prefix, "--only-summary", *extra]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True, help="gRPC target, e.g. 127.0.0.1:50051")
    parser.add_argument("--users", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--run-time", default="60s")
    parser.add_argument("--out", default=os.path.join(HERE, "out"))
    parser.add_argument("--max-tokens", type=int, default=32)
    args, extra = parser.parse_known_args(argv)  # anything else goes to locust (e.g. --api-key)
    os.makedirs(args.out, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    status = 0
    prefixes = []
    for users in args.users:
        prefix = os.path.join(args.out, f"u{users}")
        cmd = locust_command(args.host, users, args.run_time, prefix, ["--max-tokens", str(args.max_tokens), *extra])
        print("$", " ".join(cmd), flush=True)
        rc = subprocess.run(cmd, env=env).returncode
        status = status or rc
        prefixes.append(prefix)
    plot = subprocess.run([sys.executable, os.path.join(HERE, "plot.py"), *prefixes,
                           "-o", os.path.join(args.out, "latency.png")])
    return status or plot.returncode


if __name__ == "__main__":
    sys.exit(main())
