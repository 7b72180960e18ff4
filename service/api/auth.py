"""API-key check shared by the gRPC servicer and the HTTP gateway: `authorization: Bearer <key>`."""

from __future__ import annotations

import hmac

from service.errors import UnauthenticatedError


def check_bearer(authorization: str | None, api_keys: tuple[str, ...]) -> None:
    """Raise UnauthenticatedError unless auth is off or the header carries one of the keys."""
    if not api_keys:
        return
    if not authorization:
        raise UnauthenticatedError("missing API key: send the header 'authorization: Bearer <key>'")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    # compare against every key in constant time, so timing does not reveal which prefix matched
    matched = [hmac.compare_digest(token.encode(), key.encode()) for key in api_keys]
    if scheme.lower() != "bearer" or not any(matched):
        raise UnauthenticatedError("invalid API key")
