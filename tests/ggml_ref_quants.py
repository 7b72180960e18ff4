"""Test oracle: a literal, scalar (one value at a time, float32, sequential sums) Python transcription of
llama.cpp's quantize_row_q4_K_ref / q5_K_ref / q6_K_ref (ggml-quants.c), used to check that the vectorized
quantizers in service/model/quantize.py make the same choices. Slow by design: use it on a few blocks only.
"""

from __future__ import annotations

import numpy as np

f32 = np.float32
QK_K = 256


def nearest_int(v: np.float32) -> int:
    return int(np.rint(v))


def make_qkx2_quants(n, nmax, x, weights, rmin, rdelta, nstep):
    L = [0] * n
    mn, mx = x[0], x[0]
    sum_w = weights[0]
    sum_x = f32(sum_w * x[0])
    for i in range(1, n):
        mn = min(mn, x[i])
        mx = max(mx, x[i])
        sum_w = f32(sum_w + weights[i])
        sum_x = f32(sum_x + f32(weights[i] * x[i]))
    if mn > 0:
        mn = f32(0)
    if mx == mn:
        return f32(0), f32(-mn), [0] * n
    iscale = f32(f32(nmax) / f32(mx - mn))
    scale = f32(f32(1) / iscale)
    best_error = f32(0)
    for i in range(n):
        L[i] = max(0, min(nmax, nearest_int(f32(iscale * f32(x[i] - mn)))))
        diff = f32(f32(f32(scale * f32(L[i])) + mn) - x[i])
        best_error = f32(best_error + f32(weights[i] * f32(diff * diff)))
    for step in range(nstep + 1):
        iscale = f32(f32(f32(f32(rmin) + f32(f32(rdelta) * f32(step))) + f32(nmax)) / f32(mx - mn))
        sum_l = sum_l2 = sum_xl = f32(0)
        laux = [0] * n
        for i in range(n):
            l = max(0, min(nmax, nearest_int(f32(iscale * f32(x[i] - mn)))))
            laux[i] = l
            w = weights[i]
            sum_l = f32(sum_l + f32(w * f32(l)))
            sum_l2 = f32(sum_l2 + f32(f32(w * f32(l)) * f32(l)))
            sum_xl = f32(sum_xl + f32(f32(w * f32(l)) * x[i]))
        D = f32(f32(sum_w * sum_l2) - f32(sum_l * sum_l))
        if D > 0:
            this_scale = f32(f32(f32(sum_w * sum_xl) - f32(sum_x * sum_l)) / D)
            this_min = f32(f32(f32(sum_l2 * sum_x) - f32(sum_l * sum_xl)) / D)
            if this_min > 0:
                this_min = f32(0)
                this_scale = f32(sum_xl / sum_l2)
            cur = f32(0)
            for i in range(n):
                diff = f32(f32(f32(this_scale * f32(laux[i])) + this_min) - x[i])
                cur = f32(cur + f32(weights[i] * f32(diff * diff)))
            if cur < best_error:
                L, best_error, scale, mn = laux, cur, this_scale, this_min
    return scale, f32(-mn), L


def quantize_block_q4_k(x: np.ndarray) -> bytes:
    """One 256-value block -> 144 bytes."""
    head, L = _k_block(x, 15, -1.0, 20)
    qs = []
    for j in range(0, QK_K, 64):
        qs += [L[j + l] | (L[j + l + 32] << 4) for l in range(32)]
    return head + bytes(qs)


def quantize_block_q5_k(x: np.ndarray) -> bytes:
    """One 256-value block -> 176 bytes."""
    head, L = _k_block(x, 31, -0.5, 15)
    qh, ql = [0] * 32, []
    m1, m2 = 1, 2
    for n in range(0, QK_K, 64):
        for j in range(32):
            l1, l2 = L[n + j], L[n + j + 32]
            if l1 > 15:
                l1 -= 16
                qh[j] |= m1
            if l2 > 15:
                l2 -= 16
                qh[j] |= m2
            ql.append(l1 | (l2 << 4))
        m1 <<= 2
        m2 <<= 2
    return head + bytes(qh) + bytes(ql)


