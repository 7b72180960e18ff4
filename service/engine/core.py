"""LLMEngine: the synchronous engine core. One `step()` = schedule -> execute -> update.

    schedule  Scheduler.schedule(): which chunks run (pure policy, a plain SchedulerOutput)
    execute   model.forward(StepBatch) -> logits (S', vocab) for the chunks that end their known tokens
    update    sample, detokenize, stop rules, finish + free slots; returns the step's outputs

Overlapped decode (`engine.overlap_decode`): when every running sequence decodes with plain greedy sampling
(SamplingParams.plain_greedy), a step is launched (`model.launch_greedy`: the argmax taken where the logits are)
and its update waits for the next `step()`, which first launches the same sequences' following step on the
tokens the device already holds, then updates the previous one. The host's update, streaming and scheduling run
while the device computes. A sequence that ends at step n has already been fed to step n + 1: that row's result
is dropped and its slot freed when step n + 1 completes. The chain breaks (the in-flight step is completed, then
scheduling resumes) as soon as anything else has to happen: a request to admit, an abort, a sequence with one
token of budget left.

Thread-safety: `add_request` and `abort` may be called from any thread. A lock guards the bookkeeping (never
held while the model computes); a request aborted while its rows are in the forward pass is freed at the
end of that same step (overlapped: when the step in flight completes, at the start of the next `step()`).
Deadlines (absolute `time.monotonic()`) are checked at every step boundary.

The model is anything with `forward(StepBatch) -> np.ndarray (S', vocab)`, `hp` (LlamaHParams),
`kv_layout(slots, max_positions, sink_tokens, dtype)` and `alloc_kv(layout)`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence as Seq

import numpy as np

from service.backends.base import SeqChunk, StepBatch
from service.config import CacheConfig, Config, EngineConfig
from service.engine.detokenizer import IncrementalDetokenizer
from service.engine.kv_cache import StreamingKVCache
from service.engine.request import Delta, FinishReason, Request, SamplingParams, SeqStatus
from service.engine.sampling import SampleResult, sample
from service.engine.scheduler import ScheduledChunk, Scheduler, SchedulerOutput
from service.engine.sequence import Sequence, choice_generator
from service.engine.stop import StopMatcher
from service.errors import (CancelledError, ContextOverflowError, DeadlineExceededError, InvalidRequestError,
                            LLMError, UnavailableError)

log = logging.getLogger(__name__)


@dataclass
class EngineOutput:
    """One thing the engine hands to whoever listens for a request: a delta, or the error that ended it."""

    request_id: str
    delta: Delta | None = None
    error: BaseException | None = None  # a domain error (service.errors), or an internal fault


@dataclass
class _Launched:
    """A greedy decode step queued on the device whose update is still to come (overlapped decode)."""

    plan: SchedulerOutput
    tokens: Any  # GreedyTokens: result() -> (S,) int32, one per chunk


class CompletionResult(NamedTuple):
    text: str
    token_ids: list[int]
    finish_reason: str | None


def kv_layout_for(model: Any, cache: CacheConfig) -> Any:
    """The arena layout from the cache config: slots x max_positions, or as many slots as the byte budget holds."""
    if cache.memory_budget_mb is not None:
        probe = model.kv_layout(1, cache.max_positions, cache.sink_tokens, cache.kv_dtype)
        slots = max(1, int(cache.memory_budget_mb * 2 ** 20) // probe.total_bytes)
        return model.kv_layout(slots, cache.max_positions, cache.sink_tokens, cache.kv_dtype)
    return model.kv_layout(cache.slots, cache.max_positions, cache.sink_tokens, cache.kv_dtype)


class LLMEngine:
    def __init__(self, model: Any, tokenizer: Any, config: Config | None = None, *,
                 prefill_chunk: int | None = None, clock: Callable[[], float] = time.monotonic):
        config = config or Config()
        self.config = config
        self.model = model
        self.tokenizer = tokenizer
        self.clock = clock
        self.engine_config: EngineConfig = config.engine
        layout = kv_layout_for(model, config.cache)
        self.cache = StreamingKVCache(layout, model.alloc_kv(layout))  # the arena: allocated once, here
        if prefill_chunk is None:
            # the backend's preference (NumPy: short chunks, see NumpyBackend), else what fits the step budget
            prefill_chunk = config.engine.prefill_chunk or getattr(getattr(model, "backend", None),
                                                                   "preferred_prefill_chunk", None)
        self.scheduler = Scheduler(self.cache, config.engine.max_running, config.engine.max_waiting,
                                   config.engine.step_token_budget, prefill_chunk, config.engine.retry_after_s)
        self.vocab_size = int(model.hp.vocab_size)
        self.eos_ids: frozenset[int] = frozenset(getattr(tokenizer, "eos_ids", ()) or ())
        # usable prompt + generation length without streaming past the cache
        self.context_length = min(layout.max_positions, int(model.hp.context_length))
        self._lock = threading.RLock()
        self._requests: dict[str, Request] = {}
        self._in_flight: set[int] = set()  # seq_ids in the forward pass now
        self._accepting = True
        self.steps = 0
        overlap = config.engine.overlap_decode
        self.overlap = overlap == "on" or (overlap == "auto" and
                                           hasattr(getattr(model, "backend", None), "launch_greedy"))
        self._launched: _Launched | None = None  # a greedy step launched and not yet updated

    @classmethod
    def from_config(cls, config: Config) -> "LLMEngine":
        from service.model.loader import load_model
        loaded = load_model(config)
        engine = cls(loaded.model, loaded.tokenizer, config)
        engine.loaded = loaded  # type: ignore[attr-defined]
        return engine

    # -- submission --------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str | Seq[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InvalidRequestError.field("prompt", "this model has no tokenizer; send token ids")
            ids = list(self.tokenizer.encode(prompt))
        else:
            ids = [int(t) for t in prompt]
            if any(not 0 <= t < self.vocab_size for t in ids):
                raise InvalidRequestError.field("prompt", f"token ids must be in [0, {self.vocab_size})")
        if not ids:
            raise InvalidRequestError.field("prompt", "must not be empty")
        return ids

    def add_request(self, prompt: str | Seq[int], params: SamplingParams, request_id: str | None = None,
                    deadline: float | None = None) -> Request:
        """Validate, tokenize and queue. Raises InvalidRequestError, ContextOverflowError, OverloadedError
        (queue full; carries retry_after_s) or UnavailableError (shutting down) at once."""
        params.validate(self.vocab_size)
        ids = self.encode_prompt(prompt)
        if len(ids) > self.context_length:
            raise ContextOverflowError(len(ids), self.context_length)
        max_tokens = params.max_tokens if params.max_tokens is not None else self.engine_config.max_tokens_default
        request = Request(request_id or uuid.uuid4().hex, ids, params, max_tokens, deadline, self.clock())
        request.seqs = [Sequence(request, i, IncrementalDetokenizer(self.tokenizer), StopMatcher(params.stop),
                                 choice_generator(params.seed, i)) for i in range(params.n)]
        with self._lock:
            if not self._accepting:
                raise UnavailableError("the engine is shutting down")
            if request.request_id in self._requests:
                raise InvalidRequestError.field("request_id", f"{request.request_id!r} is already running")
            self.scheduler.add(request)
            self._requests[request.request_id] = request
        return request

    def abort(self, request_id: str, reason: FinishReason = FinishReason.ABORT) -> list[EngineOutput]:
        """End a request now: slots of sequences not in the running forward pass are freed immediately, the
        others at the end of the current step. Returns the error output for its listener (if any)."""
        with self._lock:
            request = self._requests.get(request_id)
            if request is None:
                return []
            return self._end_request(request, reason)

    def abort_all(self, reason: FinishReason = FinishReason.ABORT) -> list[EngineOutput]:
        """End every request (shutdown)."""
        with self._lock:
            return [o for r in list(self._requests.values()) for o in self._end_request(r, reason)]

    def _end_request(self, request: Request, reason: FinishReason) -> list[EngineOutput]:
        err: LLMError = DeadlineExceededError(f"request {request.request_id} reached its deadline") \
            if reason is FinishReason.DEADLINE else CancelledError(f"request {request.request_id} was cancelled")
        request.error = err
        for seq in request.seqs:
            if seq.status is not SeqStatus.FINISHED:
                seq.finish_reason = reason
                if seq.seq_id not in self._in_flight:
                    self.scheduler.finish(seq)
        self._forget_if_done(request)
        return [EngineOutput(request.request_id, error=err)]

    def _forget_if_done(self, request: Request) -> None:
        if request.finished:
            self._requests.pop(request.request_id, None)

    # -- state -------------------------------------------------------------------------------------
    def has_work(self) -> bool:
        with self._lock:
            return bool(self.scheduler.running or self.scheduler.waiting or self._launched is not None)

    def next_deadline(self) -> float | None:
        with self._lock:
            return min((r.deadline for r in self._requests.values() if r.deadline is not None), default=None)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"waiting": len(self.scheduler.waiting), "waiting_requests": self.scheduler.waiting_requests(),
                    "running": len(self.scheduler.running), "requests": len(self._requests),
                    "slots_in_use": self.cache.slots_in_use, "slots_total": self.cache.layout.slots}

    def stop_accepting(self) -> None:
        with self._lock:
            self._accepting = False

    # -- the step ----------------------------------------------------------------------------------
    def _expire_deadlines(self) -> list[EngineOutput]:
        now = self.clock()
        out: list[EngineOutput] = []
        for request in list(self._requests.values()):
            if request.deadline is not None and now >= request.deadline:
                out += self._end_request(request, FinishReason.DEADLINE)
        return out

    def step(self) -> list[EngineOutput]:
        """Run one engine step; returns what it produced (deltas and errors)."""
        with self._lock:
            outputs = self._expire_deadlines()
        if self._launched is not None:
            prev, self._launched = self._launched, None
            with self._lock:
                plan = self._follow_plan(prev.plan)
            if plan is not None:
                outputs += self._launch(plan, prev)
            outputs += self._complete(prev)
            if self._launched is not None:
                self.steps += 1
                return outputs
        with self._lock:
            plan = self.scheduler.schedule()
            self._in_flight = {c.seq.seq_id for c in plan.chunks}
        if plan.empty:
            return outputs
        if self._overlappable(plan):
            outputs += self._launch(plan, None)
            self.steps += 1
            return outputs
        try:
            logits = self._execute(plan)  # (S', vocab), lock not held
            with self._lock:
                outputs += self._update(plan, logits)
        except Exception as exc:  # a fault: fail this step's requests, keep the engine serving the rest
            outputs += self._failed(plan, exc)
        with self._lock:
            self._in_flight = set()
            outputs += self._expire_deadlines()
        self.steps += 1
        return outputs

    def _failed(self, plan: SchedulerOutput, exc: Exception) -> list[EngineOutput]:
        log.exception("engine step failed; ending the requests in it")
        with self._lock:
            return self._fail_plan(plan, exc)

    # -- overlapped decode -------------------------------------------------------------------------
    def _overlappable(self, plan: SchedulerOutput) -> bool:
        """Every chunk a plain-greedy decode row with a token to come after this one, and nothing else to run."""
        return (self.overlap and len(plan.chunks) == len(self.scheduler.running) and
                all(c.n_new == 1 and c.want_logits and c.seq.request.params.plain_greedy and self._room(c.seq)
                    for c in plan.chunks))

    def _room(self, seq: Sequence) -> bool:
        """Whether seq may generate another token after the one being computed (max_tokens, and the context
        where it is a limit)."""
        return len(seq.output_ids) + 1 < seq.request.max_tokens and (
            self.engine_config.allow_streaming_past_context or seq.total_len + 1 < self.context_length)

    def _follow_plan(self, prev: SchedulerOutput) -> SchedulerOutput | None:
        """The same sequences' next decode rows, fed from prev's tokens still on the device; None when anything
        else must happen first (an admission, an ended or aborted sequence, one whose budget ends with prev)."""
        s = self.scheduler
        if s.waiting and len(s.running) < s.max_running and self.cache.free_slots > 0:
            return None
        if len(prev.chunks) != len(s.running) or not all(
                c.seq.status is SeqStatus.RUNNING and c.seq.finish_reason is None and self._room(c.seq)
                for c in prev.chunks):
            return None
        return SchedulerOutput(tuple(ScheduledChunk(c.seq, c.seq.n_cached, 1, True) for c in prev.chunks), ())

    def _launch(self, plan: SchedulerOutput, prev: _Launched | None) -> list[EngineOutput]:
        """Queue a greedy decode step (after prev, on its tokens) as self._launched; a fault fails its requests."""
        try:
            token_ids = np.zeros(len(plan.chunks), np.int32) if prev is not None else \
                np.array([c.seq.token_at(c.start, 1)[0] for c in plan.chunks], np.int32)
            batch = StepBatch(token_ids, tuple(SeqChunk(c.seq.slot, c.start, 1) for c in plan.chunks),
                              self.cache.layout.max_positions)
            tokens = self.model.launch_greedy(batch, prev.tokens if prev is not None else None)
        except Exception as exc:
            return self._failed(plan, exc)
        for c in plan.chunks:
            self.cache.advance(c.seq.slot, 1)
            c.seq.n_cached += 1
        self._launched = _Launched(plan, tokens)
        return []

    def _complete(self, prev: _Launched) -> list[EngineOutput]:
        """Wait for a launched step's tokens and update its sequences; those also in the step launched since
        stay allocated until that one completes."""
        outputs: list[EngineOutput] = []
        busy = {c.seq.seq_id for c in self._launched.plan.chunks} if self._launched is not None else set()
        try:
            tokens = prev.tokens.result()  # (S,) int32
            with self._lock:
                outputs += self._update(prev.plan, tokens, busy)
        except Exception as exc:
            outputs += self._failed(prev.plan, exc)
        with self._lock:
            self._in_flight = busy
            outputs += self._expire_deadlines()
        return outputs

    def _fail_plan(self, plan: SchedulerOutput, exc: Exception) -> list[EngineOutput]:
        outputs: list[EngineOutput] = []
        for request in {id(c.seq.request): c.seq.request for c in plan.chunks}.values():
            if request.error is not None:
                continue
            request.error = exc
            for seq in request.seqs:
                if seq.status is not SeqStatus.FINISHED:
                    seq.finish_reason = seq.finish_reason or FinishReason.ABORT
                    self.scheduler.finish(seq)
            self._forget_if_done(request)
            outputs.append(EngineOutput(request.request_id, error=exc))
        return outputs

    def _execute(self, plan: SchedulerOutput) -> np.ndarray:
        token_ids = np.array([t for c in plan.chunks for t in c.seq.token_at(c.start, c.n_new)], dtype=np.int32)  # (T,)
        batch = StepBatch(token_ids=token_ids,
                          seqs=tuple(SeqChunk(c.seq.slot, c.start, c.n_new, c.want_logits) for c in plan.chunks),
                          max_positions=self.cache.layout.max_positions)
        run = getattr(self.model, "step", self.model.forward)  # LlamaModel.step may replay a CUDA graph
        logits = run(batch)  # (S', vocab)
        for c in plan.chunks:
            self.cache.advance(c.seq.slot, c.n_new)
            c.seq.n_cached += c.n_new
        return logits

    def _update(self, plan: SchedulerOutput, logits: np.ndarray, busy: set[int] = frozenset()) -> list[EngineOutput]:
        """logits: (S', vocab) rows of the chunks that want logits, or (S',) int32 tokens a launched greedy step
        chose. Sequences in `busy` (a step launched since) are not freed here."""
        outputs: list[EngineOutput] = []
        rows = [c for c in plan.chunks if c.want_logits]
        assert logits.shape[0] == len(rows), (logits.shape, len(rows))
        for c, row in zip(rows, logits):
            seq = c.seq
            if seq.status is SeqStatus.FINISHED or seq.finish_reason is not None:
                continue  # aborted while computing, or ended one step ago (overlapped decode); freed below
            params = seq.request.params
            res = sample(row, params, seq.rng, seq.request.prompt_ids, seq.counts) if row.ndim else \
                SampleResult(int(row), None, ())
            outputs += self._advance_sequence(seq, res)
        for c in plan.chunks:  # free sequences that ended (or were aborted mid-step) in this same step
            if c.seq.seq_id in busy:
                continue
            if c.seq.finish_reason is not None and c.seq.status is not SeqStatus.FINISHED:
                self.scheduler.finish(c.seq)
                self._forget_if_done(c.seq.request)
        return outputs

    def _advance_sequence(self, seq: Sequence, res: SampleResult) -> list[EngineOutput]:
        """Append the sampled token to seq and turn it into text; decide whether the choice ends."""
        params, request = seq.request.params, seq.request
        seq.append(res.token)
        finish: FinishReason | None = None
        text, stopped = "", False
        if res.token in self.eos_ids and not params.ignore_eos:
            finish = FinishReason.STOP
        else:
            seq.pending_ids.append(res.token)
            if res.logprob is not None:
                seq.pending_logprobs.append(self._logprob_entry(res))
            text, stopped = seq.stop.feed(seq.detok.add(res.token))
            if stopped:
                finish = FinishReason.STOP
        if finish is None:
            if len(seq.output_ids) >= request.max_tokens:
                finish = FinishReason.LENGTH
            elif not self.engine_config.allow_streaming_past_context and seq.total_len >= self.context_length:
                finish = FinishReason.LENGTH
        if finish is not None and not stopped:  # release what was held back
            tail, stopped = seq.stop.feed(seq.detok.flush())  # the decoder's last bytes may complete a stop string
            text += tail if stopped else tail + seq.stop.flush()
            if stopped:
                finish = FinishReason.STOP
        if finish is None and not text and self.tokenizer is not None:
            return []  # text held back (mid-character or a possible stop string): nothing to say yet
        seq.finish_reason = finish
        seq.text += text
        delta = Delta(index=seq.index, text=text, token_ids=seq.pending_ids,
                      logprobs=seq.pending_logprobs if params.logprobs else None,
                      finish_reason=finish.api_name if finish else None)
        seq.pending_ids, seq.pending_logprobs = [], []
        if finish is not None and all(s.finish_reason is not None for s in request.seqs):
            delta.usage = request.usage()
        return [EngineOutput(request.request_id, delta=delta)]

    def _logprob_entry(self, res: Any) -> dict:
        def entry(token: int, logprob: float) -> dict:
            raw = self.tokenizer.token_bytes(token) if self.tokenizer is not None else b""
            return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw),
                    "token_id": token}
        e = entry(res.token, res.logprob)
        e["top_logprobs"] = [entry(t, lp) for t, lp in res.top]
        return e

    # -- convenience -------------------------------------------------------------------------------
    def run_until_done(self, on_output: Callable[[EngineOutput], None] | None = None) -> None:
        while self.has_work():
            for out in self.step():
                if on_output is not None:
                    on_output(out)

    def generate_sync(self, prompts: Seq[str | Seq[int]], params: SamplingParams,
                      deadline: float | None = None) -> list[CompletionResult]:
        """Run prompts together to completion. One result per (prompt, choice), prompt-major:
        result[i * n + j] is choice j of prompt i. Raises the first error a request ended with."""
        requests = [self.add_request(p, params, deadline=deadline) for p in prompts]
        self.run_until_done()
        out: list[CompletionResult] = []
        for r in requests:
            if r.error is not None:
                raise r.error
            for s in r.seqs:
                out.append(CompletionResult(s.text, [t for t in s.output_ids if t not in self.eos_ids or
                                                     s.request.params.ignore_eos],
                                            s.finish_reason.api_name if s.finish_reason else None))
        return out
