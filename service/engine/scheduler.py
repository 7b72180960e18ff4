"""Continuous-batching scheduler: pure policy deciding which sequences run in the next step.

Every step: (1) each running sequence that is decoding gets one row; (2) running sequences still prefilling
get their next prompt chunk while the step's token budget allows; (3) waiting sequences are admitted (FIFO)
while a KV slot is free, fewer than `max_running` run, and their first chunk fits the budget.

Batch invariance: how a prompt is split into chunks depends only on the request: chunk k covers prompt
tokens [k * prefill_chunk, min((k + 1) * prefill_chunk, len)). The budget only decides WHICH chunks run in a
step, never how a prompt is cut, so a sequence's arithmetic is the same alone or in any batch.
`prefill_chunk <= step_token_budget - max_running`, so a chunk always fits beside a full decode batch.

`schedule()` returns a plain `SchedulerOutput`; the engine executes it and calls `finish()` for sequences
that end. No model, no numpy arrays: testable with fake sequences.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from service.engine.kv_cache import StreamingKVCache
from service.engine.request import Request, SeqStatus
from service.engine.sequence import Sequence
from service.errors import OverloadedError


@dataclass(frozen=True)
class ScheduledChunk:
    seq: Sequence
    start: int  # first token index (= tokens already in the cache)
    n_new: int  # tokens fed this step
    want_logits: bool  # True when this chunk reaches the end of the sequence's known tokens


@dataclass(frozen=True)
class SchedulerOutput:
    chunks: tuple[ScheduledChunk, ...]  # decode rows first, then prefill chunks, in admission order
    admitted: tuple[Sequence, ...]  # sequences that got a slot this step

    @property
    def n_tokens(self) -> int:
        return sum(c.n_new for c in self.chunks)

    @property
    def empty(self) -> bool:
        return not self.chunks


class Scheduler:
    def __init__(self, cache: StreamingKVCache, max_running: int, max_waiting: int, step_token_budget: int,
                 prefill_chunk: int | None = None, retry_after_s: float = 1.0):
        self.cache = cache
        self.max_running = max(1, min(max_running, cache.layout.slots))
        self.max_waiting = max_waiting  # waiting requests (not sequences) beyond which add() refuses
        self.step_token_budget = step_token_budget
        fit = max(1, step_token_budget - self.max_running)
        self.prefill_chunk = min(prefill_chunk or fit, fit)
        self.retry_after_s = retry_after_s
        self.waiting: deque[Sequence] = deque()  # FIFO, no slot
        self.running: list[Sequence] = []  # own a slot, admission order

    # -- queue -------------------------------------------------------------------------------------
    def waiting_requests(self) -> int:
        return len({id(s.request) for s in self.waiting})

    def add(self, request: Request) -> None:
        """Queue every choice of a request, or refuse the whole request at once when the queue is full."""
        if self.waiting_requests() >= self.max_waiting:
            raise OverloadedError(f"server overloaded: {self.max_waiting} requests already waiting",
                                  retry_after_s=self.retry_after_s)
        for seq in request.seqs:
            seq.status = SeqStatus.WAITING
            self.waiting.append(seq)

    def finish(self, seq: Sequence) -> None:
        """Take a sequence out of the queue or the running set and free its KV slot (same step)."""
        if seq.status is SeqStatus.WAITING:
            try:
                self.waiting.remove(seq)
            except ValueError:
                pass
        elif seq.status is SeqStatus.RUNNING:
            self.running.remove(seq)
            assert seq.slot is not None
            self.cache.free(seq.slot)
            seq.slot = None
        seq.status = SeqStatus.FINISHED

    # -- policy ------------------------------------------------------------------------------------
    def _chunk_for(self, seq: Sequence) -> ScheduledChunk:
        start = seq.n_cached
        if seq.prefilling:
            n = min(self.prefill_chunk, seq.prompt_len - start)
        else:
            n = seq.n_pending
        return ScheduledChunk(seq, start, n, start + n == seq.total_len)

    def schedule(self) -> SchedulerOutput:
        budget = self.step_token_budget
        chunks: list[ScheduledChunk] = []
        for seq in self.running:  # decode rows: never starved
            if not seq.prefilling and seq.n_pending > 0:
                chunks.append(self._chunk_for(seq))
                budget -= chunks[-1].n_new
        for seq in self.running:  # prompt chunks of admitted sequences, oldest first
            if seq.prefilling:
                c = self._chunk_for(seq)
                if c.n_new <= budget:
                    chunks.append(c)
                    budget -= c.n_new
        admitted: list[Sequence] = []
        while self.waiting and len(self.running) < self.max_running and self.cache.free_slots > 0:
            seq = self.waiting[0]
            first = min(self.prefill_chunk, seq.prompt_len)
            if first > budget:
                break
            self.waiting.popleft()
            seq.slot = self.cache.allocate()
            seq.n_cached = 0
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            admitted.append(seq)
            c = self._chunk_for(seq)
            chunks.append(c)
            budget -= c.n_new
        return SchedulerOutput(tuple(chunks), tuple(admitted))
