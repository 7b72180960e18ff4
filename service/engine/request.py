"""Engine requests: sampling parameters, finish reasons, the per-choice sequence state and the deltas streamed out.

A `Request` is what the transport submits (prompt tokens + `SamplingParams` + optional deadline). Each of its
`n` choices is its own `Sequence` with its own KV slot, its own random generator (seeded from (seed, index),
so batch composition never changes a draw), its own detokenizer and stop-string state. The engine streams
`Delta`s out: text and token ids as they become final, and a finish reason with usage at the end.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

from service.errors import InvalidRequestError

MAX_TOP_LOGPROBS = 20  # OpenAI's limit
MAX_N = 16
MAX_STOP_STRINGS = 4  # as OpenAI (and the proto) say


@dataclass(frozen=True)
class SamplingParams:
    """OpenAI's sampling parameters. Field names are the OpenAI JSON keys; `validate()` rejects bad values
    with `InvalidRequestError.field(<json key>, why)`."""

    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # nucleus: keep the smallest set of tokens whose probability reaches top_p
    top_k: int = 0  # keep the k most likely tokens (0 = off)
    min_p: float = 0.0  # drop tokens with probability < min_p * p(max)
    seed: int | None = None  # same request + seed -> same text, whatever else is in the batch
    presence_penalty: float = 0.0  # OpenAI: -2..2, subtracted once per token present in the output
    frequency_penalty: float = 0.0  # OpenAI: -2..2, subtracted per occurrence in the output
    repetition_penalty: float = 1.0  # CTRL / HF: logits of prompt+output tokens divided (>0) or multiplied (<0)
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> bias in [-100, 100]
    stop: tuple[str, ...] = ()  # stop strings: matched across token boundaries, never emitted
    max_tokens: int | None = None  # None = the engine's default (config.engine.max_tokens_default)
    n: int = 1  # choices per request
    logprobs: bool = False  # return the chosen token's log-probability
    top_logprobs: int = 0  # and the k most likely alternatives (needs logprobs)
    ignore_eos: bool = False  # keep generating after an end-of-sequence token

    def __hash__(self) -> int:  # logit_bias is a dict; hash by its items
        return hash((self.temperature, self.top_p, self.top_k, self.min_p, self.seed, self.presence_penalty,
                     self.frequency_penalty, self.repetition_penalty, tuple(sorted(self.logit_bias.items())),
                     self.stop, self.max_tokens, self.n, self.logprobs, self.top_logprobs, self.ignore_eos))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def plain_greedy(self) -> bool:
        """The next token is the argmax of the raw logits: greedy, nothing applied to the logits, no
        log-probabilities to report (so a backend may pick it on the device: LlamaModel.launch_greedy)."""
        return (self.greedy and not self.logprobs and not self.logit_bias and self.repetition_penalty == 1.0
                and self.presence_penalty == 0.0 and self.frequency_penalty == 0.0)

    def validate(self, vocab_size: int | None = None) -> "SamplingParams":
        """Raise InvalidRequestError naming the first bad field; return self when all is well."""
        def bad(name: str, why: str) -> InvalidRequestError:
            return InvalidRequestError.field(name, why)

        def finite(name: str, value: Any) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad(name, f"must be a finite number, got {value!r}")
            return float(value)

        def integer(name: str, value: Any) -> int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad(name, f"must be an integer, got {value!r}")
            return value

        if not 0.0 <= finite("temperature", self.temperature) <= 2.0:
            raise bad("temperature", "must be between 0 and 2")
        if not 0.0 < finite("top_p", self.top_p) <= 1.0:
            raise bad("top_p", "must be greater than 0 and at most 1")
        if integer("top_k", self.top_k) < 0:
            raise bad("top_k", "must be 0 (off) or positive")
        if not 0.0 <= finite("min_p", self.min_p) <= 1.0:
            raise bad("min_p", "must be between 0 and 1")
        if self.seed is not None and not -(2 ** 63) <= integer("seed", self.seed) < 2 ** 64:
            raise bad("seed", "must fit in 64 bits")
        if not -2.0 <= finite("presence_penalty", self.presence_penalty) <= 2.0:
            raise bad("presence_penalty", "must be between -2 and 2")
        if not -2.0 <= finite("frequency_penalty", self.frequency_penalty) <= 2.0:
            raise bad("frequency_penalty", "must be between -2 and 2")
        if not 0.0 < finite("repetition_penalty", self.repetition_penalty) <= 10.0:
            raise bad("repetition_penalty", "must be greater than 0 and at most 10")
        if not isinstance(self.logit_bias, dict):
            raise bad("logit_bias", "must map token ids to numbers")
        for tok, bias in self.logit_bias.items():
            if isinstance(tok, bool) or not isinstance(tok, int) or tok < 0 or (vocab_size is not None and tok >= vocab_size):
                raise bad("logit_bias", f"token id {tok!r} is not in the vocabulary")
            if not -100.0 <= finite("logit_bias", bias) <= 100.0:
                raise bad("logit_bias", f"bias for token {tok} must be between -100 and 100")
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) for s in self.stop):
            raise bad("stop", "must be a tuple of strings")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise bad("stop", f"at most {MAX_STOP_STRINGS} stop strings")
        if any(s == "" for s in self.stop):
            raise bad("stop", "stop strings must not be empty")
        if self.max_tokens is not None and integer("max_tokens", self.max_tokens) < 1:
            raise bad("max_tokens", "must be at least 1")
        if not 1 <= integer("n", self.n) <= MAX_N:
            raise bad("n", f"must be between 1 and {MAX_N}")
        if not isinstance(self.logprobs, bool):
            raise bad("logprobs", "must be a boolean")
        if not 0 <= integer("top_logprobs", self.top_logprobs) <= MAX_TOP_LOGPROBS:
            raise bad("top_logprobs", f"must be between 0 and {MAX_TOP_LOGPROBS}")
        if self.top_logprobs > 0 and not self.logprobs:
            raise bad("top_logprobs", "needs logprobs to be true")
        return self


class FinishReason(enum.Enum):
    """Why a choice ended. `api_name` is what OpenAI's `finish_reason` says (None: not an OpenAI reason;
    the request ends with an exception instead)."""

    STOP = "stop"  # end-of-sequence token or a stop string
    LENGTH = "length"  # max_tokens or the context limit
    ABORT = "abort"  # the client cancelled (transport maps to CANCELLED)
    DEADLINE = "deadline"  # the request's deadline passed (DeadlineExceededError)

    @property
    def api_name(self) -> str | None:
        return _API_FINISH[self]


_API_FINISH: dict[FinishReason, str | None] = {
    FinishReason.STOP: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.ABORT: None,
    FinishReason.DEADLINE: None,
}


class SeqStatus(enum.Enum):
    WAITING = "waiting"  # queued, no KV slot yet
    RUNNING = "running"  # owns a KV slot (prefilling or decoding)
    FINISHED = "finished"  # slot freed


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int  # over all choices
    total_tokens: int


@dataclass
class Delta:
    """One streamed piece of one choice. Joining `text` of every delta of a choice gives the full text."""

    index: int  # choice index (0 .. n-1)
    text: str = ""  # new text (stop strings are never in it)
    token_ids: list[int] = field(default_factory=list)  # tokens whose text is final with this delta
    logprobs: list[dict] | None = None  # [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]
    finish_reason: str | None = None  # "stop" | "length" on the choice's last delta, else None
    usage: Usage | None = None  # on the final delta of the request (after every choice finished)


@dataclass
class Request:
    """A submitted request: the engine-side record shared by its choices."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    max_tokens: int  # resolved (params.max_tokens or the engine default)
    deadline: float | None = None  # absolute time.monotonic()
    arrival: float = 0.0  # time.monotonic() at submit
    seqs: list[Any] = field(default_factory=list)  # its `Sequence`s, one per choice (engine.sequence.Sequence)
    error: Exception | None = None  # DeadlineExceededError / CancelledError when it ended that way

    @property
    def finished(self) -> bool:
        return all(s.status is SeqStatus.FINISHED for s in self.seqs)

    def usage(self) -> Usage:
        completion = sum(len(s.output_ids) for s in self.seqs)
        return Usage(len(self.prompt_ids), completion, len(self.prompt_ids) + completion)
