"""The llm.v1.LLMService gRPC servicer (grpc.aio): a thin shell over ApiCore.

Each RPC: check the API key, turn the client's deadline into an absolute engine deadline, call the core, and
map any exception once through service/api/errors.py (rich google.rpc status, never a traceback). A client
that cancels (or whose deadline passes) cancels the handler task; the core then aborts the engine request,
which frees its KV slots at once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc

from service.api import errors
from service.api.auth import check_bearer
from service.api.core import ApiCore
from service.api.gen.llm.v1 import llm_service_pb2_grpc
from service.api.metrics import Metrics

TRANSPORT = "grpc"


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + max(0.0, remaining)


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value
    return None


class LLMServicer(llm_service_pb2_grpc.LLMServiceServicer):
    def __init__(self, core: ApiCore, api_keys: tuple[str, ...] = (), metrics: Metrics | None = None):
        self.core = core
        self.api_keys = api_keys
        self.metrics = metrics

    def _count(self, method: str, code: str) -> None:
        if self.metrics is not None:
            self.metrics.count(method, TRANSPORT, code)

    async def _unary(self, method: str, context: grpc.aio.ServicerContext,
                     call: Callable[[float | None], Awaitable[Any] | Any]) -> Any:
        code = "OK"
        try:
            check_bearer(_authorization(context), self.api_keys)
            result = call(_deadline(context))
            return await result if asyncio.iscoroutine(result) else result
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception as exc:  # noqa: BLE001 - every error goes through the one table
            code = errors.kind_of(exc).grpc_code.name
            await context.abort_with_status(errors.to_grpc_status(exc))
        finally:
            self._count(method, code)

    async def _stream(self, method: str, context: grpc.aio.ServicerContext,
                      call: Callable[[float | None], AsyncIterator[Any]]) -> AsyncIterator[Any]:
        code = "OK"
        try:
            check_bearer(_authorization(context), self.api_keys)
            async for message in call(_deadline(context)):
                yield message
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception as exc:  # noqa: BLE001
            code = errors.kind_of(exc).grpc_code.name
            await context.abort_with_status(errors.to_grpc_status(exc))
        finally:
            self._count(method, code)

    # -- RPCs --------------------------------------------------------------------------------------
    async def ListModels(self, request, context):
        return await self._unary("ListModels", context, lambda _d: self.core.list_models(request))

    async def CreateCompletion(self, request, context):
        return await self._unary("CreateCompletion", context, lambda d: self.core.create_completion(request, d))

    async def StreamCompletion(self, request, context):
        async for chunk in self._stream("StreamCompletion", context,
                                        lambda d: self.core.stream_completion(request, d)):
            yield chunk

    async def CreateChatCompletion(self, request, context):
        return await self._unary("CreateChatCompletion", context,
                                 lambda d: self.core.create_chat_completion(request, d))

    async def StreamChatCompletion(self, request, context):
        async for chunk in self._stream("StreamChatCompletion", context,
                                        lambda d: self.core.stream_chat_completion(request, d)):
            yield chunk

    async def Tokenize(self, request, context):
        return await self._unary("Tokenize", context, lambda _d: self.core.tokenize(request))

    async def Detokenize(self, request, context):
        return await self._unary("Detokenize", context, lambda _d: self.core.detokenize(request))

    async def MemoryStats(self, request, context):
        return await self._unary("MemoryStats", context, lambda _d: self.core.memory_stats(request))
