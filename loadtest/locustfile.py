"""Locust load test: a gRPC user streaming chat completions, recording TTFT, inter-token latency and tokens/s.

Follows locust's pattern for testing other systems: a `User` owning a client (a gRPC stub over one channel,
gevent-patched) that fires `request` events. One streamed chat request fires these events:

    request_type   name                    response_time (ms)                  response_length
    grpc           StreamChatCompletion    whole stream, send -> last chunk    completion tokens
    stream         time_to_first_token     send -> first content chunk         0
    stream         inter_token_latency     gap between content chunks (one     0
                                           event per gap)
    stream         tokens_per_s            NOT ms: the stream's decode rate,   completion tokens
                                           completion tokens / (last - first)

A failed call fires one `grpc` event carrying the exception (the gRPC status code name); locust exits 1
at the end of a headless run if anything failed.

Headless, bounded (see loadtest/README.md):

    locust -f loadtest/locustfile.py --headless -u 4 -r 4 --run-time 60s --host 127.0.0.1:50051 \
        --csv loadtest/out/u4 --max-tokens 32
"""

from __future__ import annotations

import csv
import random
import time

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, between, events, stats, task

from service.api.gen.llm.v1 import chat_pb2, common_pb2, llm_service_pb2_grpc

grpc_gevent.init_gevent()  # grpc's completion queue must cooperate with locust's gevent loop

PROMPTS = (
    "Write a haiku about GPUs.",
    "Explain in two sentences what a KV cache is.",
    "List three prime numbers and say why they are prime.",
    "What is the capital of France? Answer briefly.",
    "Give me a short tip for writing clear Python.",
    "Summarise the plot of a heist movie in one paragraph.",
)


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    group = parser.add_argument_group("llm gRPC user")
    group.add_argument("--max-tokens", type=int, default=32, help="max_tokens of each request")
    group.add_argument("--temperature", type=float, default=0.7)
    group.add_argument("--deadline-s", type=float, default=120.0, help="per-call gRPC deadline")
    group.add_argument("--api-key", default="", help="sent as authorization: Bearer <key>")
    group.add_argument("--model", default="", help="model id (empty = the server's only model)")
    group.add_argument("--prompt", default="", help="fixed prompt (default: a random one of a small set)")


_environment = None  # set at init, for the final CSV write


@events.init.add_listener
def _remember_environment(environment, **_kwargs) -> None:
    global _environment
    _environment = environment


@events.quit.add_listener
def _write_final_stats_csv(exit_code: int, **_kwargs) -> None:
    """Rewrite <csv>_stats.csv with the final numbers. Locust's CSV writer runs every few seconds and stops
    before the streams still in flight at --run-time finish (within --stop-timeout), so without this the
    file can miss the last requests that the console summary shows."""
    prefix = getattr(_environment.parsed_options, "csv_prefix", None) if _environment else None
    if not prefix:
        return
    with open(f"{prefix}_stats.csv", "w", newline="") as fh:
        stats.StatsCSV(_environment, stats.PERCENTILES_TO_REPORT).requests_csv(csv.writer(fh))


class GrpcClient:
    """A gRPC stub that reports each streamed chat call to locust's request event."""

    def __init__(self, target: str, environment):
        self.channel = grpc.insecure_channel(target)
        self.stub = llm_service_pb2_grpc.LLMServiceStub(self.channel)
        self.fire = environment.events.request.fire
        self.options = environment.parsed_options

    def close(self) -> None:
        self.channel.close()

    def request(self, prompt: str) -> chat_pb2.ChatCompletionRequest:
        o = self.options
        return chat_pb2.ChatCompletionRequest(
            model=o.model, messages=[chat_pb2.ChatMessage(role="user", content=prompt)],
            max_tokens=o.max_tokens, temperature=o.temperature, seed=random.randrange(1 << 31),
            stream_options=common_pb2.StreamOptions(include_usage=True))

    def stream_chat(self, prompt: str) -> None:
        o = self.options
        metadata = (("authorization", f"Bearer {o.api_key}"),) if o.api_key else None
        start = time.perf_counter()
        content_times: list[float] = []  # perf_counter() of each chunk carrying text
        usage_tokens = 0
        try:
            for chunk in self.stub.StreamChatCompletion(self.request(prompt), timeout=o.deadline_s,
                                                        metadata=metadata):
                if any(choice.delta.content for choice in chunk.choices):
                    content_times.append(time.perf_counter())
                if chunk.HasField("usage"):
                    usage_tokens = chunk.usage.completion_tokens
        except grpc.RpcError as err:
            self.fire(request_type="grpc", name="StreamChatCompletion",
                      response_time=(time.perf_counter() - start) * 1000.0, response_length=0,
                      exception=RuntimeError(f"{err.code().name}: {err.details()}"), context={})
            return
        end = time.perf_counter()
        tokens = usage_tokens or len(content_times)
        self.fire(request_type="grpc", name="StreamChatCompletion", response_time=(end - start) * 1000.0,
                  response_length=tokens, exception=None, context={})
        if not content_times:
            return
        self.fire(request_type="stream", name="time_to_first_token",
                  response_time=(content_times[0] - start) * 1000.0, response_length=0, exception=None, context={})
        for before, after in zip(content_times, content_times[1:]):
            self.fire(request_type="stream", name="inter_token_latency", response_time=(after - before) * 1000.0,
                      response_length=0, exception=None, context={})
        decode_s = content_times[-1] - content_times[0]
        if tokens > 1 and decode_s > 0:
            self.fire(request_type="stream", name="tokens_per_s", response_time=(tokens - 1) / decode_s,
                      response_length=tokens, exception=None, context={})


class StreamingChatUser(User):
    """One simulated user: streams a chat completion, pauses briefly, repeats."""

    wait_time = between(0.05, 0.25)

    def __init__(self, environment):
        super().__init__(environment)
        if not self.host:
            raise ValueError("pass the gRPC target as --host, e.g. 127.0.0.1:50051")
        self.client = GrpcClient(self.host, environment)

    def on_stop(self) -> None:
        self.client.close()

    @task
    def stream_chat(self) -> None:
        prompt = self.environment.parsed_options.prompt or random.choice(PROMPTS)
        self.client.stream_chat(prompt)
