"""AsyncEngine: the engine's public asyncio API for the transport layer (gRPC servicer, HTTP gateway).

    engine = AsyncEngine.from_config(config); engine.start()
    async for delta in engine.generate(prompt, SamplingParams(...), request_id=..., deadline=...):
        ...                       # Delta(index, text, token_ids, logprobs, finish_reason, usage)
    await engine.shutdown()

The step loop (`LLMEngine.step`) runs on its own thread, sleeping on a condition variable while there is no
work, so the event loop stays responsive while the model computes. Results travel to each request's
asyncio.Queue through `loop.call_soon_threadsafe`.

Errors: `generate` raises InvalidRequestError / ContextOverflowError / OverloadedError (with retry_after_s) /
UnavailableError on its first iteration; DeadlineExceededError mid-stream when the request's deadline
(absolute time.monotonic()) passes; CancelledError (ours, service.errors) when `abort(request_id)` is called
by someone else. Cancelling the consuming task or closing the iterator aborts the request and frees its
slots in the same step.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any, AsyncIterator, Callable

from service.config import Config
from service.engine.core import CompletionResult, EngineOutput, LLMEngine  # noqa: F401  (re-exported)
from service.engine.request import Delta, FinishReason, SamplingParams, Usage  # noqa: F401  (re-exported)
from service.errors import ChatTemplateError, LLMError, UnavailableError

Sink = Callable[[EngineOutput], None]


class AsyncEngine:
    def __init__(self, core: LLMEngine, model_name: str = "model", chat_template: Any = None,
                 loaded: Any = None):
        self.core = core
        self.model_name = model_name
        self.tokenizer = core.tokenizer
        self.chat_template = chat_template
        self.loaded = loaded  # service.model.loader.LoadedModel when built from a config
        self.context_length = core.context_length  # usable prompt + generation tokens
        self._sinks: dict[str, Sink] = {}
        self._sinks_lock = threading.Lock()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._state = "LOADING"
        self.fault: BaseException | None = None  # an unexpected exception that stopped the step loop

    @classmethod
    def from_config(cls, config: Config) -> "AsyncEngine":
        """Load the model named by the config (service/model/loader.py) and build the engine (not started)."""
        from service.model.loader import load_model
        loaded = load_model(config)
        core = LLMEngine(loaded.model, loaded.tokenizer, config)
        return cls(core, loaded.name, loaded.chat_template, loaded)

    # -- life cycle --------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="llm-engine", daemon=True)
        self._thread.start()
        self._state = "SERVING"

    async def shutdown(self, grace_s: float = 0.0) -> None:
        """Stop admitting (UnavailableError), let running work finish for up to grace_s, abort the rest,
        stop the thread. Every KV slot is free afterwards."""
        self._state = "DRAINING"
        self.core.stop_accepting()
        end = time.monotonic() + grace_s
        while self.core.has_work() and time.monotonic() < end and self._thread is not None:
            await asyncio.sleep(0.02)
        self._dispatch(self.core.abort_all())  # listeners get CancelledError; slots not in a step are freed now
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._thread = None
        while self.core.has_work():  # frees left by aborts of sequences that were in the last step
            self._dispatch(self.core.step())

    def health(self) -> str:
        return self._state

    # -- requests ----------------------------------------------------------------------------------
    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if self.chat_template is None:
            raise ChatTemplateError("this model has no chat template")
        return self.chat_template.render(messages, add_generation_prompt=add_generation_prompt)

    def chat_prompt_ids(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """The chat prompt as token ids: special tokens parsed, BOS per the model's flag and never doubled
        when the template writes it itself (ChatTemplate.encode). Use this, not render_chat + encode."""
        if self.chat_template is None:
            raise ChatTemplateError("this model has no chat template")
        return self.chat_template.encode(messages, add_generation_prompt=add_generation_prompt)

    async def generate(self, prompt: str | list[int], params: SamplingParams, request_id: str | None = None,
                       deadline: float | None = None) -> AsyncIterator[Delta]:
        """Stream the deltas of every choice (interleaved; `delta.index` says which). The final delta of the
        request carries `usage`."""
        if self._state != "SERVING":
            raise UnavailableError(f"engine is {self._state.lower()}")
        if self.fault is not None:
            raise UnavailableError(f"engine stopped after an internal error: {self.fault!r}")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[EngineOutput] = asyncio.Queue()
        rid = request_id or uuid.uuid4().hex
        with self._sinks_lock:
            if rid in self._sinks:
                from service.errors import InvalidRequestError
                raise InvalidRequestError.field("request_id", f"{rid!r} is already running")
            self._sinks[rid] = lambda out: loop.call_soon_threadsafe(queue.put_nowait, out)
        done = False
        try:
            self.core.add_request(prompt, params, rid, deadline)
            with self._wake:
                self._wake.notify()
            while True:
                out = await queue.get()
                if out.error is not None:
                    done = True
                    raise out.error
                assert out.delta is not None
                if out.delta.usage is not None:
                    done = True
                yield out.delta
                if done:
                    return
        finally:
            with self._sinks_lock:
                self._sinks.pop(rid, None)
            if not done:
                self.core.abort(rid)  # client went away: free its slots now (or at the end of this step)

    def abort(self, request_id: str) -> None:
        """Cancel a request (client cancelled); its iterator raises service.errors.CancelledError."""
        self._dispatch(self.core.abort(request_id, FinishReason.ABORT))

    # -- stats -------------------------------------------------------------------------------------
    def stats(self) -> dict:
        return dict(self.core.stats(), health=self._state)

    def memory_stats(self) -> dict:
        model = self.core.model
        backend = getattr(model, "backend", None)
        records = list(backend.memory_records()) if backend is not None else []
        return {
            "model": self.model_name,
            "backend": getattr(backend, "name", ""),
            "records": records,  # service.backends.base.MemoryRecord list (weights, kv, activations, ...)
            "kv_cache": self.core.cache.stats(),
            "device": backend.device_info() if backend is not None else {},
            "queue": self.core.stats(),
        }

    # -- the engine thread -------------------------------------------------------------------------
    def _dispatch(self, outputs: list[EngineOutput]) -> None:
        for out in outputs:
            with self._sinks_lock:
                sink = self._sinks.get(out.request_id)
            if sink is not None:
                sink(out)

    def _loop(self) -> None:
        try:
            while True:
                with self._wake:
                    while not self._stopping and not self.core.has_work():
                        self._wake.wait(timeout=0.5)
                    if self._stopping:
                        return
                self._dispatch(self.core.step())
        except BaseException as exc:  # an internal fault: fail every listener rather than hang them
            self.fault = exc
            err = UnavailableError(f"engine stopped after an internal error: {exc!r}")
            with self._sinks_lock:
                sinks = list(self._sinks.items())
            for rid, sink in sinks:
                sink(EngineOutput(rid, error=err))
            raise


__all__ = ["AsyncEngine", "LLMEngine", "SamplingParams", "Delta", "Usage", "CompletionResult", "LLMError"]
