"""Request building for the SDK: keyword arguments in OpenAI's names -> llm.v1 request protos (shared by
the sync and asyncio clients)."""

from __future__ import annotations

from typing import Any, Iterable

from google.protobuf import json_format

from service.api.gen.llm.v1 import chat_pb2, completions_pb2, memory_pb2, models_pb2, tokenize_pb2


def _parse(fields: dict[str, Any], message: Any) -> Any:
    fields = {k: v for k, v in fields.items() if v is not None}
    if isinstance(fields.get("stop"), str):
        fields["stop"] = [fields["stop"]]
    if isinstance(fields.get("logit_bias"), dict):
        fields["logit_bias"] = {str(k): float(v) for k, v in fields["logit_bias"].items()}
    try:
        return json_format.ParseDict(fields, message)
    except json_format.ParseError as exc:
        raise ValueError(str(exc)) from None


def completion(prompt: str | Iterable[int], model: str = "", **params: Any) -> completions_pb2.CompletionRequest:
    """`prompt` is text or a list of token ids; params are CompletionRequest fields (max_tokens, temperature,
    n, stop, seed, logprobs, stream_options, top_k, ...)."""
    fields = {"model": model, **params}
    if isinstance(prompt, str):
        fields["prompt"] = prompt
    else:
        fields["prompt_token_ids"] = [int(t) for t in prompt]
    return _parse(fields, completions_pb2.CompletionRequest())


def chat(messages: Iterable[dict[str, Any]], model: str = "", **params: Any) -> chat_pb2.ChatCompletionRequest:
    """`messages` are {"role", "content"} dicts; params are ChatCompletionRequest fields."""
    return _parse({"model": model, "messages": [dict(m) for m in messages], **params},
                  chat_pb2.ChatCompletionRequest())


def list_models() -> models_pb2.ListModelsRequest:
    return models_pb2.ListModelsRequest()


def tokenize(prompt: str | None = None, messages: Iterable[dict[str, Any]] | None = None, model: str = "",
             add_special_tokens: bool | None = None) -> tokenize_pb2.TokenizeRequest:
    return _parse({"model": model, "prompt": prompt, "messages": [dict(m) for m in messages or ()],
                   "add_special_tokens": add_special_tokens}, tokenize_pb2.TokenizeRequest())


def detokenize(tokens: Iterable[int], model: str = "") -> tokenize_pb2.DetokenizeRequest:
    return tokenize_pb2.DetokenizeRequest(model=model, tokens=[int(t) for t in tokens])


def memory_stats(model: str = "") -> memory_pb2.MemoryStatsRequest:
    return memory_pb2.MemoryStatsRequest(model=model)
