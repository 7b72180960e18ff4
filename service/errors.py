"""Domain exceptions shared by the model, engine and API layers.

Layers below the API raise these; `service/api/errors.py` maps each class to one gRPC status (and HTTP code)
in a single table. `assert` is only for internal invariants, never for user input.
"""

from __future__ import annotations

from dataclasses import dataclass


class LLMError(Exception):
    """Base of every expected error. `str(err)` is a one-line message fit for a user."""


class ConfigError(LLMError):
    """A contradictory or out-of-range setting (flag or environment variable)."""


class ModelFileError(LLMError):
    """The model file is missing, truncated, not GGUF, or holds something we cannot run."""


class UnsupportedModelError(ModelFileError):
    """Unknown architecture or unsupported tensor type (the message names it)."""


@dataclass
class FieldViolation:
    field: str  # OpenAI JSON key path, e.g. "messages[0].content" or "temperature"
    description: str


class InvalidRequestError(LLMError):
    """A request parameter is out of range or malformed. Carries one or more field violations."""

    def __init__(self, message: str, violations: list[FieldViolation] | None = None):
        super().__init__(message)
        self.violations = violations or []

    @classmethod
    def field(cls, name: str, description: str) -> "InvalidRequestError":
        return cls(f"{name}: {description}", [FieldViolation(name, description)])


class ContextOverflowError(InvalidRequestError):
    """The prompt (plus what must be generated) does not fit the model's context."""

    def __init__(self, prompt_tokens: int, limit: int, field: str = "prompt"):
        description = f"prompt has {prompt_tokens} tokens; the context limit is {limit}"
        super().__init__(description, [FieldViolation(field, description)])
        self.prompt_tokens = prompt_tokens
        self.limit = limit


class ModelNotFoundError(LLMError):
    def __init__(self, model: str, available: list[str]):
        super().__init__(f"model {model!r} not found; available: {', '.join(available) or 'none'}")
        self.model = model


class ChatTemplateError(InvalidRequestError):
    """The model has no chat template, or the template refused the messages (raise_exception)."""


class OverloadedError(LLMError):
    """The waiting queue or the KV budget is full. `retry_after_s` is the client's back-off hint."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceededError(LLMError):
    """The request reached its deadline; the engine aborted it."""


class CancelledError(LLMError):
    """The client went away or cancelled; the engine aborted the request."""


class UnavailableError(LLMError):
    """The server is loading or draining."""


class UnauthenticatedError(LLMError):
    """Missing or wrong API key."""
