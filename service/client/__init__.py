"""The Python SDK of llm.v1 (sync `Client`, asyncio `AsyncClient`). Imports grpc and the generated code only.

    from service.client import Client
    with Client("localhost:50051", api_key="...") as client:
        reply = client.chat.completions.create(messages=[{"role": "user", "content": "Hi"}], max_tokens=16)
        print(reply.choices[0].message.content)
"""

from service.client.aio_client import AsyncClient
from service.client.errors import (AuthenticationError, CancelledError, ContextLengthExceededError,
                                   DeadlineExceededError, FieldViolation, InternalServerError, InvalidArgumentError,
                                   LLMClientError, NotFoundError, OverloadedError, UnavailableError)
from service.client.sync_client import Client

__all__ = ["Client", "AsyncClient", "LLMClientError", "InvalidArgumentError", "ContextLengthExceededError",
           "NotFoundError", "OverloadedError", "AuthenticationError", "DeadlineExceededError", "CancelledError",
           "UnavailableError", "InternalServerError", "FieldViolation"]