def _k_block(x: np.ndarray, nmax: int, rmin: float, nstep: int) -> tuple[bytes, list[int]]:
    """quantize_row_q4_K_ref / q5_K_ref up to the packing of the levels: (d | dmin | scales bytes, L)."""
    x = [f32(v) for v in x]
    L = [0] * QK_K
    scales, mins = [f32(0)] * 8, [f32(0)] * 8
    max_scale = max_min = f32(0)
    for j in range(8):
        xs = x[32 * j:32 * j + 32]
        sum_x2 = f32(0)
        for v in xs:
            sum_x2 = f32(sum_x2 + f32(v * v))
        av_x = f32(np.sqrt(f32(sum_x2 / f32(32))))
        weights = [f32(av_x + abs(v)) for v in xs]
        scales[j], mins[j], L[32 * j:32 * j + 32] = make_qkx2_quants(32, nmax, xs, weights, rmin, 0.1, nstep)
        max_scale = max(max_scale, scales[j])
        max_min = max(max_min, mins[j])
    inv_scale = f32(f32(63) / max_scale) if max_scale > 0 else f32(0)
    inv_min = f32(f32(63) / max_min) if max_min > 0 else f32(0)
    packed = [0] * 12
    ls_all, lm_all = [], []
    for j in range(8):
        ls = min(63, nearest_int(f32(inv_scale * scales[j])))
        lm = min(63, nearest_int(f32(inv_min * mins[j])))
        ls_all.append(ls)
        lm_all.append(lm)
        if j < 4:
            packed[j] = ls
            packed[j + 4] = lm
        else:
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
            packed[j - 4] |= (ls >> 4) << 6
            packed[j] |= (lm >> 4) << 6
    d16 = np.float16(f32(max_scale / f32(63)))
    dmin16 = np.float16(f32(max_min / f32(63)))
    for j in range(8):
        d = f32(f32(d16) * f32(ls_all[j]))
        if d == 0:
            continue
        dm = f32(f32(dmin16) * f32(lm_all[j]))
        for ii in range(32):
            L[32 * j + ii] = max(0, min(nmax, nearest_int(f32(f32(x[32 * j + ii] + dm) / d))))
    return d16.tobytes() + dmin16.tobytes() + bytes(packed), L


def make_qx_quants_rmse1(n, nmax, x):
    mx = amax = f32(0)
    for v in x:
        if abs(v) > amax:
            amax, mx = abs(v), v
    if amax < f32(1e-15):
        return f32(0), [0] * n
    iscale = f32(f32(-nmax) / mx)
    L = [0] * n
    sumlx = suml2 = f32(0)
    for i in range(n):
        l = max(-nmax, min(nmax - 1, nearest_int(f32(iscale * x[i]))))
        L[i] = l + nmax
        w = f32(x[i] * x[i])
        sumlx = f32(sumlx + f32(f32(w * x[i]) * f32(l)))
        suml2 = f32(suml2 + f32(f32(w * f32(l)) * f32(l)))
    scale = f32(sumlx / suml2) if suml2 else f32(0)
    best = f32(scale * sumlx)
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = f32(-f32(f32(nmax) + f32(f32(0.1) * f32(step))) / mx)
        sumlx = suml2 = f32(0)
        ls = []
        for i in range(n):
            l = max(-nmax, min(nmax - 1, nearest_int(f32(iscale * x[i]))))
            ls.append(l)
            w = f32(x[i] * x[i])
            sumlx = f32(sumlx + f32(f32(w * x[i]) * f32(l)))
            suml2 = f32(suml2 + f32(f32(w * f32(l)) * f32(l)))
        if suml2 > 0 and f32(sumlx * sumlx) > f32(best * suml2):
            L = [l + nmax for l in ls]
            scale = f32(sumlx / suml2)
            best = f32(scale * sumlx)
    return scale, L


def quantize_block_q6_k(x: np.ndarray) -> bytes:
    """One 256-value block -> 210 bytes."""
    x = [f32(v) for v in x]
    L = [0] * QK_K
    scales = [f32(0)] * 16
    max_scale = max_abs = f32(0)
    for ib in range(16):
        scales[ib], L[16 * ib:16 * ib + 16] = make_qx_quants_rmse1(16, 32, x[16 * ib:16 * ib + 16])
        if abs(scales[ib]) > max_abs:
            max_abs, max_scale = abs(scales[ib]), scales[ib]
    if max_abs < f32(1e-15):
        return bytes(210)
    iscale = f32(f32(-128) / max_scale)
    d16 = np.float16(f32(f32(1) / iscale))
    sc = [min(127, nearest_int(f32(iscale * s))) for s in scales]
    for j in range(16):
        d = f32(f32(d16) * f32(sc[j]))
        if d == 0:
            continue
        for ii in range(16):
            L[16 * j + ii] = max(-32, min(31, nearest_int(f32(x[16 * j + ii] / d)))) + 32
    ql, qh = [0] * 128, [0] * 64
    for half, j in enumerate(range(0, QK_K, 128)):
        for l in range(32):
            q1, q2, q3, q4 = (L[j + l + 32 * k] for k in range(4))
            ql[64 * half + l] = (q1 & 0xF) | ((q3 & 0xF) << 4)
            ql[64 * half + l + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4)
            qh[32 * half + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)
    return bytes(ql) + bytes(qh) + np.array(sc, np.int8).tobytes() + d16.tobytes()
