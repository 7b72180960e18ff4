"""The asyncio SDK client: `await AsyncClient("host:50051").chat.completions.create(messages=[...])`.

Same surface as the sync Client: unary calls return response protos; `stream=True` returns an async iterator
(breaking out or cancelling the task cancels the call). Deadlines, RetryInfo-honouring retries and typed
exceptions as in the sync client.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Callable, Iterable

import grpc

from service.api.gen.llm.v1 import llm_service_pb2_grpc
from service.client import requests
from service.client.errors import from_rpc_error
from service.client.resources import Chat, Completions, Models
from service.client.transport import UNSET, ClientOptions, remaining


class AsyncClient:
    def __init__(self, target: str = "localhost:50051", *, api_key: str | None = None, tls: bool = False,
                 root_certificates: bytes | None = None, server_name: str | None = None,
                 timeout: float | None = 600.0, max_retries: int = 3, backoff_s: float = 0.5,
                 load_balancing: str | None = None):
        self.options = ClientOptions(target, api_key, tls, root_certificates, server_name, timeout, max_retries,
                                     backoff_s, load_balancing=load_balancing)
        creds = self.options.credentials()
        args = self.options.channel_args()
        self._channel = (grpc.aio.secure_channel(target, creds, args) if creds
                         else grpc.aio.insecure_channel(target, args))
        self._stub = llm_service_pb2_grpc.LLMServiceStub(self._channel)
        self.models = Models(self)
        self.completions = Completions(self)
        self.chat = Chat(self)

    async def _unary(self, method: Callable, request: Any, timeout: Any = UNSET) -> Any:
        deadline = self.options.deadline(timeout)
        attempt = 0
        while True:
            try:
                return await method(request, timeout=remaining(deadline), metadata=self.options.metadata())
            except grpc.RpcError as rpc_err:
                err = from_rpc_error(rpc_err)
            await asyncio.sleep(self.options.retry_wait(err, attempt, deadline))
            attempt += 1

    async def _stream(self, method: Callable, request: Any, timeout: Any = UNSET) -> AsyncIterator[Any]:
        deadline = self.options.deadline(timeout)
        attempt = 0
        while True:
            call = method(request, timeout=remaining(deadline), metadata=self.options.metadata())
            received = False
            try:
                async for chunk in call:
                    received = True
                    yield chunk
                return
            except grpc.RpcError as rpc_err:
                err = from_rpc_error(rpc_err)
            finally:
                call.cancel()
            if received:
                raise err
            await asyncio.sleep(self.options.retry_wait(err, attempt, deadline))
            attempt += 1

    async def tokenize(self, prompt: str | None = None, *, messages: Iterable[dict] | None = None,
                       model: str = "", add_special_tokens: bool | None = None, timeout: Any = UNSET):
        return await self._unary(self._stub.Tokenize,
                                 requests.tokenize(prompt, messages, model, add_special_tokens), timeout)

    async def detokenize(self, tokens: Iterable[int], *, model: str = "", timeout: Any = UNSET):
        return await self._unary(self._stub.Detokenize, requests.detokenize(tokens, model), timeout)

    async def memory_stats(self, *, model: str = "", timeout: Any = UNSET):
        return await self._unary(self._stub.MemoryStats, requests.memory_stats(model), timeout)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
