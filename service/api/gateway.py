"""The OpenAI HTTP gateway (FastAPI, ASGI): /v1/models, /v1/completions, /v1/chat/completions (JSON or SSE),
a thin translation over the same ApiCore as the gRPC servicer.

JSON bodies are normalised where OpenAI allows unions the proto cannot hold (a prompt given as a list,
`stop` as one string, message content as a list of text parts), then parsed into the llm.v1 request with
json_format; responses are the protos printed by convert.to_json. Errors use the one table in errors.py
(OpenAI error object, HTTP status, Retry-After). Streams send `data: {chunk}` lines and `data: [DONE]`; a
bad request fails with its HTTP status before the stream starts.
"""

from __future__ import annotations

import json
import re
from typing import Any, AsyncIterator

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from google.protobuf import json_format

from service.api import errors
from service.api.auth import check_bearer
from service.api.convert import to_json
from service.api.core import ApiCore
from service.api.gen.llm.v1 import chat_pb2, completions_pb2, models_pb2
from service.api.metrics import Metrics
from service.errors import InvalidRequestError

TRANSPORT = "http"
_PARSE_FIELD = re.compile(r"Failed to parse (\w+) field")


def _normalise_completion(body: dict[str, Any]) -> dict[str, Any]:
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        if prompt and all(isinstance(t, int) for t in prompt):
            body["prompt_token_ids"] = body.pop("prompt")
        elif len(prompt) == 1 and isinstance(prompt[0], list):
            body["prompt_token_ids"] = body.pop("prompt")[0]
        elif len(prompt) == 1 and isinstance(prompt[0], str):
            body["prompt"] = prompt[0]
        else:
            raise InvalidRequestError.field("prompt", "batched prompts are not supported; send one prompt")
    return body


def _normalise_chat(body: dict[str, Any]) -> dict[str, Any]:
    messages = body.get("messages")
    if isinstance(messages, list):
        for i, m in enumerate(messages):
            if isinstance(m, dict) and isinstance(m.get("content"), list):
                parts = m["content"]
                if not all(isinstance(p, dict) and p.get("type") == "text" for p in parts):
                    raise InvalidRequestError.field(f"messages[{i}].content", "only text parts are supported")
                m["content"] = "".join(p.get("text", "") for p in parts)
            elif isinstance(m, dict) and m.get("content") is None and "content" in m:
                m["content"] = ""
    return body


def _parse(body: Any, message: Any) -> Any:
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    body = {k: v for k, v in body.items() if v is not None}
    if isinstance(body.get("stop"), str):
        body["stop"] = [body["stop"]]
    try:
        return json_format.ParseDict(body, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        found = _PARSE_FIELD.search(str(exc))
        text = str(exc).splitlines()[0]
        raise (InvalidRequestError.field(found.group(1), text) if found else InvalidRequestError(text)) from None


def _error_response(exc: BaseException) -> JSONResponse:
    status, body, headers = errors.to_openai_error(exc)
    return JSONResponse(body, status_code=status, headers=headers)


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n"


def create_app(core: ApiCore, api_keys: tuple[str, ...] = (), metrics: Metrics | None = None) -> FastAPI:
    app = FastAPI(title="llm-grpc-server OpenAI gateway", docs_url=None, redoc_url=None)

    def count(method: str, code: str) -> None:
        if metrics is not None:
            metrics.count(method, TRANSPORT, code)

    async def body_of(request: Request) -> Any:
        check_bearer(request.headers.get("authorization"), api_keys)
        try:
            return await request.json()
        except ValueError:
            raise InvalidRequestError("the request body is not valid JSON") from None

    async def streamed(method: str, chunks: AsyncIterator[Any]) -> Any:
        """Pull the first chunk before answering, so request errors get their HTTP status, then stream."""
        try:
            first = await chunks.__anext__()
        except StopAsyncIteration:
            first = None
        except Exception as exc:  # noqa: BLE001
            count(method, errors.kind_of(exc).grpc_code.name)
            return _error_response(exc)

        async def events() -> AsyncIterator[str]:
            code = "OK"
            try:
                if first is not None:
                    yield _sse(to_json(first))
                    async for chunk in chunks:
                        yield _sse(to_json(chunk))
                yield "data: [DONE]\n\n"
            except Exception as exc:  # noqa: BLE001 - mid-stream: the status line is sent; send an error event
                code = errors.kind_of(exc).grpc_code.name
                yield _sse(errors.to_openai_error(exc)[1])
            finally:
                # A client that disconnects cancels this generator through an anyio cancel scope, which would
                # cancel this await too and leave the engine request running until garbage collection:
                # shield it, so the core's cleanup aborts the request (and frees its KV slot) now.
                with anyio.CancelScope(shield=True):
                    await chunks.aclose()
                count(method, code)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    @app.get("/v1/models")
    async def list_models(request: Request) -> Any:
        try:
            check_bearer(request.headers.get("authorization"), api_keys)
            out = to_json(core.list_models(models_pb2.ListModelsRequest()))
        except Exception as exc:  # noqa: BLE001
            count("ListModels", errors.kind_of(exc).grpc_code.name)
            return _error_response(exc)
        count("ListModels", "OK")
        return out

    async def openai_call(request: Request, normalise: Any, message: Any, unary: tuple[str, Any],
                          streaming: tuple[str, Any]) -> Any:
        """One POST endpoint: parse the OpenAI JSON into `message`, then the unary or the SSE call."""
        name = unary[0]
        try:
            body = await body_of(request)
            stream = bool(body.pop("stream", False)) if isinstance(body, dict) else False
            req = _parse(normalise(body) if isinstance(body, dict) else body, message)
            if stream:
                name = streaming[0]
                return await streamed(name, streaming[1](req))
            out = to_json(await unary[1](req))
        except Exception as exc:  # noqa: BLE001
            count(name, errors.kind_of(exc).grpc_code.name)
            return _error_response(exc)
        count(name, "OK")
        return out

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await openai_call(request, _normalise_completion, completions_pb2.CompletionRequest(),
                                 ("CreateCompletion", core.create_completion),
                                 ("StreamCompletion", core.stream_completion))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await openai_call(request, _normalise_chat, chat_pb2.ChatCompletionRequest(),
                                 ("CreateChatCompletion", core.create_chat_completion),
                                 ("StreamChatCompletion", core.stream_chat_completion))

    @app.get("/health")
    async def health_check() -> Any:
        state = core.health()
        return JSONResponse({"status": state}, status_code=200 if state == "SERVING" else 503)

    return app
