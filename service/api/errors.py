"""The one error table: each domain exception -> a gRPC status with google.rpc details, and an OpenAI error.

gRPC: `to_grpc_status(exc)` gives a `grpc.Status` whose trailing metadata carries a `google.rpc.Status` with
  ErrorInfo (reason, domain "llm.v1") on every error, BadRequest field violations on INVALID_ARGUMENT, and
  RetryInfo on RESOURCE_EXHAUSTED / UNAVAILABLE.
HTTP:  `to_openai_error(exc)` gives (http status, {"error": {message, type, param, code}}, headers), with a
  Retry-After header where gRPC would carry RetryInfo.
Anything not in the table is a fault: INTERNAL / 500 with a reference id; the traceback goes to the log only.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from service import errors as E

log = logging.getLogger(__name__)

DOMAIN = "llm.v1"


@dataclass(frozen=True)
class ErrorKind:
    """How one class of error looks on each transport."""

    grpc_code: grpc.StatusCode
    http_status: int
    openai_type: str  # OpenAI error object's "type"
    reason: str  # ErrorInfo.reason and the OpenAI error's "code"


# Most specific class first: the first isinstance match wins.
TABLE: tuple[tuple[type[BaseException], ErrorKind], ...] = (
    (E.ContextOverflowError, ErrorKind(grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_request_error",
                                       "context_length_exceeded")),
    (E.ChatTemplateError, ErrorKind(grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_request_error",
                                    "chat_template_error")),
    (E.InvalidRequestError, ErrorKind(grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_request_error",
                                      "invalid_value")),
    (E.ModelNotFoundError, ErrorKind(grpc.StatusCode.NOT_FOUND, 404, "invalid_request_error", "model_not_found")),
    (E.OverloadedError, ErrorKind(grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "server_overloaded", "overloaded")),
    (E.UnauthenticatedError, ErrorKind(grpc.StatusCode.UNAUTHENTICATED, 401, "authentication_error",
                                       "invalid_api_key")),
    (E.DeadlineExceededError, ErrorKind(grpc.StatusCode.DEADLINE_EXCEEDED, 504, "timeout", "deadline_exceeded")),
    (E.CancelledError, ErrorKind(grpc.StatusCode.CANCELLED, 499, "cancelled", "cancelled")),
    (E.UnavailableError, ErrorKind(grpc.StatusCode.UNAVAILABLE, 503, "service_unavailable", "unavailable")),
)
INTERNAL = ErrorKind(grpc.StatusCode.INTERNAL, 500, "server_error", "internal_error")
UNAVAILABLE_RETRY_S = 1.0  # back-off hint while loading or draining


def kind_of(exc: BaseException) -> ErrorKind:
    for cls, kind in TABLE:
        if isinstance(exc, cls):
            return kind
    return INTERNAL


def public_message(exc: BaseException) -> str:
    """The user-facing one-line message. Faults get a reference id; their details stay in the log."""
    if kind_of(exc) is not INTERNAL:
        return str(exc)
    ref = uuid.uuid4().hex[:12]
    log.error("internal error ref=%s", ref, exc_info=exc)
    return f"internal error (ref {ref}); see the server log"


def retry_after_s(exc: BaseException) -> float | None:
    if isinstance(exc, E.OverloadedError):
        return float(exc.retry_after_s)
    if isinstance(exc, E.UnavailableError):
        return float(getattr(exc, "retry_after_s", UNAVAILABLE_RETRY_S))
    return None


def violations(exc: BaseException) -> list[E.FieldViolation]:
    return list(exc.violations) if isinstance(exc, E.InvalidRequestError) else []


def error_metadata(exc: BaseException) -> dict[str, str]:
    """ErrorInfo metadata: machine-readable facts about the error."""
    meta: dict[str, str] = {}
    if isinstance(exc, E.ContextOverflowError):
        meta.update(prompt_tokens=str(exc.prompt_tokens), limit=str(exc.limit))
    if isinstance(exc, E.ModelNotFoundError):
        meta["model"] = exc.model
    return meta


def to_rpc_status(exc: BaseException, message: str | None = None) -> status_pb2.Status:
    """The google.rpc.Status for an exception (with its details packed as Any)."""
    kind = kind_of(exc)
    status = status_pb2.Status(code=getattr(code_pb2, kind.grpc_code.name),
                               message=message if message is not None else public_message(exc))
    info = error_details_pb2.ErrorInfo(reason=kind.reason.upper(), domain=DOMAIN, metadata=error_metadata(exc))
    status.details.add().Pack(info)
    found = violations(exc)
    if found:
        bad = error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description) for v in found])
        status.details.add().Pack(bad)
    delay = retry_after_s(exc)
    if delay is not None:
        seconds = math.floor(delay)
        retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(
            seconds=seconds, nanos=int(round((delay - seconds) * 1e9))))
        status.details.add().Pack(retry)
    return status


def to_grpc_status(exc: BaseException) -> grpc.Status:
    """For `context.abort_with_status(...)`."""
    return rpc_status.to_status(to_rpc_status(exc))


def to_openai_error(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(HTTP status, OpenAI error body, extra headers)."""
    kind = kind_of(exc)
    found = violations(exc)
    body = {"error": {"message": public_message(exc), "type": kind.openai_type,
                      "param": found[0].field if found else None, "code": kind.reason}}
    headers = {}
    delay = retry_after_s(exc)
    if delay is not None:
        headers["retry-after"] = str(max(1, math.ceil(delay)))
        headers["retry-after-ms"] = str(int(delay * 1000))
    return kind.http_status, body, headers
