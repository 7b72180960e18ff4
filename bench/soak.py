"""Soak, fault and fuzz run against a real server on loopback; bounded in time and count, stops by itself.

    python bench/soak.py                      # 10 minutes, 16-32 streams, >= 10,000 fuzzed requests
    python bench/soak.py --duration-s 120 --fuzz-requests 1000 --warmup-s 30     # a short rehearsal

It starts `python -m service serve` (NumPy backend unless --backend, 127.0.0.1, free ports) and then:

1. load: 16-32 concurrent asyncio workers (the target moves every 30 s) mixing full streams, client cancels
   (after k chunks or a random delay), short deadlines, malformed requests and unary calls; at the end of
   a phase, calls still running after --stop-wait-s are cancelled;
   fuzz: child processes send hypothesis-generated requests over every field (bench/fuzz_requests.py),
   alongside the load and, if the count is not reached yet, alone for at most --fuzz-extra-s more;
2. checkpoints after the warm-up and at the end (load paused, server idle): MemoryStats KV slots and bytes
   in use, queue depth, and the server's RSS (/proc); RSS drift = end vs post-warm-up;
3. drain: streams in flight, SIGTERM, new calls every 50 ms until the process exits; each in-flight stream
   must finish OK within --grace-s and every new call must get UNAVAILABLE.

Pass criteria (exit 0 only if all hold): no INTERNAL/UNKNOWN (client side, server counters, fuzz), no status
outside the documented set, no malformed request accepted, KV slots/bytes back to 0, RSS drift < 2 %, the
drain figures above, and the fuzz count reached. Writes bench/out/soak.json and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import grpc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.dirname(os.path.abspath(__file__))]

import fuzz_requests as fz  # noqa: E402
from service.api.gen.llm.v1 import (chat_pb2, common_pb2, llm_service_pb2_grpc, memory_pb2,  # noqa: E402
                                    models_pb2, tokenize_pb2)

EXPECTED = {  # action -> statuses that action may legitimately end with (all documented in DESIGN.md)
    "stream": {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"},  # the last: --stream-deadline-s passed
    "cancel": {"OK", "CANCELLED", "RESOURCE_EXHAUSTED"},
    "deadline": {"OK", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"},
    "malformed": {"INVALID_ARGUMENT", "NOT_FOUND", "DEADLINE_EXCEEDED"},  # the deadline may pass under load
    "unary": {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"},
}
WEIGHTS = {"stream": 40, "cancel": 20, "deadline": 15, "malformed": 15, "unary": 10}


def _user(text: str) -> list[chat_pb2.ChatMessage]:
    return [chat_pb2.ChatMessage(role="user", content=text)]


MALFORMED = {  # name -> (request, why it is invalid per the proto docs)
    "no_messages": chat_pb2.ChatCompletionRequest(max_tokens=4),
    "empty_role": chat_pb2.ChatCompletionRequest(messages=[chat_pb2.ChatMessage(content="hi")], max_tokens=4),
    "temperature_2.5": chat_pb2.ChatCompletionRequest(messages=_user("hi"), temperature=2.5, max_tokens=4),
    "temperature_nan": chat_pb2.ChatCompletionRequest(messages=_user("hi"), temperature=float("nan"), max_tokens=4),
    "top_p_0": chat_pb2.ChatCompletionRequest(messages=_user("hi"), top_p=0.0, max_tokens=4),
    "n_17": chat_pb2.ChatCompletionRequest(messages=_user("hi"), n=17, max_tokens=4),
    "max_tokens_-1": chat_pb2.ChatCompletionRequest(messages=_user("hi"), max_tokens=-1),
    "max_completion_tokens_0": chat_pb2.ChatCompletionRequest(messages=_user("hi"), max_completion_tokens=0),
    "presence_penalty_3": chat_pb2.ChatCompletionRequest(messages=_user("hi"), presence_penalty=3.0, max_tokens=4),
    "logit_bias_150": chat_pb2.ChatCompletionRequest(messages=_user("hi"), logit_bias={5: 150.0}, max_tokens=4),
    "logit_bias_bad_token": chat_pb2.ChatCompletionRequest(messages=_user("hi"), logit_bias={10**9: 1.0}, max_tokens=4),
    "top_logprobs_25": chat_pb2.ChatCompletionRequest(messages=_user("hi"), logprobs=True, top_logprobs=25, max_tokens=4),
    # at most 4 stop strings (OpenAI's limit; service/engine/request.py MAX_STOP_STRINGS)
    "five_stops": chat_pb2.ChatCompletionRequest(messages=_user("hi"), stop=list("abcde"), max_tokens=4),
    "min_p_1.5": chat_pb2.ChatCompletionRequest(messages=_user("hi"), min_p=1.5, max_tokens=4),
    "repetition_penalty_0": chat_pb2.ChatCompletionRequest(messages=_user("hi"), repetition_penalty=0.0, max_tokens=4),
    "unknown_model": chat_pb2.ChatCompletionRequest(model="no-such-model", messages=_user("hi"), max_tokens=4),
}
PROMPTS = ("Say hello.", "Name a colour.", "Count to three.", "What is 2+2?", "Give one word for happy.")


@dataclass
class Tally:
    """Outcomes by action and status, plus the malformed cases the server accepted."""

    codes: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    malformed_accepted: Counter = field(default_factory=Counter)
    stream_seconds: list[float] = field(default_factory=list)
    cut_at_phase_end: int = 0  # calls still running stop_wait_s after a load phase ended, then cancelled

    def add(self, action: str, code: str) -> None:
        self.codes[action][code] += 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        kb = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    return kb * 1024


def scrape_codes(url: str) -> dict[str, float]:
    """Server-side request counts by status code (all methods and transports)."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out: Counter = Counter()
    for m in re.finditer(r'^llm_requests_total\{[^}]*code="([A-Z_]+)"[^}]*\}\s+(\S+)$', text, flags=re.M):
        out[m.group(1)] += float(m.group(2))
    return dict(out)


