"""Sampling one token from a row of logits with OpenAI's parameters, per sequence, in float64.

Order (as vLLM / llama.cpp): repetition penalty (prompt + output tokens) -> presence / frequency penalties
(output tokens) -> logit_bias -> temperature (0 = greedy argmax) -> top_k -> softmax -> top_p -> min_p ->
one uniform draw from the sequence's own generator, inverted through the cumulative distribution.

One draw per sampled token from the choice's generator (seeded from (seed, choice index)), so the same
request + seed yields the same tokens whatever else is in the batch. Log-probabilities reported to the client
are those of the model's raw distribution (log_softmax of the logits before penalties and temperature), as
vLLM reports by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.engine.request import SamplingParams


@dataclass(frozen=True)
class SampleResult:
    token: int
    logprob: float | None  # of the chosen token under the raw distribution (when logprobs were asked)
    top: tuple[tuple[int, float], ...]  # (token, logprob) of the top_logprobs most likely tokens


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """(V,) float64 log-probabilities."""
    x = logits.astype(np.float64)  # (V,)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def apply_penalties(logits: np.ndarray, params: SamplingParams, prompt_ids: list[int],
                    counts: dict[int, int]) -> np.ndarray:
    """(V,) float64 logits after repetition / presence / frequency penalties and logit_bias."""
    x = logits.astype(np.float64)  # (V,)
    if params.repetition_penalty != 1.0:
        seen = np.unique(np.asarray(list(prompt_ids) + list(counts), dtype=np.int64))  # (n_seen,)
        v = x[seen]
        x[seen] = np.where(v > 0, v / params.repetition_penalty, v * params.repetition_penalty)
    if counts and (params.presence_penalty or params.frequency_penalty):
        ids = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))  # (n_distinct,)
        cnt = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))  # (n_distinct,)
        x[ids] -= params.frequency_penalty * cnt + params.presence_penalty
    if params.logit_bias:
        ids = np.fromiter(params.logit_bias.keys(), dtype=np.int64, count=len(params.logit_bias))
        x[ids] += np.fromiter(params.logit_bias.values(), dtype=np.float64, count=len(params.logit_bias))
    return x


def filtered_probs(x: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """Temperature, top_k, top_p, min_p over processed logits x (V,) float64.
    Returns (candidate token ids (C,), their probabilities (C,) summing to 1), most likely first."""
    x = x / params.temperature  # (V,)
    if 0 < params.top_k < x.shape[0]:
        cand = np.sort(np.argpartition(-x, params.top_k - 1)[: params.top_k])  # (k,) by token id
    else:
        cand = np.arange(x.shape[0])  # (V,)
    order = cand[np.argsort(-x[cand], kind="stable")]  # (C,) most likely first; ties by token id
    z = x[order]
    p = np.exp(z - z[0])  # (C,)
    p /= p.sum()
    keep = p.shape[0]
    if params.top_p < 1.0:
        cum = np.cumsum(p)
        keep = min(keep, int(np.searchsorted(cum, params.top_p, side="left")) + 1)  # smallest set reaching top_p
    if params.min_p > 0.0:
        keep = min(keep, max(1, int(np.count_nonzero(p >= params.min_p * p[0]))))
    order, p = order[:keep], p[:keep]
    return order, p / p.sum()


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator,
           prompt_ids: list[int], counts: dict[int, int]) -> SampleResult:
    """Pick the next token of one sequence from its logits row (V,)."""
    x = apply_penalties(logits, params, prompt_ids, counts)  # (V,)
    if params.greedy:
        token = int(np.argmax(x))
    else:
        ids, p = filtered_probs(x, params)
        u = rng.random()
        token = int(ids[min(int(np.searchsorted(np.cumsum(p), u, side="right")), ids.shape[0] - 1)])
    if not params.logprobs:
        return SampleResult(token, None, ())
    lp = log_softmax(logits)  # (V,)
    top: tuple[tuple[int, float], ...] = ()
    if params.top_logprobs:
        k = params.top_logprobs
        idx = np.argpartition(-lp, k - 1)[:k]
        idx = idx[np.argsort(-lp[idx], kind="stable")]
        top = tuple((int(i), float(lp[i])) for i in idx)
    return SampleResult(token, float(lp[token]), top)
