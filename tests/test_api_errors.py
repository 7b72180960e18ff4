"""Every error path of the gRPC API, table-driven against the real server: each bad request gets its
documented status code and google.rpc details, and the server keeps serving afterwards."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from service.api.gen.llm.v1 import (chat_pb2, completions_pb2, llm_service_pb2_grpc, memory_pb2, models_pb2,
                                    tokenize_pb2)
from tests.conftest import make_test_config, start_server

USER = [chat_pb2.ChatMessage(role="user", content="Hi")]
LONG_PROMPT = " hello" * 600  # ~600 tokens > the 512-position context of the test server


def details(err: grpc.RpcError) -> dict:
    """ErrorInfo / BadRequest / RetryInfo unpacked from the status's trailing details."""
    status = rpc_status.from_call(err)
    assert status is not None, "every error carries a google.rpc.Status"
    out: dict = {"violations": {}}
    for any_ in status.details:
        for cls, key in ((error_details_pb2.ErrorInfo, "info"), (error_details_pb2.BadRequest, "bad"),
                         (error_details_pb2.RetryInfo, "retry")):
            if any_.Is(cls.DESCRIPTOR):
                msg = cls()
                any_.Unpack(msg)
                out[key] = msg
    if "bad" in out:
        out["violations"] = {v.field: v.description for v in out["bad"].field_violations}
    return out


@pytest.fixture(scope="module")
def stub(llm_server):
    channel = grpc.insecure_channel(llm_server.target)
    yield llm_service_pb2_grpc.LLMServiceStub(channel)
    channel.close()


def still_serving(stub) -> None:
    out = stub.Tokenize(tokenize_pb2.TokenizeRequest(prompt="ok"), timeout=30)
    assert out.count >= 1
    assert stub.MemoryStats(memory_pb2.MemoryStatsRequest(), timeout=30).kv_cache.slots_in_use == 0


