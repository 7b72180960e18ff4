"""The OpenAI-style namespaces of the SDK clients (`client.models`, `client.completions`, `client.chat.completions`),
shared by the sync and asyncio clients: each builds the request and hands it to the client's `_unary` / `_stream`,
so on `Client` they return the response (or a chunk iterator) and on `AsyncClient` an awaitable (or an async
chunk iterator)."""

from __future__ import annotations

from typing import Any, Iterable

from service.client import requests
from service.client.transport import UNSET


class Models:
    def __init__(self, client: Any):
        self._c = client

    def list(self, *, timeout: Any = UNSET):
        return self._c._unary(self._c._stub.ListModels, requests.list_models(), timeout)


class Completions:
    def __init__(self, client: Any):
        self._c = client

    def create(self, *, prompt: str | Iterable[int], model: str = "", stream: bool = False, timeout: Any = UNSET,
               **params: Any):
        req = requests.completion(prompt, model, **params)
        if stream:
            return self._c._stream(self._c._stub.StreamCompletion, req, timeout)
        return self._c._unary(self._c._stub.CreateCompletion, req, timeout)


class ChatCompletions:
    def __init__(self, client: Any):
        self._c = client

    def create(self, *, messages: Iterable[dict], model: str = "", stream: bool = False, timeout: Any = UNSET,
               **params: Any):
        req = requests.chat(messages, model, **params)
        if stream:
            return self._c._stream(self._c._stub.StreamChatCompletion, req, timeout)
        return self._c._unary(self._c._stub.CreateChatCompletion, req, timeout)


class Chat:
    def __init__(self, client: Any):
        self.completions = ChatCompletions(client)
