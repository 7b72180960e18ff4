"""Typed exceptions of the SDK, built from a gRPC status and its google.rpc details (ErrorInfo, BadRequest,
RetryInfo). Mirrors the server's error table without importing the server."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    field: str  # OpenAI JSON key, e.g. "temperature" or "messages[0].role"
    description: str


class LLMClientError(Exception):
    """Any error the server returned (or the transport raised). `code` is the grpc.StatusCode."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "", metadata: dict | None = None,
                 field_violations: tuple[FieldViolation, ...] = (), retry_after_s: float | None = None):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.reason = reason  # ErrorInfo.reason, e.g. "CONTEXT_LENGTH_EXCEEDED"
        self.metadata = dict(metadata or {})  # ErrorInfo.metadata
        self.field_violations = field_violations  # BadRequest
        self.retry_after_s = retry_after_s  # RetryInfo


class InvalidArgumentError(LLMClientError):
    """A bad request parameter; `field_violations` names each one."""


class ContextLengthExceededError(InvalidArgumentError):
    """The prompt does not fit the context; `prompt_tokens` and `limit` say by how much."""

    @property
    def prompt_tokens(self) -> int:
        return int(self.metadata.get("prompt_tokens", -1))

    @property
    def limit(self) -> int:
        return int(self.metadata.get("limit", -1))


class NotFoundError(LLMClientError):
    """Unknown model."""


class OverloadedError(LLMClientError):
    """RESOURCE_EXHAUSTED: the queue or the KV cache is full; retry after `retry_after_s`."""


class AuthenticationError(LLMClientError):
    """Missing or wrong API key."""


class DeadlineExceededError(LLMClientError):
    """The call's deadline passed (the server aborted the work)."""


class CancelledError(LLMClientError):
    """The call was cancelled."""


class UnavailableError(LLMClientError):
    """The server is loading, draining or unreachable; retryable."""


class InternalServerError(LLMClientError):
    """A server fault (the message carries a reference id for the server log)."""


_BY_CODE: dict[grpc.StatusCode, type[LLMClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: OverloadedError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
}


def from_rpc_error(err: grpc.RpcError) -> LLMClientError:
    """The typed exception for a failed call (sync or asyncio)."""
    code = err.code()
    message = err.details() or ""
    reason, metadata, violations, retry = "", {}, (), None
    status = None
    try:
        status = rpc_status.from_call(err)  # sync calls
    except (AttributeError, TypeError, ValueError):
        pass
    if status is None:
        try:
            trailing = err.trailing_metadata()  # asyncio: AioRpcError holds trailing metadata directly
            for key, value in trailing or ():
                if key == "grpc-status-details-bin":
                    from google.rpc import status_pb2
                    status = status_pb2.Status.FromString(value)
        except (AttributeError, TypeError):
            pass
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = tuple(FieldViolation(v.field, v.description) for v in bad.field_violations)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            retry = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    cls = _BY_CODE.get(code, InternalServerError)
    if cls is InvalidArgumentError and reason == "CONTEXT_LENGTH_EXCEEDED":
        cls = ContextLengthExceededError
    return cls(code, message, reason, metadata, violations, retry)
