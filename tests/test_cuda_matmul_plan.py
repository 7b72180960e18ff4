"""The CUDA matmul launcher's split-K plan (pure host logic: runs without a GPU)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from service.backends.cuda_matmul import BLOCKS_PER_SM, SPLIT_MIN_STEPS, TILE_K, TILE_N, CudaMatmul


def _mm(sm_count: int = 132, part_cap: int = 24 << 20) -> CudaMatmul:
    mm = CudaMatmul(SimpleNamespace(sm_count=sm_count))
    mm._part, mm._part_cap = object(), part_cap  # as if reserve() had run
    return mm


@pytest.mark.parametrize("m,n,k", [(32, 4096, 4096), (16, 11008, 4096), (64, 4096, 11008), (9, 576, 1536),
                                   (512, 4096, 4096), (512, 32000, 4096), (128, 11008, 4096)])
def test_split_plan_fills_the_gpu_without_breaking_its_bounds(m: int, n: int, k: int) -> None:
    mm = _mm()
    bm = mm.tile_m_for(m)
    s = mm.split_k(m, n, k, bm)
    tiles = -(-n // TILE_N) * -(-m // bm)
    slots = BLOCKS_PER_SM[bm] * 132
    assert s == 1 or -(-k // TILE_K) // s >= SPLIT_MIN_STEPS  # every split keeps enough K steps
    assert s == 1 or s * m * n * 4 <= mm._part_cap  # the partials fit
    if tiles >= slots:
        assert s == 1  # the output tiles alone fill the GPU: splitting only adds partial traffic
    # no other split count finishes in fewer block-waves per unit of work
    steps_ok = [c for c in range(1, 9) if c == 1 or (-(-k // TILE_K) // c >= SPLIT_MIN_STEPS and c * m * n * 4 <= mm._part_cap)]
    cost = lambda c: -(-tiles * c // slots) / c  # noqa: E731
    assert cost(s) == min(cost(c) for c in steps_ok)


def test_decode_sized_matmuls_are_split() -> None:
    mm = _mm()
    assert mm.split_k(32, 4096, 4096, 32) >= 4  # 32 output tiles on 264 block slots
    assert mm.split_k(16, 11008, 4096, 32) >= 2


def test_split_respects_a_small_partials_buffer() -> None:
    mm = _mm(part_cap=4 * 32 * 4096 * 2)  # room for 2 partial (32, 4096) tiles
    assert mm.split_k(32, 4096, 4096, 32) == 2


@pytest.mark.parametrize("k", [256, 2048, 4096, 5376, 11008, 14336])
def test_workspace_regions_do_not_overlap(k: int) -> None:
    """The int8 / scale arrays of the widest use (VEC_MAX_ROWS rows), the decode copy of x (2 passes of Kp bytes),
    its scales and its 16-value sums follow one another inside workspace_bytes, each 16-byte aligned for the
    kernels' vector loads."""
    from service.backends.cuda_matmul import VEC_MAX_ROWS

    base = 1 << 20
    xq, xds = CudaMatmul._ws_parts(base, VEC_MAX_ROWS, k)
    xd, dsd, xs16 = CudaMatmul._dec_parts(base, k)
    kp = CudaMatmul.dec_kp(k)
    assert kp >= k and kp % 2048 == 0  # whole 32-unit groups of 64 values
    spans = [(xq, VEC_MAX_ROWS * k), (xds, VEC_MAX_ROWS * (k // 32) * 8), (xd, 2 * kp), (dsd, (k // 32) * 8),
             (xs16, (k // 16) * 4)]
    for (a, n), (b, _) in zip(spans, spans[1:]):
        assert a + n <= b
    assert all(p % 16 == 0 for p, _ in spans)
    assert xs16 + (k // 16) * 4 <= base + CudaMatmul.workspace_bytes(1, k) <= base + CudaMatmul.workspace_bytes(8, k + 256)


def test_decode_kernel_configuration_by_type_and_width() -> None:
    """DEC_CONFIG: Q4_K and Q6_K at every K (above DEC_SHORT_K their long-row configurations); a variant overrides
    the configuration only where the type compiles it; a K-split configuration's block covers two groups."""
    from gguf import GGMLQuantizationType as T

    from service.backends.cuda_matmul import DEC_CONFIG, DEC_SHORT_K, DeviceWeight

    w = lambda t, k: DeviceWeight("w", t, 4096, k, 0, 0, 0, 0)  # noqa: E731
    assert CudaMatmul.dec_kernel(w(T.Q4_K, 11008))[0] == f"matmul_dec_q4_k_{DEC_CONFIG['q4_k'][1]}"
    assert CudaMatmul.dec_kernel(w(T.Q6_K, DEC_SHORT_K))[0] == f"matmul_dec_q6_k_{DEC_CONFIG['q6_k'][0]}"
    assert CudaMatmul.dec_kernel(w(T.Q6_K, DEC_SHORT_K + 256))[0] == f"matmul_dec_q6_k_{DEC_CONFIG['q6_k'][1]}"
    assert CudaMatmul.dec_kernel(w(T.Q6_K, 11008), "dec:r2s2/r2k2s2") == ("matmul_dec_q6_k_r2k2s2", 4)
    assert CudaMatmul.dec_kernel(w(T.Q6_K, 11008), "dec:r1s2")[0] == "matmul_dec_q6_k_r1s2"
    assert CudaMatmul.dec_kernel(w(T.Q6_K, 4096), "dec:r4p1")[0] == f"matmul_dec_q6_k_{DEC_CONFIG['q6_k'][0]}"
    name, rows = CudaMatmul.dec_kernel(w(T.Q4_K, 11008), "dec:r2s2/r4p1")
    assert (name, rows) == ("matmul_dec_q4_k_r4p1", 16)
