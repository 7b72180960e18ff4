"""The synchronous SDK client: `Client("host:50051").chat.completions.create(messages=[...])`.

Unary calls return the llm.v1 response protos; `stream=True` returns an iterator of chunks (leaving the loop
early cancels the call, which frees the server's KV slot). Deadlines per call (`timeout=`), retries on
RESOURCE_EXHAUSTED / UNAVAILABLE honouring RetryInfo (a stream is retried only before its first chunk),
typed exceptions from service.client.errors.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Iterator

import grpc

from service.api.gen.llm.v1 import llm_service_pb2_grpc
from service.client import requests
from service.client.errors import from_rpc_error
from service.client.resources import Chat, Completions, Models
from service.client.transport import UNSET, ClientOptions, remaining


class Client:
    def __init__(self, target: str = "localhost:50051", *, api_key: str | None = None, tls: bool = False,
                 root_certificates: bytes | None = None, server_name: str | None = None,
                 timeout: float | None = 600.0, max_retries: int = 3, backoff_s: float = 0.5,
                 load_balancing: str | None = None):
        self.options = ClientOptions(target, api_key, tls, root_certificates, server_name, timeout, max_retries,
                                     backoff_s, load_balancing=load_balancing)
        creds = self.options.credentials()
        args = self.options.channel_args()
        self._channel = grpc.secure_channel(target, creds, args) if creds else grpc.insecure_channel(target, args)
        self._stub = llm_service_pb2_grpc.LLMServiceStub(self._channel)
        self.models = Models(self)
        self.completions = Completions(self)
        self.chat = Chat(self)

    # -- plumbing ----------------------------------------------------------------------------------
    def _unary(self, method: Callable, request: Any, timeout: Any = UNSET) -> Any:
        deadline = self.options.deadline(timeout)
        attempt = 0
        while True:
            try:
                return method(request, timeout=remaining(deadline), metadata=self.options.metadata())
            except grpc.RpcError as rpc_err:
                err = from_rpc_error(rpc_err)
            time.sleep(self.options.retry_wait(err, attempt, deadline))
            attempt += 1

    def _stream(self, method: Callable, request: Any, timeout: Any = UNSET) -> Iterator[Any]:
        deadline = self.options.deadline(timeout)
        attempt = 0
        while True:
            call = method(request, timeout=remaining(deadline), metadata=self.options.metadata())
            received = False
            try:
                for chunk in call:
                    received = True
                    yield chunk
                return
            except grpc.RpcError as rpc_err:
                err = from_rpc_error(rpc_err)
            finally:
                call.cancel()  # no-op when finished; frees the server's slot when the caller stops early
            if received:
                raise err
            time.sleep(self.options.retry_wait(err, attempt, deadline))
            attempt += 1

    # -- the API -----------------------------------------------------------------------------------
    def tokenize(self, prompt: str | None = None, *, messages: Iterable[dict] | None = None, model: str = "",
                 add_special_tokens: bool | None = None, timeout: Any = UNSET):
        return self._unary(self._stub.Tokenize, requests.tokenize(prompt, messages, model, add_special_tokens),
                           timeout)

    def detokenize(self, tokens: Iterable[int], *, model: str = "", timeout: Any = UNSET):
        return self._unary(self._stub.Detokenize, requests.detokenize(tokens, model), timeout)

    def memory_stats(self, *, model: str = "", timeout: Any = UNSET):
        return self._unary(self._stub.MemoryStats, requests.memory_stats(model), timeout)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
