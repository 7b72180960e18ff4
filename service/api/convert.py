"""Parse at the edge, format at the edge: llm.v1 protos <-> engine domain types (SamplingParams, Delta).

Requests become (prompt, SamplingParams); the engine's `Delta`s become completion / chat chunks, and a whole
stream of deltas folds into the unary response (so unary == joined stream by construction). `to_json` is
the one proto -> OpenAI JSON conversion the HTTP gateway uses.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable

from google.protobuf import json_format, struct_pb2

from service.api.gen.llm.v1 import chat_pb2, common_pb2, completions_pb2
from service.engine.request import Delta, SamplingParams
from service.errors import InvalidRequestError

SYSTEM_FINGERPRINT = "fp_llm_grpc_server_v1"


def to_json(msg: Any) -> dict[str, Any]:
    """Proto -> OpenAI JSON object: OpenAI key names, zero values printed, unset optional fields left out."""
    return json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


# -- requests ---------------------------------------------------------------------------------------

def _opt(msg: Any, name: str, default: Any) -> Any:
    return getattr(msg, name) if msg.HasField(name) else default


def _common_params(req: Any, max_tokens: int | None, logprobs: bool, top_logprobs: int) -> SamplingParams:
    return SamplingParams(
        temperature=_opt(req, "temperature", 1.0), top_p=_opt(req, "top_p", 1.0), top_k=_opt(req, "top_k", 0),
        min_p=_opt(req, "min_p", 0.0), seed=_opt(req, "seed", None),
        presence_penalty=_opt(req, "presence_penalty", 0.0), frequency_penalty=_opt(req, "frequency_penalty", 0.0),
        repetition_penalty=_opt(req, "repetition_penalty", 1.0), logit_bias=dict(req.logit_bias),
        stop=tuple(req.stop), max_tokens=max_tokens, n=_opt(req, "n", 1), logprobs=logprobs,
        top_logprobs=top_logprobs, ignore_eos=req.ignore_eos)


def completion_params(req: completions_pb2.CompletionRequest) -> SamplingParams:
    """SamplingParams of a completion request (validated by the engine). `logprobs: k` = top-k alternatives."""
    if req.echo:
        raise InvalidRequestError.field("echo", "echo is not supported")
    wants_logprobs = req.HasField("logprobs")
    if wants_logprobs and req.logprobs < 0:
        raise InvalidRequestError.field("logprobs", "must be between 0 and 20")
    return _common_params(req, _opt(req, "max_tokens", None), wants_logprobs, req.logprobs if wants_logprobs else 0)


def completion_prompt(req: completions_pb2.CompletionRequest) -> str | list[int]:
    if req.prompt_token_ids:
        if any(t < 0 for t in req.prompt_token_ids):
            raise InvalidRequestError.field("prompt", "token ids must be non-negative")
        return list(req.prompt_token_ids)
    if not req.prompt:
        raise InvalidRequestError.field("prompt", "must not be empty")
    return req.prompt


def chat_params(req: chat_pb2.ChatCompletionRequest) -> SamplingParams:
    max_tokens = _opt(req, "max_tokens", None)
    if req.HasField("max_completion_tokens"):
        if req.max_completion_tokens < 1:
            raise InvalidRequestError.field("max_completion_tokens", "must be at least 1")
        max_tokens = req.max_completion_tokens
    return _common_params(req, max_tokens, req.logprobs, _opt(req, "top_logprobs", 0))


def chat_messages(messages: Iterable[chat_pb2.ChatMessage]) -> list[dict[str, str]]:
    """The conversation as the chat template expects it: [{"role", "content"(, "name")}]."""
    out = []
    for i, m in enumerate(messages):
        if not m.role:
            raise InvalidRequestError.field(f"messages[{i}].role", "is required")
        item = {"role": m.role, "content": m.content}
        if m.name:
            item["name"] = m.name
        out.append(item)
    if not out:
        raise InvalidRequestError.field("messages", "must contain at least one message")
    return out


# -- responses --------------------------------------------------------------------------------------

def usage_pb(usage: Any) -> common_pb2.Usage:
    return common_pb2.Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                            total_tokens=usage.total_tokens)


def _chat_logprobs(entries: list[dict] | None) -> chat_pb2.ChatLogprobs | None:
    if entries is None:
        return None
    return chat_pb2.ChatLogprobs(content=[chat_pb2.TokenLogprob(
        token=e["token"], logprob=e["logprob"], bytes=list(e.get("bytes") or []),
        top_logprobs=[chat_pb2.TopLogprob(token=t["token"], logprob=t["logprob"], bytes=list(t.get("bytes") or []))
                      for t in e.get("top_logprobs") or []]) for e in entries])


def _completion_logprobs(entries: list[dict] | None, offset: int) -> completions_pb2.CompletionLogprobs | None:
    """OpenAI's legacy shape; `offset` is the choice's text length before these tokens."""
    if entries is None:
        return None
    out = completions_pb2.CompletionLogprobs()
    for e in entries:
        out.tokens.append(e["token"])
        out.token_logprobs.append(e["logprob"])
        top = struct_pb2.Struct()
        for t in e.get("top_logprobs") or []:
            top[t["token"]] = t["logprob"]
        out.top_logprobs.append(top)
        out.text_offset.append(offset)
        offset += len(e["token"])
    return out


@dataclass
class StreamHeader:
    """What every chunk of one response repeats."""

    id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))


class CompletionStream:
    """Engine deltas -> `text_completion` chunks, and the fold of the whole stream into one Completion."""

    def __init__(self, header: StreamHeader, include_usage: bool):
        self.h = header
        self.include_usage = include_usage
        self._offsets: dict[int, int] = {}  # choice index -> text length so far (logprobs text_offset)

    def _base(self) -> completions_pb2.Completion:
        return completions_pb2.Completion(id=self.h.id, object="text_completion", created=self.h.created,
                                          model=self.h.model, system_fingerprint=SYSTEM_FINGERPRINT)

    def chunks(self, delta: Delta) -> list[completions_pb2.Completion]:
        out = []
        if delta.text or delta.finish_reason is not None or delta.logprobs:
            offset = self._offsets.get(delta.index, 0)
            choice = completions_pb2.CompletionChoice(text=delta.text, index=delta.index)
            lp = _completion_logprobs(delta.logprobs, offset)
            if lp is not None:
                choice.logprobs.CopyFrom(lp)
            if delta.finish_reason is not None:
                choice.finish_reason = delta.finish_reason
            self._offsets[delta.index] = offset + len(delta.text)
            chunk = self._base()
            chunk.choices.append(choice)
            out.append(chunk)
        if delta.usage is not None and self.include_usage:
            chunk = self._base()
            chunk.usage.CopyFrom(usage_pb(delta.usage))
            out.append(chunk)
        return out

    def fold(self, deltas: Iterable[Delta]) -> completions_pb2.Completion:
        result = self._base()
        choices: dict[int, completions_pb2.CompletionChoice] = {}
        for delta in deltas:
            c = choices.setdefault(delta.index, completions_pb2.CompletionChoice(index=delta.index))
            lp = _completion_logprobs(delta.logprobs, len(c.text))
            if lp is not None:
                c.logprobs.MergeFrom(lp)
            c.text += delta.text
            if delta.finish_reason is not None:
                c.finish_reason = delta.finish_reason
            if delta.usage is not None:
                result.usage.CopyFrom(usage_pb(delta.usage))
        result.choices.extend(choices[i] for i in sorted(choices))
        return result


class ChatStream:
    """Engine deltas -> `chat.completion.chunk`s (role first, then content, finish_reason last), and the fold
    of a whole stream into one ChatCompletion."""

    def __init__(self, header: StreamHeader, include_usage: bool):
        self.h = header
        self.include_usage = include_usage
        self._started: set[int] = set()

    def _base(self) -> chat_pb2.ChatCompletionChunk:
        return chat_pb2.ChatCompletionChunk(id=self.h.id, object="chat.completion.chunk", created=self.h.created,
                                            model=self.h.model, system_fingerprint=SYSTEM_FINGERPRINT)

    def opening(self, n: int) -> list[chat_pb2.ChatCompletionChunk]:
        """One chunk per choice announcing the assistant role (as OpenAI sends first)."""
        out = []
        for i in range(n):
            chunk = self._base()
            chunk.choices.append(chat_pb2.ChatChunkChoice(index=i, delta=chat_pb2.ChatDelta(role="assistant",
                                                                                           content="")))
            self._started.add(i)
            out.append(chunk)
        return out

    def chunks(self, delta: Delta) -> list[chat_pb2.ChatCompletionChunk]:
        out = []
        if delta.text or delta.finish_reason is not None or delta.logprobs:
            choice = chat_pb2.ChatChunkChoice(index=delta.index, delta=chat_pb2.ChatDelta(content=delta.text))
            if delta.index not in self._started:
                choice.delta.role = "assistant"
                self._started.add(delta.index)
            lp = _chat_logprobs(delta.logprobs)
            if lp is not None:
                choice.logprobs.CopyFrom(lp)
            if delta.finish_reason is not None:
                choice.finish_reason = delta.finish_reason
            chunk = self._base()
            chunk.choices.append(choice)
            out.append(chunk)
        if delta.usage is not None and self.include_usage:
            chunk = self._base()
            chunk.usage.CopyFrom(usage_pb(delta.usage))
            out.append(chunk)
        return out

    def fold(self, deltas: Iterable[Delta]) -> chat_pb2.ChatCompletion:
        result = chat_pb2.ChatCompletion(id=self.h.id, object="chat.completion", created=self.h.created,
                                         model=self.h.model, system_fingerprint=SYSTEM_FINGERPRINT)
        choices: dict[int, chat_pb2.ChatChoice] = {}
        for delta in deltas:
            c = choices.setdefault(delta.index, chat_pb2.ChatChoice(
                index=delta.index, message=chat_pb2.ChatMessage(role="assistant")))
            c.message.content += delta.text
            lp = _chat_logprobs(delta.logprobs)
            if lp is not None:
                c.logprobs.content.extend(lp.content)
            if delta.finish_reason is not None:
                c.finish_reason = delta.finish_reason
            if delta.usage is not None:
                result.usage.CopyFrom(usage_pb(delta.usage))
        result.choices.extend(choices[i] for i in sorted(choices))
        return result
