"""StreamingKVCache: creation, O(1) append bookkeeping, circular wrap with attention sinks, range read of the
valid entries, and a memory bound (allocated once; in-use bytes never exceed it), checked against independent
reimplementations of the ring rule (a Python deque of token numbers)."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from service.backends.kv_layout import KVLayout
from service.backends.numpy_backend import NumpyKVArena
from service.config import CacheConfig
from service.engine.core import kv_layout_for
from service.engine.kv_cache import StreamingKVCache
from service.errors import OverloadedError
from test_engine_fakes import FakeModel


def layout(slots=3, max_positions=20, sinks=4, kvh=2, hd=32, layers=3, dtype="f16") -> KVLayout:
    return KVLayout(n_layers=layers, slots=slots, max_positions=max_positions, sink_tokens=sinks,
                    n_kv_heads=kvh, head_dim=hd, dtype=dtype)


def test_creation_sizes_and_accounting():
    lay = layout()
    arena = NumpyKVArena(lay)
    cache = StreamingKVCache(lay, arena)
    per_token_layer = 2 * (2 * 32) * 2  # K and V, kvh * hd values, 2 bytes (f16)
    assert lay.bytes_per_token_layer == per_token_layer
    assert lay.total_bytes == 3 * 3 * 20 * per_token_layer
    assert sum(k.nbytes + v.nbytes for k, v in zip(arena.k, arena.v)) == lay.total_bytes
    assert arena.k[0].shape == (3, 20, 2, 32)
    st = cache.stats()
    assert (st["slots_in_use"], st["bytes_in_use"], st["bytes_allocated"]) == (0, 0, lay.total_bytes)
    q8 = layout(dtype="q8")
    a8 = NumpyKVArena(q8)
    assert sum(k.nbytes + v.nbytes + ks.nbytes + vs.nbytes
               for k, v, ks, vs in zip(a8.k, a8.v, a8.k_scale, a8.v_scale)) == q8.total_bytes


def test_slots_allocate_free_and_refuse_when_full():
    cache = StreamingKVCache(layout(slots=2))
    a, b = cache.allocate(), cache.allocate()
    assert {a, b} == {0, 1} and cache.free_slots == 0
    with pytest.raises(OverloadedError):
        cache.allocate()
    cache.advance(a, 7)
    cache.free(a)
    cache.free(a)  # idempotent
    c = cache.allocate()
    assert c == a and cache.n_seen(c) == 0  # a reused slot starts empty


def test_append_wrap_and_valid_positions_follow_the_ring_rule():
    lay = layout(max_positions=12, sinks=3)
    cache = StreamingKVCache(lay)
    slot = cache.allocate()
    ring: deque[int] = deque(maxlen=lay.window)  # independent model of the window
    sinks: list[int] = []
    for n in range(50):
        cache.advance(slot, 1)
        (sinks if n < 3 else ring).append(n)
        assert cache.valid_positions(slot) == len(sinks) + len(ring) == min(n + 1, 12)
        assert list(lay.valid_token_numbers(n + 1)) == sinks + list(ring)
        held = lay.index(np.array(sinks + list(ring)))
        assert len(set(held.tolist())) == len(held)  # distinct storage rows
        assert held.max() < lay.max_positions
    assert cache.bytes_in_use_per_layer() == 12 * lay.bytes_per_token_layer


@pytest.mark.parametrize("dtype,tol", [("f16", 1e-3), ("q8", 2e-2)])
def test_arena_range_read_returns_sinks_then_window_in_order(dtype, tol):
    lay = layout(slots=2, max_positions=16, sinks=4, dtype=dtype)
    arena = NumpyKVArena(lay)
    rng = np.random.default_rng(0)
    total = 45
    k_all = rng.standard_normal((total, 2, 32)).astype(np.float32)  # (n, kvh, hd)
    v_all = rng.standard_normal((total, 2, 32)).astype(np.float32)
    # slot 1 one token at a time; slot 0 in uneven chunks (one of them larger than the window)
    for n in range(total):
        arena.write(1, 1, n, k_all[n:n + 1], v_all[n:n + 1])
    start = 0
    for size in (3, 5, 14, 1, 22):
        arena.write(1, 0, start, k_all[start:start + size], v_all[start:start + size])
        start += size
    assert start == total
    want = list(range(4)) + list(range(total - 12, total))
    for slot in (0, 1):
        k, v, pos = arena.read(1, slot, total)
        assert list(pos) == want
        np.testing.assert_allclose(k, k_all[want], atol=tol * 4)
        np.testing.assert_allclose(v, v_all[want], atol=tol * 4)
    other = arena.read(0, 0, total)[0]  # another layer was never written
    assert not np.any(other)


def test_memory_is_allocated_once_and_bounded():
    lay = layout(slots=2, max_positions=16, sinks=2)
    arena = NumpyKVArena(lay)
    cache = StreamingKVCache(lay, arena)
    buffers = [id(a) for a in arena.k + arena.v]
    s = cache.allocate()
    x = np.ones((1, 2, 32), np.float32)
    for n in range(200):
        for layer in range(lay.n_layers):
            arena.write(layer, s, n, x, x)
        cache.advance(s, 1)
        st = cache.stats()
        assert st["bytes_in_use"] <= st["bytes_allocated"] == lay.total_bytes
    assert [id(a) for a in arena.k + arena.v] == buffers  # no reallocation
    per_layer = cache.per_layer()
    assert len(per_layer) == lay.n_layers
    assert all(r["bytes_in_use"] == 16 * lay.bytes_per_token_layer for r in per_layer)
    assert sum(r["bytes_in_use"] for r in per_layer) == cache.stats()["bytes_in_use"]
    cache.free(s)
    assert cache.stats()["bytes_in_use"] == 0


def test_sinks_are_never_overwritten():
    lay = layout(slots=1, max_positions=10, sinks=3)
    arena = NumpyKVArena(lay)
    for n in range(100):
        val = np.full((1, 2, 32), float(n), np.float32)
        arena.write(0, 0, n, val, val)
    k, _, pos = arena.read(0, 0, 100)
    assert list(pos[:3]) == [0, 1, 2]
    assert list(k[:3, 0, 0]) == [0.0, 1.0, 2.0]
    assert list(k[3:, 0, 0]) == [float(n) for n in range(93, 100)]


def test_sizing_by_slots_or_by_byte_budget():
    model = FakeModel()
    by_slots = kv_layout_for(model, CacheConfig(slots=5, max_positions=64, sink_tokens=4))
    assert by_slots.slots == 5
    one_slot = kv_layout_for(model, CacheConfig(slots=1, max_positions=64, sink_tokens=4)).total_bytes
    budget_mb = (7.5 * one_slot) / 2 ** 20
    by_budget = kv_layout_for(model, CacheConfig(max_positions=64, sink_tokens=4, memory_budget_mb=budget_mb))
    assert by_budget.slots == 7 and by_budget.total_bytes <= budget_mb * 2 ** 20
