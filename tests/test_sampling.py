"""Sampling against independent float64 definitions: greedy, temperature/top_k/top_p/min_p filtering, the
empirical distribution of draws, penalties, logit_bias, logprobs, per-choice seeding, and validation."""

from __future__ import annotations

import numpy as np
import pytest

from service.engine.request import SamplingParams
from service.engine.sampling import apply_penalties, filtered_probs, sample
from service.engine.sequence import choice_generator
from service.errors import InvalidRequestError

V = 769  # odd vocabulary size


def logits_row(seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(V) * 3).astype(np.float32)  # (V,)


def ref_probs(x: np.ndarray, t: float, top_k: int, top_p: float, min_p: float) -> np.ndarray:
    """(V,) the filtered distribution, written from the definitions in float64 with a Python loop."""
    z = x.astype(np.float64) / t
    p = np.exp(z - z.max())
    p /= p.sum()
    order = sorted(range(V), key=lambda i: (-p[i], i))
    keep = set(order[:top_k] if top_k else order)
    if top_p < 1.0:
        # renormalise over the top-k set, then the smallest prefix whose mass reaches top_p
        mass = sum(p[i] for i in keep)
        acc, nucleus = 0.0, set()
        for i in order:
            if i not in keep:
                continue
            nucleus.add(i)
            acc += p[i] / mass
            if acc >= top_p:
                break
        keep &= nucleus
    if min_p > 0:
        pmax = max(p[i] for i in keep)
        keep = {i for i in keep if p[i] >= min_p * pmax} or {order[0]}
    out = np.zeros(V)
    for i in keep:
        out[i] = p[i]
    return out / out.sum()


@pytest.mark.parametrize("t,top_k,top_p,min_p", [(1.0, 0, 1.0, 0.0), (0.7, 50, 1.0, 0.0), (1.3, 0, 0.9, 0.0),
                                                  (1.0, 40, 0.8, 0.0), (0.9, 0, 1.0, 0.05), (1.1, 100, 0.95, 0.02)])
def test_filtered_distribution_matches_definition(t, top_k, top_p, min_p):
    x = logits_row(1)
    params = SamplingParams(temperature=t, top_k=top_k, top_p=top_p, min_p=min_p)
    ids, p = filtered_probs(x.astype(np.float64), params)
    got = np.zeros(V)
    got[ids] = p
    np.testing.assert_allclose(got, ref_probs(x, t, top_k, top_p, min_p), rtol=1e-9, atol=1e-12)


def test_draws_follow_the_distribution():
    x = logits_row(2)[:]
    x[:] = -20
    x[[3, 100, 500, 768]] = np.log([0.1, 0.2, 0.3, 0.4])  # four plausible tokens, the rest negligible
    params = SamplingParams(temperature=1.0, seed=0)
    rng = choice_generator(5, 0)
    n = 8000
    counts = np.bincount([sample(x, params, rng, [], {}).token for _ in range(n)], minlength=V)
    expect = np.exp(x.astype(np.float64)) / np.exp(x.astype(np.float64)).sum()
    # 5-sigma binomial bounds
    sigma = np.sqrt(n * expect * (1 - expect))
    assert np.all(np.abs(counts - n * expect) <= 5 * sigma + 1)


def test_greedy_is_argmax_after_bias_and_penalties():
    x = logits_row(3)
    best = int(np.argmax(x))
    assert sample(x, SamplingParams(temperature=0), choice_generator(None, 0), [], {}).token == best
    banned = SamplingParams(temperature=0, logit_bias={best: -100.0})
    x2 = x.astype(np.float64).copy()
    x2[best] -= 100
    assert sample(x, banned, choice_generator(None, 0), [], {}).token == int(np.argmax(x2))
    forced = SamplingParams(temperature=0.8, seed=1, logit_bias={7: 100.0})
    assert all(sample(x, forced, choice_generator(1, i), [], {}).token == 7 for i in range(5))


def test_penalties_match_openai_and_ctrl_formulas():
    x = np.array([2.0, -1.0, 0.5, 3.0, -2.0], np.float32)
    prompt = [0, 1]
    counts = {3: 2, 4: 1}  # generated: token 3 twice, token 4 once
    p = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25, repetition_penalty=1.5)
    got = apply_penalties(x, p, prompt, counts)
    want = np.array([2.0 / 1.5, -1.0 * 1.5, 0.5, 3.0 / 1.5 - 0.25 * 2 - 0.5, -2.0 * 1.5 - 0.25 - 0.5])
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_logprobs_are_the_raw_log_softmax_and_top_is_sorted():
    x = logits_row(4)
    params = SamplingParams(temperature=0.5, seed=3, logprobs=True, top_logprobs=5)
    res = sample(x, params, choice_generator(3, 0), [], {})
    x64 = x.astype(np.float64)
    lsm = x64 - np.log(np.sum(np.exp(x64)))
    assert res.logprob == pytest.approx(lsm[res.token], abs=1e-9)
    top_ids = [t for t, _ in res.top]
    assert top_ids == list(np.argsort(-lsm)[:5])
    assert [lp for _, lp in res.top] == pytest.approx(list(np.sort(lsm)[::-1][:5]), abs=1e-9)


def test_seed_and_choice_index_fix_the_draws():
    x = logits_row(5)
    params = SamplingParams(temperature=1.0, seed=123)

    def draws(seed, index):
        rng = choice_generator(seed, index)
        return [sample(x, params, rng, [], {}).token for _ in range(30)]

    assert draws(123, 0) == draws(123, 0)
    assert draws(123, 0) != draws(123, 1)
    assert draws(123, 0) != draws(124, 0)
    assert draws(-5, 0) == draws(-5, 0)  # negative seeds are accepted


@pytest.mark.parametrize("field,kwargs", [
    ("temperature", {"temperature": -0.1}), ("temperature", {"temperature": float("nan")}),
    ("top_p", {"top_p": 0.0}), ("top_p", {"top_p": 1.5}), ("top_k", {"top_k": -1}),
    ("min_p", {"min_p": 1.5}), ("presence_penalty", {"presence_penalty": 2.5}),
    ("frequency_penalty", {"frequency_penalty": -3}), ("repetition_penalty", {"repetition_penalty": 0}),
    ("logit_bias", {"logit_bias": {5: 101.0}}), ("logit_bias", {"logit_bias": {-1: 1.0}}),
    ("stop", {"stop": ("",)}), ("stop", {"stop": tuple("abcdefghij")}), ("max_tokens", {"max_tokens": 0}),
    ("n", {"n": 0}), ("n", {"n": 100}), ("top_logprobs", {"top_logprobs": 3}),
    ("top_logprobs", {"top_logprobs": 21, "logprobs": True}), ("seed", {"seed": "7"}),
])
def test_validation_names_the_openai_field(field, kwargs):
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(**kwargs).validate(vocab_size=V)
    assert info.value.violations[0].field == field


def test_valid_params_pass():
    SamplingParams(temperature=0, top_p=0.5, top_k=5, min_p=0.1, seed=2 ** 63, presence_penalty=-2,
                   frequency_penalty=2, repetition_penalty=1.2, logit_bias={0: -100, V - 1: 100}, stop=("x", "yz"),
                   max_tokens=1, n=16, logprobs=True, top_logprobs=20).validate(vocab_size=V)
