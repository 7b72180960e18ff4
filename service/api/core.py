"""ApiCore: every llm.v1 RPC over the engine, transport-free (proto request in, proto response out).

The gRPC servicer and the HTTP gateway are thin shells around this one object, so both speak the same
semantics: model resolution, admission (UNAVAILABLE while loading or draining), deadlines, aborting the
engine request when the caller goes away, metrics, and unary == the fold of the stream.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

from service.api import convert
from service.api.gen.llm.v1 import (chat_pb2, completions_pb2, memory_pb2, models_pb2, tokenize_pb2)
from service.api.memory import memory_stats_pb
from service.api.metrics import Metrics
from service.engine.request import Delta, SamplingParams
from service.errors import InvalidRequestError, ModelNotFoundError, UnavailableError

OWNED_BY = "llm-grpc-server"


class ApiCore:
    def __init__(self, engine: Any, metrics: Metrics | None = None):
        self.engine = engine
        self.metrics = metrics
        self.loaded_at = int(time.time())
        self.draining = False
        self.in_flight = 0  # generation requests running now (drain waits for 0)
        self._idle = asyncio.Event()
        self._idle.set()

    # -- state -------------------------------------------------------------------------------------
    def health(self) -> str:
        """LOADING | SERVING | DRAINING."""
        if self.draining:
            return "DRAINING"
        return self.engine.health() if self.engine is not None else "LOADING"

    def admit(self) -> None:
        state = self.health()
        if state != "SERVING":
            raise UnavailableError(f"the server is {state.lower()}; retry shortly")

    async def drain(self, grace_s: float) -> bool:
        """Refuse new work and wait up to grace_s for running requests; True when all finished."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=max(0.0, grace_s))
            return True
        except asyncio.TimeoutError:
            return False

    def _model(self, name: str) -> str:
        if name and name != self.engine.model_name:
            raise ModelNotFoundError(name, [self.engine.model_name])
        return self.engine.model_name

    # -- generation --------------------------------------------------------------------------------
    async def _deltas(self, prompt: str | list[int], params: SamplingParams, request_id: str,
                      deadline: float | None) -> AsyncIterator[Delta]:
        """The engine's deltas, timed for metrics; the engine request is aborted if the caller stops early
        (client cancelled, deadline passed, connection dropped)."""
        t0 = time.monotonic()
        last: dict[int, float] = {}
        first = True
        done = False
        self.in_flight += 1
        self._idle.clear()
        gen = self.engine.generate(prompt, params, request_id=request_id, deadline=deadline)
        try:
            async for delta in gen:
                now = time.monotonic()
                if delta.token_ids and self.metrics is not None:
                    if first:
                        self.metrics.ttft.observe(now - t0)
                        first = False
                    elif delta.index in last:
                        self.metrics.inter_token.observe((now - last[delta.index]) / len(delta.token_ids))
                    last[delta.index] = now
                if delta.usage is not None and self.metrics is not None:
                    self.metrics.prompt_tokens.inc(delta.usage.prompt_tokens)
                    self.metrics.generated_tokens.inc(delta.usage.completion_tokens)
                yield delta
            done = True
        finally:
            if not done:
                self.engine.abort(request_id)
            await gen.aclose()
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    def _completion_stream(self, req: completions_pb2.CompletionRequest, deadline: float | None
                           ) -> tuple[convert.CompletionStream, AsyncIterator[Delta]]:
        self.admit()
        header = convert.StreamHeader(convert.new_id("cmpl"), self._model(req.model))
        params = convert.completion_params(req)
        prompt = convert.completion_prompt(req)
        return (convert.CompletionStream(header, req.stream_options.include_usage),
                self._deltas(prompt, params, header.id, deadline))

    def _chat_stream(self, req: chat_pb2.ChatCompletionRequest, deadline: float | None
                     ) -> tuple[convert.ChatStream, AsyncIterator[Delta], int]:
        self.admit()
        header = convert.StreamHeader(convert.new_id("chatcmpl"), self._model(req.model))
        params = convert.chat_params(req)
        prompt = self.engine.chat_prompt_ids(convert.chat_messages(req.messages), add_generation_prompt=True)
        return (convert.ChatStream(header, req.stream_options.include_usage),
                self._deltas(prompt, params, header.id, deadline), params.n)

    async def create_completion(self, req: completions_pb2.CompletionRequest,
                                deadline: float | None = None) -> completions_pb2.Completion:
        stream, deltas = self._completion_stream(req, deadline)
        return stream.fold([d async for d in deltas])

    async def stream_completion(self, req: completions_pb2.CompletionRequest,
                                deadline: float | None = None) -> AsyncIterator[completions_pb2.Completion]:
        stream, deltas = self._completion_stream(req, deadline)
        async for delta in deltas:
            for chunk in stream.chunks(delta):
                yield chunk

    async def create_chat_completion(self, req: chat_pb2.ChatCompletionRequest,
                                     deadline: float | None = None) -> chat_pb2.ChatCompletion:
        stream, deltas, _n = self._chat_stream(req, deadline)
        return stream.fold([d async for d in deltas])

    async def stream_chat_completion(self, req: chat_pb2.ChatCompletionRequest,
                                     deadline: float | None = None) -> AsyncIterator[chat_pb2.ChatCompletionChunk]:
        stream, deltas, n = self._chat_stream(req, deadline)
        opened = False
        async for delta in deltas:
            if not opened:  # after the engine accepted the request, so a bad request fails before any chunk
                for chunk in stream.opening(n):
                    yield chunk
                opened = True
            for chunk in stream.chunks(delta):
                yield chunk

    # -- the rest ----------------------------------------------------------------------------------
    def list_models(self, req: models_pb2.ListModelsRequest | None = None) -> models_pb2.ListModelsResponse:
        self.admit()
        return models_pb2.ListModelsResponse(object="list", data=[models_pb2.Model(
            id=self.engine.model_name, object="model", created=self.loaded_at, owned_by=OWNED_BY,
            max_model_len=int(self.engine.context_length))])

    def tokenize(self, req: tokenize_pb2.TokenizeRequest) -> tokenize_pb2.TokenizeResponse:
        self.admit()
        self._model(req.model)
        if self.engine.tokenizer is None:
            raise InvalidRequestError.field("prompt", "this model has no tokenizer")
        add_special = req.add_special_tokens if req.HasField("add_special_tokens") else True
        if req.messages:
            ids = [int(t) for t in self.engine.chat_prompt_ids(convert.chat_messages(req.messages))]
        else:
            ids = [int(t) for t in self.engine.tokenizer.encode(req.prompt, add_special=add_special)]
        return tokenize_pb2.TokenizeResponse(tokens=ids, count=len(ids),
                                             max_model_len=int(self.engine.context_length))

    def detokenize(self, req: tokenize_pb2.DetokenizeRequest) -> tokenize_pb2.DetokenizeResponse:
        self.admit()
        self._model(req.model)
        vocab = int(self.engine.core.vocab_size)
        for i, t in enumerate(req.tokens):
            if not 0 <= t < vocab:
                raise InvalidRequestError.field(f"tokens[{i}]", f"token id {t} is not in [0, {vocab})")
        if self.engine.tokenizer is None:
            raise InvalidRequestError.field("tokens", "this model has no tokenizer")
        return tokenize_pb2.DetokenizeResponse(prompt=self.engine.tokenizer.decode(list(req.tokens)))

    def memory_stats(self, req: memory_pb2.MemoryStatsRequest) -> memory_pb2.MemoryStatsResponse:
        self.admit()
        stats = dict(self.engine.memory_stats())
        backend = getattr(getattr(self.engine.core, "model", None), "backend", None)
        stats.setdefault("backend", getattr(backend, "name", ""))
        return memory_stats_pb(self._model(req.model), stats)
