"""The SDK against a real server (default model, NumPy backend): unary == joined stream, n > 1, usage,
MemoryStats adds up and follows requests, retries honour RetryInfo, the SDK stays free of numpy/engine."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import pytest
from gguf import GGUFReader

from service.client import AsyncClient, Client, UnavailableError
from service.model.registry import resolve_model_path

PROMPT = "The capital of France is"
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]  # 18 tokens


@pytest.fixture(scope="module")
def reader():
    return GGUFReader(resolve_model_path(None))


@pytest.fixture(scope="module")
def client(llm_server):
    with Client(llm_server.target, timeout=60) as c:
        yield c


def test_models_list(client, llm_server):
    models = client.models.list()
    assert [m.id for m in models.data] == [llm_server.engine.model_name]
    assert models.object == "list" and models.data[0].object == "model"
    assert models.data[0].max_model_len == 512


def test_completion_unary_equals_joined_stream(client):
    unary = client.completions.create(prompt=PROMPT, max_tokens=3, temperature=0)
    chunks = list(client.completions.create(prompt=PROMPT, max_tokens=3, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    joined = "".join(c.choices[0].text for c in chunks if c.choices)
    assert unary.choices[0].text == joined and joined.strip()
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].HasField("finish_reason")]
    assert finals == [unary.choices[0].finish_reason]
    assert chunks[-1].usage == unary.usage and not chunks[-1].choices  # the usage chunk comes last, alone
    assert len({c.id for c in chunks}) == 1 and chunks[0].object == "text_completion"


def test_chat_unary_equals_joined_stream(client):
    unary = client.chat.completions.create(messages=CHAT, max_tokens=3, temperature=0, logprobs=True,
                                           top_logprobs=2)
    chunks = list(client.chat.completions.create(messages=CHAT, max_tokens=3, temperature=0, logprobs=True,
                                                 top_logprobs=2, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    joined = "".join(c.choices[0].delta.content for c in chunks if c.choices)
    assert unary.choices[0].message.content == joined and joined
    assert unary.choices[0].message.role == "assistant"
    assert not any(c.HasField("usage") for c in chunks)  # no include_usage: no usage chunk
    assert chunks[-1].choices[0].finish_reason == unary.choices[0].finish_reason
    assert unary.usage.prompt_tokens == client.tokenize(messages=CHAT).count  # the rendered template's tokens
    # logprobs: one entry per generated token; greedy picks the most likely token of its top alternatives
    entries = unary.choices[0].logprobs.content
    assert len(entries) == unary.usage.completion_tokens
    streamed = [e for c in chunks if c.choices for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in entries]
    assert "".join(bytes(e.bytes).decode("utf-8", "replace") for e in entries) == joined
    for e in entries:
        assert len(e.top_logprobs) == 2 and e.logprob <= 0.0
        assert e.logprob == pytest.approx(max(t.logprob for t in e.top_logprobs), abs=1e-5)


def test_usage_counts_match_the_tokenizer(client):
    out = client.completions.create(prompt=PROMPT, max_tokens=3, temperature=0, ignore_eos=True)
    prompt_ids = client.tokenize(PROMPT).tokens
    assert out.usage.prompt_tokens == len(prompt_ids)
    assert out.usage.completion_tokens == 3
    assert out.usage.total_tokens == len(prompt_ids) + 3


def test_n_choices_are_independent_and_counted(client):
    out = client.completions.create(prompt=PROMPT, max_tokens=3, temperature=1.0, seed=123, n=2, ignore_eos=True)
    assert [c.index for c in out.choices] == [0, 1]
    assert all(c.finish_reason == "length" for c in out.choices)
    assert out.usage.completion_tokens == 2 * 3
    assert out.usage.prompt_tokens == len(client.tokenize(PROMPT).tokens)  # the prompt is counted once
    # streamed with the same seed: every choice index appears, and the per-index joins equal the unary choices
    texts: dict[int, str] = {}
    for chunk in client.completions.create(prompt=PROMPT, max_tokens=3, temperature=1.0, seed=123, n=2,
                                           ignore_eos=True, stream=True):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    assert [texts[i] for i in range(2)] == [c.text for c in out.choices]


def test_tokenize_detokenize_round_trip(client, reader):
    ids = client.tokenize("Hello, world! 123").tokens
    reader_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    assert ids and all(0 <= t < reader_vocab for t in ids)
    assert client.detokenize(ids).prompt == "Hello, world! 123"


def test_memory_stats_add_up_and_match_the_file(client, reader):
    stats = client.memory_stats()
    file_types = {t.name: t.tensor_type.name for t in reader.tensors}
    file_elems = {t.name: int(t.n_elements) for t in reader.tensors}
    file_bytes = {t.name: int(t.n_bytes) for t in reader.tensors}
    listed = [t for layer in stats.layers for t in layer.weights] + list(stats.embeddings) + list(stats.output_head)
    # every tensor of the file appears once (a tied output head shares the embedding and is not counted twice)
    assert sorted(t.name for t in listed) == sorted(n for n in file_types if n != "output.weight")
    for t in listed:
        assert t.ggml_type == file_types[t.name]
        if stats.backend == "cuda":  # weights stay quantized on the GPU: exactly the file's bytes
            assert t.nbytes == file_bytes[t.name], t.name
        else:  # the NumPy backend holds float32 copies
            assert t.nbytes == 4 * file_elems[t.name], t.name
    n_layers = int(reader.fields["llama.block_count"].parts[-1][0])
    n_kv_heads = int(reader.fields["llama.attention.head_count_kv"].parts[-1][0])
    head_dim = int(reader.fields["llama.embedding_length"].parts[-1][0]) // \
        int(reader.fields["llama.attention.head_count"].parts[-1][0])
    assert len(stats.layers) == n_layers
    per_layer_kv = 2 * 4 * 512 * n_kv_heads * head_dim * 2  # K and V, 4 slots, 512 positions, f16
    assert all(layer.kv_bytes_allocated == per_layer_kv for layer in stats.layers)
    assert all(layer.weight_bytes == sum(t.nbytes for t in layer.weights) for layer in stats.layers)
    assert stats.weights_bytes == sum(t.nbytes for t in listed)
    assert stats.kv_bytes_allocated == n_layers * per_layer_kv
    assert stats.total_bytes == (stats.weights_bytes + stats.kv_bytes_allocated + stats.activations_bytes
                                 + stats.pinned_host_bytes + stats.other_bytes)
    assert stats.kv_cache.slots_total == 4 and stats.kv_cache.max_positions == 512


def test_memory_stats_follow_requests(client, llm_server):
    idle = client.memory_stats()
    assert idle.kv_cache.slots_in_use == 0 and idle.kv_bytes_in_use == 0
    prompt_len = len(client.tokenize(PROMPT).tokens)
    per_token = idle.kv_bytes_allocated // (4 * 512)  # bytes per position, all layers together
    stream = client.completions.create(prompt=PROMPT, max_tokens=40, temperature=0, ignore_eos=True, stream=True)
    next(stream)  # the request holds a slot now
    busy = client.memory_stats()
    stream.close()  # leaving early cancels the call: the slot must come back
    assert busy.kv_cache.slots_in_use == 1
    (slot,) = busy.kv_cache.slots
    assert slot.position >= prompt_len and slot.valid_positions == min(slot.position, 512)
    assert busy.kv_bytes_in_use == slot.valid_positions * per_token
    assert sum(layer.kv_bytes_in_use for layer in busy.layers) == busy.kv_bytes_in_use
    deadline = time.monotonic() + 5
    while client.memory_stats().kv_cache.slots_in_use and time.monotonic() < deadline:
        time.sleep(0.02)
    after = client.memory_stats()
    assert after.kv_cache.slots_in_use == 0 and after.kv_bytes_in_use == 0


def test_async_client_unary_equals_stream(llm_server):
    async def go():
        async with AsyncClient(llm_server.target, timeout=60) as c:
            unary = await c.completions.create(prompt=PROMPT, max_tokens=3, temperature=0)
            parts = [ch.choices[0].text async for ch in
                     c.completions.create(prompt=PROMPT, max_tokens=3, temperature=0, stream=True)
                     if ch.choices]
            models = await c.models.list()
            return unary, "".join(parts), models
    unary, joined, models = asyncio.run(go())
    assert unary.choices[0].text == joined
    assert models.data[0].id == llm_server.engine.model_name


def test_retries_honour_retry_info(llm_server):
    """While a server drains it answers UNAVAILABLE with RetryInfo; the SDK waits that long and retries."""
    core = llm_server.running.core
    core.draining = True
    try:
        with Client(llm_server.target, max_retries=0) as c:
            with pytest.raises(UnavailableError) as info:
                c.models.list()
        assert info.value.retry_after_s == pytest.approx(1.0)
        threading.Timer(0.3, lambda: setattr(core, "draining", False)).start()
        with Client(llm_server.target, max_retries=2) as c:
            t0 = time.monotonic()
            assert c.models.list().data
            assert time.monotonic() - t0 >= 0.9  # waited the server's RetryInfo, not a default back-off
    finally:
        core.draining = False


def test_sdk_imports_no_numpy_or_engine():
    code = ("import sys, service.client; bad = [m for m in sys.modules if m.split('.')[0] == 'numpy' or "
            "m.startswith(('service.engine', 'service.model', 'service.backends'))]; print(bad); "
            "sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
