"""MemoryStats: the engine's allocation records (MemoryRecord list), KV bookkeeping and driver view ->
the llm.v1 MemoryStatsResponse, grouped per layer with every total an exact sum of what is listed."""

from __future__ import annotations

from typing import Any

from service.api.gen.llm.v1 import memory_pb2


def _get(rec: Any, name: str) -> Any:
    return rec.get(name) if isinstance(rec, dict) else getattr(rec, name, None)


def _tensor(rec: Any) -> memory_pb2.TensorMemory:
    return memory_pb2.TensorMemory(name=str(_get(rec, "name")), ggml_type=str(_get(rec, "ggml_type") or ""),
                                   nbytes=int(_get(rec, "nbytes")), device=bool(_get(rec, "device")))


def memory_stats_pb(model_name: str, stats: dict[str, Any]) -> memory_pb2.MemoryStatsResponse:
    """`stats` is AsyncEngine.memory_stats(): {"records", "kv_cache", "device", "queue", ...}."""
    kv = stats.get("kv_cache") or {}
    device = stats.get("device") or {}
    records = list(stats.get("records") or [])
    n_layers = max([int(_get(r, "layer")) + 1 for r in records if _get(r, "layer") is not None] or [0])
    layers = [memory_pb2.LayerMemory(layer=i) for i in range(n_layers)]
    out = memory_pb2.MemoryStatsResponse(model=model_name, backend=str(stats.get("backend", "")),
                                         device=str(device.get("device", "")))
    for rec in records:
        category, layer = _get(rec, "category"), _get(rec, "layer")
        if category == "weights" and layer is not None:
            layers[int(layer)].weights.append(_tensor(rec))
        elif category == "weights" and "token_embd" in str(_get(rec, "name")):
            out.embeddings.append(_tensor(rec))
        elif category == "weights" and str(_get(rec, "name")).startswith("output"):
            out.output_head.append(_tensor(rec))
        elif category == "kv" and layer is not None:
            layers[int(layer)].kv_bytes_allocated += int(_get(rec, "nbytes"))
        elif category == "activations":
            out.workspaces.append(_tensor(rec))
        elif category == "pinned_host":
            out.pinned_host.append(_tensor(rec))
        else:  # the CUDA context, slab space not handed out, allocator rounding, ...
            out.other.append(_tensor(rec))
    if not any(_get(r, "category") == "kv" and _get(r, "layer") is not None for r in records) and kv:
        for lay in layers:  # the backend did not account the arena per layer: take the cache's own figure
            lay.kv_bytes_allocated = int(kv.get("bytes_allocated_per_layer", 0))
    in_use_per_layer = int(kv.get("bytes_in_use_per_layer", 0))
    for lay in layers:
        lay.weight_bytes = sum(t.nbytes for t in lay.weights)
        lay.kv_bytes_in_use = in_use_per_layer
    out.layers.extend(layers)
    out.embeddings_bytes = sum(t.nbytes for t in out.embeddings)
    out.output_head_bytes = sum(t.nbytes for t in out.output_head)
    out.weights_bytes = out.embeddings_bytes + out.output_head_bytes + sum(lay.weight_bytes for lay in layers)
    out.kv_bytes_allocated = sum(lay.kv_bytes_allocated for lay in layers)
    out.kv_bytes_in_use = sum(lay.kv_bytes_in_use for lay in layers)
    out.activations_bytes = sum(t.nbytes for t in out.workspaces)
    out.pinned_host_bytes = sum(t.nbytes for t in out.pinned_host)
    out.other_bytes = sum(t.nbytes for t in out.other)
    out.total_bytes = (out.weights_bytes + out.kv_bytes_allocated + out.activations_bytes + out.pinned_host_bytes
                       + out.other_bytes)
    if device.get("total_bytes") is not None:
        out.device_total_bytes = int(device["total_bytes"])
    if device.get("free_bytes") is not None:
        out.device_free_bytes = int(device["free_bytes"])
    if device.get("process_used_bytes") is not None:
        out.device_process_used_bytes = int(device["process_used_bytes"])
    positions = kv.get("slot_positions") or {}
    max_positions = int(kv.get("max_positions", 0))
    out.kv_cache.CopyFrom(memory_pb2.KVCacheStats(
        slots_total=int(kv.get("slots_total", 0)), slots_in_use=int(kv.get("slots_in_use", 0)),
        max_positions=max_positions, sink_tokens=int(kv.get("sink_tokens", 0)), dtype=str(kv.get("dtype", "")),
        slots=[memory_pb2.SlotUsage(slot=int(s), position=int(p), valid_positions=min(int(p), max_positions))
               for s, p in sorted(positions.items())]))
    queue = stats.get("queue") or {}
    out.queue_depth = int(queue.get("waiting_requests", queue.get("waiting", 0)))
    return out
