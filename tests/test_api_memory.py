"""MemoryStats conversion on the record shapes both backends produce: every accounted byte lands in exactly
one place, and each total is the sum of what is listed (no model needed)."""

from __future__ import annotations

import random

from service.api.memory import memory_stats_pb
from service.backends.base import MemoryRecord


def cuda_like_records(n_layers: int, rng: random.Random) -> list[MemoryRecord]:
    recs = [MemoryRecord("weights", "token_embd.weight", rng.randint(1, 10 ** 8), None, "Q6_K"),
            MemoryRecord("weights", "output_norm.weight", rng.randint(1, 10 ** 4), None, "F32"),
            MemoryRecord("weights", "output.weight", rng.randint(1, 10 ** 8), None, "Q6_K")]
    for i in range(n_layers):
        for name, t in (("attn_q", "Q4_K"), ("attn_k", "Q4_K"), ("ffn_down", "Q6_K"), ("attn_norm", "F32")):
            recs.append(MemoryRecord("weights", f"blk.{i}.{name}.weight", rng.randint(1, 10 ** 7), i, t))
        recs.append(MemoryRecord("kv", f"blk.{i}.kv", 4096 * 7, i, "f16"))
    recs += [MemoryRecord("weights", "weights.slab_unused", rng.randint(0, 255), None, None),
             MemoryRecord("kv", "kv.allocator_rounding", rng.randint(0, 2 ** 20), None, None),
             MemoryRecord("activations", "act.x", rng.randint(1, 10 ** 6), None, None),
             MemoryRecord("activations", "activations.slab_unused", rng.randint(0, 10 ** 3), None, None),
             MemoryRecord("pinned_host", "staging.tokens", rng.randint(1, 10 ** 4), None, None, device=False),
             MemoryRecord("context", "cuda_context", rng.randint(1, 10 ** 9), None, None)]
    rng.shuffle(recs)
    return recs


def test_every_record_counted_once_and_totals_are_sums():
    rng = random.Random(5)
    n_layers = 7
    records = cuda_like_records(n_layers, rng)
    kv = {"slots_total": 3, "slots_in_use": 2, "max_positions": 64, "sink_tokens": 4, "dtype": "f16",
          "bytes_allocated_per_layer": 4096 * 7, "bytes_in_use_per_layer": 300, "slot_positions": {0: 70, 2: 5}}
    out = memory_stats_pb("m", {"records": records, "kv_cache": kv, "backend": "cuda",
                                "device": {"device": "GPU", "total_bytes": 80, "free_bytes": 20,
                                           "process_used_bytes": 50},
                                "queue": {"waiting_requests": 3}})
    assert out.total_bytes == sum(r.nbytes for r in records)
    listed = ([t for layer in out.layers for t in layer.weights] + list(out.embeddings) + list(out.output_head)
              + list(out.workspaces) + list(out.pinned_host) + list(out.other))
    kv_per_layer = sum(layer.kv_bytes_allocated for layer in out.layers)
    assert sum(t.nbytes for t in listed) + kv_per_layer == out.total_bytes
    assert [layer.layer for layer in out.layers] == list(range(n_layers))
    for layer in out.layers:
        assert layer.weight_bytes == sum(t.nbytes for t in layer.weights)
        assert {t.name for t in layer.weights} == {f"blk.{layer.layer}.{n}.weight" for n in
                                                    ("attn_q", "attn_k", "ffn_down", "attn_norm")}
        assert layer.kv_bytes_allocated == 4096 * 7 and layer.kv_bytes_in_use == 300
    assert [t.name for t in out.embeddings] == ["token_embd.weight"]
    assert sorted(t.name for t in out.output_head) == ["output.weight", "output_norm.weight"]
    assert out.weights_bytes == sum(r.nbytes for r in records if r.category == "weights"
                                    and not r.name.endswith("slab_unused"))
    assert out.kv_bytes_allocated == n_layers * 4096 * 7 and out.kv_bytes_in_use == n_layers * 300
    assert out.other_bytes == sum(t.nbytes for t in out.other) and len(out.other) == 3
    assert out.pinned_host_bytes == sum(r.nbytes for r in records if r.category == "pinned_host")
    assert (out.device_total_bytes, out.device_free_bytes, out.device_process_used_bytes) == (80, 20, 50)
    assert [(s.slot, s.position, s.valid_positions) for s in out.kv_cache.slots] == [(0, 70, 64), (2, 5, 5)]
    assert out.queue_depth == 3 and out.backend == "cuda"


def test_host_backend_has_no_device_totals():
    recs = [MemoryRecord("weights", "blk.0.attn_q.weight", 10, 0, "Q4_1", device=False),
            MemoryRecord("kv", "blk.0.kv", 20, 0, "f16", device=False)]
    out = memory_stats_pb("m", {"records": recs, "kv_cache": {}, "device": {"device": "cpu", "total_bytes": None}})
    assert not out.HasField("device_total_bytes") and not out.HasField("device_free_bytes")
    assert out.total_bytes == 30 and out.layers[0].kv_bytes_allocated == 20
