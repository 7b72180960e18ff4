"""The one error table (service/api/errors.py), checked without a server: every request-level domain error
has its own status on both transports, and a fault is INTERNAL / 500 without leaking its text."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from service import errors as E
from service.api import errors

# gRPC code -> HTTP status, as grpc-gateway and Google's API design guide pair them (499 = client closed)
GOOGLE_HTTP = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 429, "UNAUTHENTICATED": 401,
               "DEADLINE_EXCEEDED": 504, "CANCELLED": 499, "UNAVAILABLE": 503, "INTERNAL": 500}

EXAMPLES = [E.InvalidRequestError.field("temperature", "must be between 0 and 2"), E.ContextOverflowError(900, 512),
            E.ChatTemplateError("no template"), E.ModelNotFoundError("x", ["m"]), E.OverloadedError("full", 2.5),
            E.UnauthenticatedError("bad key"), E.DeadlineExceededError("late"), E.CancelledError("gone"),
            E.UnavailableError("draining")]


def test_codes_pair_with_http_statuses_as_google_does():
    for exc in EXAMPLES + [RuntimeError("boom")]:
        kind = errors.kind_of(exc)
        assert GOOGLE_HTTP[kind.grpc_code.name] == kind.http_status, type(exc).__name__
    assert {errors.kind_of(e).grpc_code for e in EXAMPLES} == {
        grpc.StatusCode[c] for c in GOOGLE_HTTP if c != "INTERNAL"}  # every documented status is reachable


def test_details_and_openai_bodies():
    for exc in EXAMPLES:
        status = rpc_status.to_status(errors.to_rpc_status(exc))
        assert status.code == errors.kind_of(exc).grpc_code
        http, body, headers = errors.to_openai_error(exc)
        assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"] == str(exc)
        assert ("retry-after" in headers) == isinstance(exc, (E.OverloadedError, E.UnavailableError))
    overload = errors.to_rpc_status(E.OverloadedError("full", 2.5))
    retry = error_details_pb2.RetryInfo()
    assert [d.Unpack(retry) for d in overload.details if d.Is(retry.DESCRIPTOR)] == [True]
    assert retry.retry_delay.seconds == 2 and retry.retry_delay.nanos == 500_000_000
    assert errors.to_openai_error(E.OverloadedError("full", 2.5))[2]["retry-after"] == "3"  # rounded up


def test_a_fault_is_internal_and_leaks_nothing():
    secret = "Traceback: /etc/passwd password=hunter2"
    status = errors.to_rpc_status(KeyError(secret))
    assert status.code == 13 and secret not in status.message and "ref" in status.message
    http, body, _ = errors.to_openai_error(ValueError(secret))
    assert http == 500 and secret not in body["error"]["message"]
