"""One choice of a request: its tokens, KV slot, random generator, detokenizer and stop-string state.

Each choice is its own sequence (own slot, nothing shared). `all_ids` = prompt + generated tokens; the KV
cache holds the first `n_cached` of them (the cache's own count, `StreamingKVCache.n_seen(slot)`), so the
tokens still to feed the model are `all_ids[n_cached:]`: the prompt's remainder while prefilling, then the
one token sampled last step while decoding.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.engine.detokenizer import IncrementalDetokenizer
from service.engine.request import FinishReason, Request, SeqStatus
from service.engine.stop import StopMatcher

_SEQ_IDS = itertools.count()


def choice_generator(seed: int | None, index: int) -> np.random.Generator:
    """The choice's own generator: seeded from (seed, choice index) so nothing else in a batch changes it."""
    if seed is None:
        return np.random.default_rng()  # fresh OS entropy
    return np.random.default_rng([seed % (2 ** 64), index])


@dataclass(eq=False)
class Sequence:
    request: Request
    index: int  # choice index within the request
    detok: IncrementalDetokenizer
    stop: StopMatcher
    rng: np.random.Generator
    seq_id: int = field(default_factory=lambda: next(_SEQ_IDS))
    status: SeqStatus = SeqStatus.WAITING
    slot: int | None = None  # KV slot while RUNNING
    n_cached: int = 0  # tokens of all_ids appended to the KV cache (mirrors the cache's count)
    output_ids: list[int] = field(default_factory=list)  # generated tokens (an end-of-sequence token included)
    counts: dict[int, int] = field(default_factory=dict)  # generated token id -> occurrences (penalties)
    finish_reason: FinishReason | None = None
    text: str = ""  # emitted text so far (for generate_sync)
    # what the next delta carries (accumulated while text is held back)
    pending_ids: list[int] = field(default_factory=list)
    pending_logprobs: list[dict] = field(default_factory=list)

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def total_len(self) -> int:
        return self.prompt_len + len(self.output_ids)

    def token_at(self, start: int, n: int) -> list[int]:
        """all_ids[start:start + n] without building the whole list."""
        p = self.request.prompt_ids
        out: list[int] = []
        if start < len(p):
            out.extend(p[start:start + n])
        if start + n > len(p):
            out.extend(self.output_ids[max(0, start - len(p)):start + n - len(p)])
        return out

    @property
    def n_pending(self) -> int:
        """Tokens not yet fed to the model."""
        return self.total_len - self.n_cached

    @property
    def prefilling(self) -> bool:
        return self.n_cached < self.prompt_len

    def append(self, token: int) -> None:
        self.output_ids.append(token)
        self.counts[token] = self.counts.get(token, 0) + 1

    def describe(self) -> dict[str, Any]:
        return {"request_id": self.request.request_id, "index": self.index, "status": self.status.value,
                "slot": self.slot, "n_cached": self.n_cached, "generated": len(self.output_ids)}
