"""NumPy reference ops against independent float64 definitions.

The attention test checks the StreamingKVCache trick (keys rotated once at their absolute position, sink keys
scored with the query rotated at its cache position) against the StreamingLLM definition computed from scratch:
keep the sinks and the last `window` tokens, renumber them 0..n-1 within the cache, rotate queries and keys at
those cache positions, attend.
"""

from __future__ import annotations

import numpy as np
import pytest

from service.backends.base import SeqChunk, StepBatch
from service.backends.kv_layout import KVLayout
from service.backends.numpy_backend import NumpyBackend
from service.model.gguf_file import RopeConfig


def rope_ref(x: np.ndarray, pos: np.ndarray, theta: float, mode: str) -> np.ndarray:
    """float64 rotary embedding via complex numbers. x: (T, H, d)."""
    d = x.shape[-1]
    freqs = theta ** (-np.arange(0, d, 2) / d)  # (d/2,)
    rot = np.exp(1j * pos[:, None, None] * freqs[None, None, :])  # (T, 1, d/2)
    if mode == "normal":
        z = (x[..., 0::2] + 1j * x[..., 1::2]) * rot
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = z.real, z.imag
    else:
        z = (x[..., : d // 2] + 1j * x[..., d // 2:]) * rot
        out = np.concatenate([z.real, z.imag], axis=-1)
    return out


@pytest.mark.parametrize("mode", ["normal", "neox"])
def test_rope_matches_complex_rotation(mode):
    rng = np.random.default_rng(1)
    T, H, d = 7, 3, 16
    x = rng.standard_normal((T, H * d)).astype(np.float32)
    pos = np.array([0, 1, 5, 17, 100, 1023, 4097])
    be = NumpyBackend()
    batch = StepBatch(np.zeros(T, np.int32), (SeqChunk(0, 0, T),), 8192)
    step = be.begin_step(batch)
    step.positions = pos.astype(np.int32)
    got = be.rope(x, step, H, RopeConfig(n_rot=d, theta=10000.0, mode=mode))
    ref = rope_ref(x.reshape(T, H, d).astype(np.float64), pos.astype(np.float64), 10000.0, mode).reshape(T, -1)
    assert np.abs(got - ref).max() < 1e-5 * np.abs(ref).max() * 10


def test_rms_norm_matches_float64():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 769)).astype(np.float32)
    w = rng.standard_normal(769).astype(np.float32)
    got = NumpyBackend().rms_norm(x, w, 1e-5)
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-5) * w
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-6


def streaming_reference(qs, ks, vs, n_sink, window, theta, n_heads, n_kv):
    """StreamingLLM from scratch, float64. qs/ks/vs: un-rotated per token, (N, H, d) / (N, Hk, d).
    Returns (N, H, d): each token attends to the sinks + the last `window` tokens (itself included),
    all renumbered by their order in the cache."""
    N, _, d = qs.shape
    group = n_heads // n_kv
    out = np.zeros_like(qs)
    for t in range(N):
        kept = [i for i in range(t + 1) if i < n_sink or i > t - window]  # cache order
        cache_pos = np.arange(len(kept), dtype=np.float64)
        k = rope_ref(ks[kept], cache_pos, theta, "normal")  # (n, Hk, d)
        q = rope_ref(qs[t:t + 1], cache_pos[-1:], theta, "normal")[0]  # (H, d), the newest entry
        for h in range(n_heads):
            s = k[:, h // group] @ q[h] / np.sqrt(d)
            p = np.exp(s - s.max())
            p /= p.sum()
            out[t, h] = p @ vs[kept][:, h // group]
    return out


@pytest.mark.parametrize("kv_dtype,tol", [("f16", 3e-3), ("q8", 3e-2)])
def test_attention_streaming_matches_definition(kv_dtype, tol):
    """Prefill a chunk, then decode well past the window (ring wraps several times), with GQA and sinks."""
    rng = np.random.default_rng(3)
    n_heads, n_kv, d = 4, 2, 32
    n_sink, max_pos = 2, 12  # window = 10
    N, prefill = 40, 7
    layout = KVLayout(n_layers=1, slots=3, max_positions=max_pos, sink_tokens=n_sink, n_kv_heads=n_kv,
                      head_dim=d, dtype=kv_dtype)
    qs = rng.standard_normal((N, n_heads, d))
    ks = rng.standard_normal((N, n_kv, d))
    vs = rng.standard_normal((N, n_kv, d))
    ref = streaming_reference(qs, ks, vs, n_sink, layout.window, 10000.0, n_heads, n_kv)

    be = NumpyBackend()
    arena = be.alloc_kv(layout)
    rope = RopeConfig(n_rot=d, theta=10000.0)
    slot = 1
    got = np.zeros_like(qs)
    done = 0
    while done < N:
        n = prefill if done == 0 else 1
        batch = StepBatch(np.zeros(n, np.int32), (SeqChunk(slot, done, n),), max_pos)
        step = be.begin_step(batch)
        q = qs[done:done + n].reshape(n, -1).astype(np.float32)
        k = ks[done:done + n].reshape(n, -1).astype(np.float32)
        v = vs[done:done + n].reshape(n, -1).astype(np.float32)
        q_win = be.rope(q, step, n_heads, rope)
        q_sink = be.rope(q, step, n_heads, rope, sink=True)
        k_rot = be.rope(k, step, n_kv, rope)
        o = be.attention(q_win, q_sink, k_rot, v, arena, 0, step, n_heads, n_kv)
        got[done:done + n] = o.reshape(n, n_heads, d)
        done += n
    err = np.abs(got - ref).max(axis=(1, 2)) / np.abs(ref).max()
    assert err.max() < tol, f"worst token {err.argmax()} error {err.max():.2e}"


def test_chunk_larger_than_window_matches_token_by_token():
    """A prefill chunk that overflows the ring must see, for each query, the keys it would have seen
    token by token (the old cache plus the chunk's own keys), not keys already overwritten."""
    rng = np.random.default_rng(4)
    n_heads, n_kv, d, max_pos, n_sink = 2, 1, 16, 8, 2
    layout = KVLayout(1, 2, max_pos, n_sink, n_kv, d, "f16")
    T = 20
    q = rng.standard_normal((T, n_heads * d)).astype(np.float32)
    k = rng.standard_normal((T, n_kv * d)).astype(np.float32)
    v = rng.standard_normal((T, n_kv * d)).astype(np.float32)
    be = NumpyBackend()
    arena = be.alloc_kv(layout)
    whole = be.attention(q, q, k, v, arena, 0, be.begin_step(StepBatch(np.zeros(T, np.int32), (SeqChunk(0, 0, T),), max_pos)),
                         n_heads, n_kv)
    singles = []
    for t in range(T):
        step = be.begin_step(StepBatch(np.zeros(1, np.int32), (SeqChunk(1, t, 1),), max_pos))
        singles.append(be.attention(q[t:t + 1], q[t:t + 1], k[t:t + 1], v[t:t + 1], arena, 0, step, n_heads, n_kv))
    np.testing.assert_allclose(whole, np.concatenate(singles), rtol=1e-5, atol=1e-6)
    # and both slots now hold the same cache contents
    np.testing.assert_array_equal(arena.k[0][0], arena.k[0][1])
