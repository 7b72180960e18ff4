"""The API on the CUDA backend (GPU machine only): MemoryStats shows quantized weights with their GGML types
and exact byte sizes, the driver's total/free, accounting that agrees with the driver's view of the process,
KV in use that follows a request while free device memory stays put (the KV arena is allocated once)."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.gpu
pytest.importorskip("pycuda.driver", exc_type=ImportError)

from service.client import Client  # noqa: E402
from service.model.dummy import dummy_gguf_model  # noqa: E402
from tests.conftest import make_test_config, start_server  # noqa: E402

SHAPE = "7b-gqa"  # random weights in the Llama-2-7B Q4_K_M layout, 8 KV heads
PROMPT_IDS = list(range(100, 140))  # the dummy model has no vocabulary: prompts are token ids
SLOTS, POSITIONS = 4, 2048
CONTEXT_OVERHEAD = 1024 * 2 ** 20  # stated bound: driver-reported process usage minus accounted bytes
# driver free-memory movement tolerated while a request runs: seen 2 MiB on an H200 and 10 MiB on an H100
# (2026-11-28); the bound stays far below one slot's KV (256 MiB), which is what the test separates
FREE_JITTER = 32 * 2 ** 20


@pytest.fixture(scope="module")
def gpu_server(server_loop):
    config = make_test_config(model__backend="cuda", model__dummy_weights=SHAPE, cache__slots=SLOTS,
                              cache__max_positions=POSITIONS, engine__max_waiting=8)
    handle = start_server(server_loop, config, http=False)
    yield handle
    handle.stop(1.0)


@pytest.fixture(scope="module")
def client(gpu_server):
    with Client(gpu_server.target, timeout=300) as c:
        yield c


def test_weights_stay_quantized_with_exact_sizes(client):
    stats = client.memory_stats()
    ref = dummy_gguf_model(SHAPE)
    listed = [t for layer in stats.layers for t in layer.weights] + list(stats.embeddings) + list(stats.output_head)
    assert stats.backend == "cuda" and len(stats.layers) == ref.hparams.n_layers
    assert sorted(t.name for t in listed) == sorted(ref.tensors)
    for t in listed:
        assert t.device and t.ggml_type == ref.tensor(t.name).type_name
        assert t.nbytes == ref.tensor(t.name).n_bytes, t.name  # no dequantized copies on the GPU
    print(f"\nweights {stats.weights_bytes / 2**30:.3f} GiB, KV {stats.kv_bytes_allocated / 2**30:.3f} GiB, "
          f"activations {stats.activations_bytes / 2**20:.1f} MiB, pinned {stats.pinned_host_bytes / 2**20:.2f} MiB, "
          f"other {stats.other_bytes / 2**20:.1f} MiB, total {stats.total_bytes / 2**30:.3f} GiB; driver: process "
          f"{stats.device_process_used_bytes / 2**30:.3f} GiB, free {stats.device_free_bytes / 2**30:.2f} of "
          f"{stats.device_total_bytes / 2**30:.2f} GiB")


def test_accounting_agrees_with_the_driver(client):
    stats = client.memory_stats()
    assert stats.HasField("device_total_bytes") and stats.HasField("device_free_bytes")
    assert 0 < stats.device_free_bytes < stats.device_total_bytes
    device_accounted = stats.total_bytes - stats.pinned_host_bytes  # pinned buffers live in host memory
    assert stats.HasField("device_process_used_bytes")
    assert 0 <= stats.device_process_used_bytes - device_accounted < CONTEXT_OVERHEAD
    hp = dummy_gguf_model(SHAPE).hparams
    per_layer_kv = 2 * SLOTS * POSITIONS * hp.n_kv_heads * hp.head_dim * 2  # K + V, f16
    assert all(layer.kv_bytes_allocated == per_layer_kv for layer in stats.layers)


def test_kv_in_use_follows_a_request_and_free_memory_does_not_move(client):
    # warm-up: activation pool sized, decode graph captured (both allocate once, on first use)
    client.completions.create(prompt=PROMPT_IDS, max_tokens=16, temperature=0, ignore_eos=True, logprobs=0)
    idle = client.memory_stats()
    assert idle.kv_cache.slots_in_use == 0 and idle.kv_bytes_in_use == 0
    stream = client.completions.create(prompt=PROMPT_IDS, max_tokens=1500, temperature=0, ignore_eos=True,
                                       logprobs=0, stream=True)
    next(stream)  # no vocabulary means no text: the chunk carries the token's logprob
    busy = client.memory_stats()
    stream.close()
    assert busy.kv_cache.slots_in_use == 1
    (slot,) = busy.kv_cache.slots
    assert slot.position >= len(PROMPT_IDS)
    per_position = idle.kv_bytes_allocated // (SLOTS * POSITIONS)
    assert busy.kv_bytes_in_use == slot.valid_positions * per_position
    # the request's KV (one slot: 256 MiB here) comes from the arena allocated at start, not from the driver;
    # driver-side differences of 2-10 MiB while a step runs were seen (see FREE_JITTER)
    slot_bytes = idle.kv_bytes_allocated // SLOTS
    assert abs(busy.device_free_bytes - idle.device_free_bytes) <= FREE_JITTER < slot_bytes
    end = time.monotonic() + 10
    while client.memory_stats().kv_cache.slots_in_use and time.monotonic() < end:
        time.sleep(0.01)
    after = client.memory_stats()
    assert after.kv_cache.slots_in_use == 0 and abs(after.device_free_bytes - idle.device_free_bytes) <= FREE_JITTER


def test_unary_equals_stream_and_usage(client):
    """No vocabulary, so no text: the chosen tokens' log-probabilities identify the generated sequence."""
    unary = client.completions.create(prompt=PROMPT_IDS, max_tokens=8, temperature=0, n=2, ignore_eos=True,
                                      logprobs=0)
    assert unary.usage.prompt_tokens == len(PROMPT_IDS) and unary.usage.completion_tokens == 16
    seqs = [list(c.logprobs.token_logprobs) for c in unary.choices]
    assert len(seqs[0]) == 8 and seqs[0] == seqs[1]  # greedy: both choices are the same
    streamed: dict[int, list[float]] = {}
    for chunk in client.completions.create(prompt=PROMPT_IDS, max_tokens=8, temperature=0, n=2, ignore_eos=True,
                                           logprobs=0, stream=True):
        for c in chunk.choices:
            streamed.setdefault(c.index, []).extend(c.logprobs.token_logprobs)
    assert all(a == pytest.approx(b, abs=1e-4) for a, b in zip([streamed[0], streamed[1]], seqs))
