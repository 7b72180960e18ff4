"""Channel options of the SDK: target, TLS, API key, message size, and the retry policy that honours the
server's RetryInfo on RESOURCE_EXHAUSTED / UNAVAILABLE."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import grpc

from service.client.errors import LLMClientError

RETRYABLE = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
UNSET: Any = object()  # "timeout not given": ClientOptions.timeout_s applies (None means no deadline)


def remaining(deadline: float | None) -> float | None:
    """Seconds left until a monotonic deadline (0 when past), None for no deadline."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


@dataclass(frozen=True)
class ClientOptions:
    target: str = "localhost:50051"
    api_key: str | None = None  # sent as `authorization: Bearer <key>`
    tls: bool = False  # use TLS (system roots unless root_certificates is given)
    root_certificates: bytes | None = None  # PEM of the CA that signed the server's certificate
    server_name: str | None = None  # TLS name override (e.g. the certificate's CN when dialing an IP)
    timeout_s: float | None = 600.0  # default per-call deadline; None = no deadline
    max_retries: int = 3  # retries on RESOURCE_EXHAUSTED / UNAVAILABLE before giving up
    backoff_s: float = 0.5  # first back-off when the server sends no RetryInfo (doubles each retry)
    max_backoff_s: float = 10.0
    max_message_bytes: int = 16 * 1024 * 1024
    load_balancing: str | None = None  # e.g. "round_robin" over every address of a dns:/// target (replicas)

    def channel_args(self) -> list[tuple[str, object]]:
        args: list[tuple[str, object]] = [("grpc.max_send_message_length", self.max_message_bytes),
                                          ("grpc.max_receive_message_length", self.max_message_bytes)]
        if self.server_name:
            args.append(("grpc.ssl_target_name_override", self.server_name))
        if self.load_balancing:
            args.append(("grpc.service_config", json.dumps({"loadBalancingConfig": [{self.load_balancing: {}}]})))
        return args

    def credentials(self) -> grpc.ChannelCredentials | None:
        if not self.tls and self.root_certificates is None:
            return None
        return grpc.ssl_channel_credentials(root_certificates=self.root_certificates)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()

    def deadline(self, timeout: Any = UNSET) -> float | None:
        """The monotonic deadline of a call given `timeout` seconds (UNSET: timeout_s; None: no deadline)."""
        timeout = self.timeout_s if timeout is UNSET else timeout
        return None if timeout is None else time.monotonic() + timeout

    def retry_wait(self, err: LLMClientError, attempt: int, deadline: float | None) -> float:
        """Seconds to wait before retry number `attempt`; raises `err` when it is final or the wait would pass the
        deadline."""
        delay = self.retry_delay(err, attempt)
        left = remaining(deadline)
        if delay is None or (left is not None and delay >= left):
            raise err
        return delay

    def retry_delay(self, err: LLMClientError, attempt: int) -> float | None:
        """Seconds to wait before retry number `attempt` (0-based), or None when the error is final."""
        if err.code not in RETRYABLE or attempt >= self.max_retries:
            return None
        if err.retry_after_s is not None:
            return min(err.retry_after_s, self.max_backoff_s)
        return min(self.backoff_s * 2 ** attempt, self.max_backoff_s)