def rss_trend(timeline: list[dict], since: float, n: int = 12) -> float | None:
    """RSS under load: median of the last n samples of the main phase vs its first n, in % (a leak grows
    steadily; the allocator's churn moves single samples by a percent or two either way)."""
    samples = [e["rss"] for e in timeline if e["t"] >= since]
    if len(samples) < 2 * n:
        return None
    first, last = sorted(samples[:n])[n // 2], sorted(samples[-n:])[n // 2]
    return round(100.0 * (last - first) / first, 3)


async def memory(stub) -> memory_pb2.MemoryStatsResponse:
    return await stub.MemoryStats(memory_pb2.MemoryStatsRequest(), timeout=30)


async def wait_idle(stub, timeout_s: float = 120.0) -> dict:
    """Poll MemoryStats until no slot, KV byte or queued request is in use (or the timeout); what it saw last
    and how long it waited."""
    start = time.monotonic()
    while True:
        m = await memory(stub)
        idle = m.kv_cache.slots_in_use == 0 and m.kv_bytes_in_use == 0 and m.queue_depth == 0
        if idle or time.monotonic() - start > timeout_s:
            return {"slots_in_use": m.kv_cache.slots_in_use, "kv_bytes_in_use": m.kv_bytes_in_use,
                    "queue_depth": m.queue_depth, "kv_bytes_allocated": m.kv_bytes_allocated,
                    "idle": idle, "waited_s": round(time.monotonic() - start, 1)}
        await asyncio.sleep(0.5)


# -- load ---------------------------------------------------------------------------------------------

async def one_action(stub, action: str, rng: random.Random, args, tally: Tally) -> None:
    def chat(max_tokens: int) -> chat_pb2.ChatCompletionRequest:
        return chat_pb2.ChatCompletionRequest(messages=_user(rng.choice(PROMPTS)), max_tokens=max_tokens,
                                              temperature=0.8, seed=rng.randrange(1 << 30),
                                              stream_options=common_pb2.StreamOptions(include_usage=True))

    code = "OK"
    if action == "stream":
        start = time.monotonic()
        call = stub.StreamChatCompletion(chat(rng.randint(2, args.max_tokens)), timeout=args.stream_deadline_s)
        try:
            async for _ in call:
                pass
            tally.stream_seconds.append(time.monotonic() - start)
        except grpc.aio.AioRpcError as err:
            code = err.code().name
    elif action == "cancel":
        call = stub.StreamChatCompletion(chat(args.max_tokens), timeout=args.stream_deadline_s)
        after_chunks, after_s = rng.randint(0, 3), rng.uniform(0.01, 3.0)

        async def read() -> None:
            seen = 0
            async for _ in call:
                seen += 1
                if seen > after_chunks:
                    return
        try:
            await asyncio.wait_for(read(), timeout=after_s)
        except (asyncio.TimeoutError, grpc.aio.AioRpcError):
            pass
        call.cancel()
        code = (await call.code()).name
    elif action == "deadline":
        timeout = rng.uniform(0.02, 1.5)
        try:
            if rng.random() < 0.5:
                async for _ in stub.StreamChatCompletion(chat(args.max_tokens), timeout=timeout):
                    pass
            else:
                await stub.CreateChatCompletion(chat(args.max_tokens), timeout=timeout)
        except grpc.aio.AioRpcError as err:
            code = err.code().name
    elif action == "malformed":
        name = rng.choice(sorted(MALFORMED))
        try:
            if rng.random() < 0.5:
                async for _ in stub.StreamChatCompletion(MALFORMED[name], timeout=30):
                    pass
            else:
                await stub.CreateChatCompletion(MALFORMED[name], timeout=30)
        except grpc.aio.AioRpcError as err:
            code = err.code().name
        if code == "OK":
            tally.malformed_accepted[name] += 1
    else:  # unary
        kind = rng.choice(("chat", "tokenize", "detokenize", "models", "memory"))
        try:
            if kind == "chat":
                await stub.CreateChatCompletion(chat(rng.randint(1, 4)), timeout=args.stream_deadline_s)
            elif kind == "tokenize":
                await stub.Tokenize(tokenize_pb2.TokenizeRequest(prompt=rng.choice(PROMPTS)), timeout=30)
            elif kind == "detokenize":
                await stub.Detokenize(tokenize_pb2.DetokenizeRequest(tokens=[rng.randrange(49152) for _ in range(8)]),
                                      timeout=30)
            elif kind == "models":
                await stub.ListModels(models_pb2.ListModelsRequest(), timeout=30)
            else:
                await memory(stub)
        except grpc.aio.AioRpcError as err:
            code = err.code().name
    tally.add(action, code)


async def worker(index: int, stub, state: dict, args, tally: Tally) -> None:
    rng = random.Random(args.seed * 1000 + index)
    actions, weights = zip(*WEIGHTS.items())
    while not state["stop"]:
        if index >= state["target"]:
            await asyncio.sleep(0.25)
            continue
        await one_action(stub, rng.choices(actions, weights)[0], rng, args, tally)


async def run_load(stub, seconds: float, args, tally: Tally, rng: random.Random, timeline: list, pid: int) -> None:
    state = {"stop": False, "target": rng.randint(args.min_streams, args.max_streams)}
    tasks = [asyncio.create_task(worker(i, stub, state, args, tally)) for i in range(args.max_streams)]
    end = time.monotonic() + seconds
    next_change = time.monotonic() + 30
    while time.monotonic() < end:
        await asyncio.sleep(min(5.0, max(0.0, end - time.monotonic())))
        if time.monotonic() >= next_change:
            state["target"] = rng.randint(args.min_streams, args.max_streams)
            next_change += 30
        m = await memory(stub)
        timeline.append({"t": round(time.time(), 1), "streams_target": state["target"], "rss": rss_bytes(pid),
                         "slots_in_use": m.kv_cache.slots_in_use, "queue_depth": m.queue_depth})
    state["stop"] = True
    _done, pending = await asyncio.wait(tasks, timeout=args.stop_wait_s)  # let current calls finish...
    for t in pending:  # ...then cancel the rest (a client cancel: the server must free their slots too)
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    tally.cut_at_phase_end += len(pending)


# -- fuzz (child processes) -----------------------------------------------------------------------------

def fuzz_process(target: str, count: int, seed: int, deadline_s: float, senders: int, stop_at: float, out) -> None:
    """Generate `count` calls with hypothesis and send them with `senders` threads; put a Counter of statuses."""
    import queue
    import threading

    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    channel = grpc.insecure_channel(target)
    stub = llm_service_pb2_grpc.LLMServiceStub(channel)
    pending: queue.Queue = queue.Queue(maxsize=senders * 4)
    codes: Counter = Counter()
    by_shape: Counter = Counter()
    lock = threading.Lock()

    def sender() -> None:
        while (call := pending.get()) is not None:
            code = fz.send(stub, call, deadline_s)
            with lock:
                codes[code] += 1
                by_shape[f"{call.method}/{call.shape}/{code}"] += 1

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(senders)]
    for t in threads:
        t.start()

    class Done(Exception):
        pass

    @hseed(seed)
    @settings(max_examples=count, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(fz.fuzz_calls())
    def produce(call) -> None:
        if time.time() > stop_at:
            raise Done
        pending.put(call)

    try:
        produce()
    except Done:
        pass
    for _ in threads:
        pending.put(None)
    for t in threads:
        t.join()
    channel.close()
    out.put({"codes": dict(codes), "by_method_shape_code": dict(by_shape)})


# -- drain ------------------------------------------------------------------------------------------------

async def drain_test(stub, proc: subprocess.Popen, args) -> dict:
    req = chat_pb2.ChatCompletionRequest(messages=_user("Tell me a story."), max_tokens=args.drain_tokens,
                                         ignore_eos=True, temperature=0.8)
    first = [asyncio.get_running_loop().create_future() for _ in range(args.drain_streams)]
    results: list[tuple[str, float]] = []
    t_term = [0.0]

    async def in_flight(i: int) -> None:
        call = stub.StreamChatCompletion(req, timeout=args.grace_s * 4)
        code = "OK"
        try:
            async for _ in call:
                if not first[i].done():
                    first[i].set_result(True)
        except grpc.aio.AioRpcError as err:
            code = err.code().name
        finally:
            if not first[i].done():
                first[i].set_result(False)
        results.append((code, time.monotonic() - t_term[0]))

    streams = [asyncio.create_task(in_flight(i)) for i in range(args.drain_streams)]
    await asyncio.wait_for(asyncio.gather(*first), timeout=300)  # every stream is generating
    t_term[0] = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    new_calls: Counter = Counter()
    attempt = 0
    while proc.poll() is None and time.monotonic() - t_term[0] < args.grace_s + 60:
        attempt += 1
        try:
            if attempt % 2:
                await stub.Tokenize(tokenize_pb2.TokenizeRequest(prompt="hi"), timeout=5)
            else:
                async for _ in stub.StreamChatCompletion(chat_pb2.ChatCompletionRequest(messages=_user("hi"),
                                                                                         max_tokens=2), timeout=5):
                    pass
            new_calls["OK"] += 1
        except grpc.aio.AioRpcError as err:
            new_calls[err.code().name] += 1
        await asyncio.sleep(0.05)
    exit_s = time.monotonic() - t_term[0]
    await asyncio.gather(*streams)
    return {"in_flight": len(results), "in_flight_codes": dict(Counter(c for c, _ in results)),
            "last_in_flight_done_s": round(max(t for _, t in results), 2), "grace_s": args.grace_s,
            "new_calls_during_drain": dict(new_calls), "exit_code": proc.wait(timeout=60),
            "exit_after_sigterm_s": round(exit_s, 2)}


# -- main -------------------------------------------------------------------------------------------------

async def soak(args) -> dict:
    port, metrics_port = free_port(), free_port()
    os.makedirs(args.out_dir, exist_ok=True)
    log_path = os.path.join(args.out_dir, "soak_server.log")
    cmd = [sys.executable, "-m", "service", "serve", "--backend", args.backend, "--host", "127.0.0.1",
           "--port", str(port), "--http-port", "0", "--metrics-port", str(metrics_port),
           "--kv-slots", str(args.kv_slots), "--max-running", str(args.kv_slots), "--max-waiting", "32",
           "--max-positions", "512", "--max-tokens-default", "8", "--grace-s", str(args.grace_s),
           "--log-level", "WARNING"]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=ROOT))
    report: dict = {"server_command": " ".join(cmd[1:]), "settings": vars(args)}
    target = f"127.0.0.1:{port}"
    try:
        channel = grpc.aio.insecure_channel(target)
        stub = llm_service_pb2_grpc.LLMServiceStub(channel)
        t0 = time.monotonic()
        while True:
            try:
                await stub.ListModels(models_pb2.ListModelsRequest(), timeout=5)
                break
            except grpc.aio.AioRpcError:
                if proc.poll() is not None or time.monotonic() - t0 > 300:
                    raise RuntimeError(f"server did not come up; see {log_path}")
                await asyncio.sleep(1.0)
        report["load_s"] = round(time.monotonic() - t0, 1)
        rng = random.Random(args.seed)
        tally, timeline = Tally(), []
        start = time.monotonic()

        await run_load(stub, args.warmup_s, args, tally, rng, timeline, proc.pid)  # warm-up
        idle_a = await wait_idle(stub)
        rss_a = rss_bytes(proc.pid)

        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        main_s = max(0.0, args.duration_s - (time.monotonic() - start))
        stop_at = time.time() + main_s + args.fuzz_extra_s  # fuzz may go on alone after the load, bounded
        t_fuzz = time.monotonic()
        t_main = time.time()
        per = -(-args.fuzz_requests // args.fuzz_procs)
        fuzzers = [ctx.Process(target=fuzz_process, args=(target, per, args.seed + i, args.fuzz_deadline_s,
                                                          args.fuzz_senders, stop_at, out)) for i in range(args.fuzz_procs)]
        for p in fuzzers:
            p.start()
        await run_load(stub, main_s, args, tally, rng, timeline, proc.pid)
        fuzz_results = []
        for _ in fuzzers:
            try:
                left = max(0.0, stop_at - time.time()) + 120
                fuzz_results.append(await asyncio.to_thread(out.get, True, left))
            except Exception as exc:  # noqa: BLE001 - a crashed fuzz process is reported, not fatal
                fuzz_results.append({"codes": {}, "by_method_shape_code": {}, "error": repr(exc)})
        for p in fuzzers:
            p.join(timeout=60)
        report["fuzz_s"] = round(time.monotonic() - t_fuzz, 1)
        report["load_and_fuzz_s"] = round(time.monotonic() - start, 1)

        idle_b = await wait_idle(stub)
        rss_b = rss_bytes(proc.pid)
        server_codes = scrape_codes(f"http://127.0.0.1:{metrics_port}/metrics")
        fuzz_codes: Counter = Counter()
        fuzz_detail: Counter = Counter()
        for r in fuzz_results:
            fuzz_codes.update(r["codes"])
            fuzz_detail.update(r["by_method_shape_code"])
        report.update({
            "load_codes": {a: dict(c) for a, c in tally.codes.items()},
            "malformed_accepted": dict(tally.malformed_accepted),
            "load_calls_cancelled_at_phase_end": tally.cut_at_phase_end,
            "streams_ok_p50_s": round(sorted(tally.stream_seconds)[len(tally.stream_seconds) // 2], 2)
            if tally.stream_seconds else None,
            "fuzz_requests": sum(fuzz_codes.values()), "fuzz_codes": dict(fuzz_codes),
            "fuzz_by_method_shape_code": dict(sorted(fuzz_detail.items())),
            "server_codes": server_codes,
            "kv_after_warmup": idle_a, "kv_at_end": idle_b,
            "rss_after_warmup": rss_a, "rss_at_end": rss_b, "rss_drift_pct": round(100.0 * (rss_b - rss_a) / rss_a, 3),
            "rss_trend_pct": rss_trend(timeline, t_main),
            "timeline": timeline,
        })
        report["drain"] = await drain_test(stub, proc, args)
        await channel.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    with open(log_path) as fh:
        report["server_log_tracebacks"] = fh.read().count("Traceback")
    return report


def verdict(r: dict, args) -> dict[str, bool]:
    load_all = Counter()
    for codes in r["load_codes"].values():
        load_all.update(codes)
    undocumented = {a: {c: n for c, n in codes.items() if c not in EXPECTED[a]} for a, codes in r["load_codes"].items()}
    d = r["drain"]
    return {
        "no INTERNAL/UNKNOWN (load, fuzz, server counters)": not any(
            src.get(c) for src in (load_all, r["fuzz_codes"], r["server_codes"]) for c in fz.FORBIDDEN),
        "load statuses all documented for their action": not any(undocumented.values()),
        "fuzz statuses all documented": set(r["fuzz_codes"]) <= fz.DOCUMENTED,
        "no malformed request accepted": not r["malformed_accepted"],
        f"fuzz requests >= {args.fuzz_requests}": r["fuzz_requests"] >= args.fuzz_requests,
        "KV slots/bytes/queue back to 0 within 120 s after the warm-up": r["kv_after_warmup"]["idle"],
        "KV slots/bytes/queue back to 0 within 120 s at the end": r["kv_at_end"]["idle"],
        "RSS drift < 2 %": abs(r["rss_drift_pct"]) < 2.0,
        "in-flight streams finished OK within the grace": d["in_flight_codes"] == {"OK": d["in_flight"]}
        and d["last_in_flight_done_s"] < d["grace_s"],
        "new calls while draining: all UNAVAILABLE": bool(d["new_calls_during_drain"])
        and set(d["new_calls_during_drain"]) == {"UNAVAILABLE"},
        "server exited 0 within the grace": d["exit_code"] == 0 and d["exit_after_sigterm_s"] < d["grace_s"] + 5,
        "no traceback in the server log": r["server_log_tracebacks"] == 0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration-s", type=float, default=600.0, help="load + fuzz time, warm-up included")
    p.add_argument("--warmup-s", type=float, default=60.0)
    p.add_argument("--min-streams", type=int, default=16)
    p.add_argument("--max-streams", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=8, help="largest max_tokens of a load request")
    p.add_argument("--stream-deadline-s", type=float, default=300.0)
    p.add_argument("--fuzz-requests", type=int, default=10_000)
    p.add_argument("--fuzz-procs", type=int, default=2)
    p.add_argument("--fuzz-senders", type=int, default=8, help="sender threads per fuzz process")
    p.add_argument("--fuzz-deadline-s", type=float, default=1.0)
    p.add_argument("--fuzz-extra-s", type=float, default=300.0,
                   help="fuzzing may continue alone this long after the load, until --fuzz-requests are sent")
    p.add_argument("--stop-wait-s", type=float, default=30.0,
                   help="at a load phase's end, wait this long for calls in flight, then cancel them")
    p.add_argument("--drain-streams", type=int, default=16)
    p.add_argument("--drain-tokens", type=int, default=8)
    p.add_argument("--grace-s", type=float, default=30.0)
    p.add_argument("--kv-slots", type=int, default=16)
    p.add_argument("--backend", default="numpy")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out-dir", default=os.path.join(ROOT, "bench", "out"))
    args = p.parse_args(argv)
    report = asyncio.run(soak(args))
    checks = verdict(report, args)
    report["checks"] = checks
    report["command"] = " ".join(["python", "bench/soak.py", *(argv if argv is not None else sys.argv[1:])])
    path = os.path.join(args.out_dir, "soak.json")
    with open(path, "w") as fh:
        json.dump(report, fh, indent=1, default=str)
    summary = {k: v for k, v in report.items() if k not in ("timeline", "fuzz_by_method_shape_code", "settings")}
    print(json.dumps(summary, indent=1, default=str))
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print(f"wrote {path}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