def wait_slots_free(stub, timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while stub.MemoryStats(memory_pb2.MemoryStatsRequest()).kv_cache.slots_in_use and time.monotonic() < end:
        time.sleep(0.02)


# (name, rpc, request, status, ErrorInfo reason, violated field)
BAD_REQUESTS = [
    ("negative max_tokens", "CreateCompletion",
     completions_pb2.CompletionRequest(prompt="Hi", max_tokens=-1), "INVALID_ARGUMENT", "INVALID_VALUE", "max_tokens"),
    ("temperature out of range", "CreateChatCompletion",
     chat_pb2.ChatCompletionRequest(messages=USER, temperature=2.5), "INVALID_ARGUMENT", "INVALID_VALUE", "temperature"),
    ("top_p zero", "CreateCompletion",
     completions_pb2.CompletionRequest(prompt="Hi", top_p=0.0), "INVALID_ARGUMENT", "INVALID_VALUE", "top_p"),
    ("n too large", "CreateCompletion",
     completions_pb2.CompletionRequest(prompt="Hi", n=99), "INVALID_ARGUMENT", "INVALID_VALUE", "n"),
    ("top_logprobs without logprobs", "CreateChatCompletion",
     chat_pb2.ChatCompletionRequest(messages=USER, top_logprobs=3), "INVALID_ARGUMENT", "INVALID_VALUE",
     "top_logprobs"),
    ("zero max_completion_tokens", "CreateChatCompletion",
     chat_pb2.ChatCompletionRequest(messages=USER, max_completion_tokens=0), "INVALID_ARGUMENT", "INVALID_VALUE",
     "max_completion_tokens"),
    ("unknown model", "CreateCompletion",
     completions_pb2.CompletionRequest(model="no-such-model", prompt="Hi"), "NOT_FOUND", "MODEL_NOT_FOUND", None),
    ("empty messages", "CreateChatCompletion",
     chat_pb2.ChatCompletionRequest(messages=[]), "INVALID_ARGUMENT", "INVALID_VALUE", "messages"),
    ("message without a role", "CreateChatCompletion",
     chat_pb2.ChatCompletionRequest(messages=[chat_pb2.ChatMessage(content="x")]), "INVALID_ARGUMENT",
     "INVALID_VALUE", "messages[0].role"),
    ("empty prompt", "CreateCompletion",
     completions_pb2.CompletionRequest(prompt=""), "INVALID_ARGUMENT", "INVALID_VALUE", "prompt"),
    ("token id outside the vocabulary", "Detokenize",
     tokenize_pb2.DetokenizeRequest(tokens=[1, 10 ** 9]), "INVALID_ARGUMENT", "INVALID_VALUE", "tokens[1]"),
    ("prompt over the context", "CreateCompletion",
     completions_pb2.CompletionRequest(prompt=LONG_PROMPT), "INVALID_ARGUMENT", "CONTEXT_LENGTH_EXCEEDED", "prompt"),
    ("stream: negative max_tokens", "StreamChatCompletion",
     chat_pb2.ChatCompletionRequest(messages=USER, max_tokens=-3), "INVALID_ARGUMENT", "INVALID_VALUE", "max_tokens"),
    ("stream: unknown model", "StreamCompletion",
     completions_pb2.CompletionRequest(model="nope", prompt="Hi"), "NOT_FOUND", "MODEL_NOT_FOUND", None),
]


@pytest.mark.parametrize("name,rpc,request_,code,reason,field", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_gets_its_status_and_details(stub, name, rpc, request_, code, reason, field):
    call = getattr(stub, rpc)
    with pytest.raises(grpc.RpcError) as info:
        result = call(request_, timeout=30)
        if rpc.startswith("Stream"):
            list(result)  # the error comes before any chunk
    err = info.value
    assert err.code().name == code
    found = details(err)
    assert found["info"].reason == reason and found["info"].domain == "llm.v1"
    if field is not None:
        assert field in found["violations"], found["violations"]
    assert "Traceback" not in err.details()
    still_serving(stub)


def test_context_overflow_states_prompt_tokens_and_limit(stub):
    n_tokens = stub.Tokenize(tokenize_pb2.TokenizeRequest(prompt=LONG_PROMPT)).count
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateCompletion(completions_pb2.CompletionRequest(prompt=LONG_PROMPT), timeout=30)
    found = details(info.value)
    assert dict(found["info"].metadata) == {"prompt_tokens": str(n_tokens), "limit": "512"}
    assert f"{n_tokens} tokens" in found["violations"]["prompt"] and "512" in found["violations"]["prompt"]


def test_deadline_aborts_the_work(stub):
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateCompletion(completions_pb2.CompletionRequest(prompt="Tell me a story", max_tokens=200,
                                                                ignore_eos=True), timeout=0.05)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 5
    wait_slots_free(stub)  # the server dropped the request: no slot stays held
    still_serving(stub)


def test_cancelled_stream_frees_its_slot_at_once(stub):
    call = stub.StreamCompletion(completions_pb2.CompletionRequest(prompt="Count: 1, 2,", max_tokens=200,
                                                                   ignore_eos=True), timeout=60)
    next(call)  # generating now, holding a slot
    assert stub.MemoryStats(memory_pb2.MemoryStatsRequest()).kv_cache.slots_in_use == 1
    call.cancel()
    t0 = time.monotonic()
    wait_slots_free(stub, 5.0)
    assert time.monotonic() - t0 < 5.0
    still_serving(stub)


def test_overload_is_resource_exhausted_with_retry_info(llm_server, stub):
    """4 slots + 2 waiting places: the 7th and later concurrent requests are refused at once."""
    async def flood():
        async with grpc.aio.insecure_channel(llm_server.target) as channel:
            aio_stub = llm_service_pb2_grpc.LLMServiceStub(channel)
            calls = [aio_stub.CreateCompletion(completions_pb2.CompletionRequest(
                prompt="Once upon a time", max_tokens=100, ignore_eos=True), timeout=60) for _ in range(9)]
            refused = []
            done, pending = await asyncio.wait([asyncio.ensure_future(c) for c in calls], timeout=20,
                                               return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    refused.append(task.exception())
            for c in calls:
                c.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            return refused
    refused = asyncio.run(flood())
    assert refused and all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refused)
    from service.client.errors import from_rpc_error  # parses the asyncio error's trailing details
    typed = from_rpc_error(refused[0])
    assert typed.reason == "OVERLOADED" and typed.retry_after_s == pytest.approx(0.25)
    wait_slots_free(stub)
    still_serving(stub)


def test_bad_api_key_is_unauthenticated(llm_server, server_loop):
    keyed = start_server(server_loop, make_test_config(server__api_keys=("sekret",)), engine=llm_server.engine)
    try:
        channel = grpc.insecure_channel(keyed.target)
        s = llm_service_pb2_grpc.LLMServiceStub(channel)
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "sekret"),)):
            with pytest.raises(grpc.RpcError) as info:
                s.ListModels(models_pb2.ListModelsRequest(), metadata=metadata, timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert details(info.value)["info"].reason == "INVALID_API_KEY"
        ok = s.ListModels(models_pb2.ListModelsRequest(), metadata=(("authorization", "Bearer sekret"),), timeout=10)
        assert ok.data[0].id == llm_server.engine.model_name
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes need no key
        channel.close()
    finally:
        keyed.stop(0.5)
