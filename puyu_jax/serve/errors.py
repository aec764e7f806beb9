"""Errors the serving engine raises; the HTTP layer maps each to an OpenAI-style response."""

from __future__ import annotations


class EngineError(RuntimeError):
    """Base class of serving errors."""


class QueueFullError(EngineError):
    """The waiting queue is at `EngineConfig.max_waiting`; retry later (HTTP 429 / 503)."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PromptTooLongError(ValueError):
    """Prompt (plus max_new_tokens) does not fit the context or the KV cache (HTTP 400 / 413)."""

    def __init__(self, message: str, param: str = "messages"):
        super().__init__(message)
        self.param = param


class EngineDeadError(EngineError):
    """The engine loop stopped (crashed or shut down); no new requests are accepted."""


class RequestFailedError(EngineError):
    """One request's step raised; that request was ended, the engine serves the others (HTTP 500)."""

    def __init__(self, request_id: str, cause: BaseException):
        super().__init__(f"request {request_id} failed: {type(cause).__name__}: {cause}")
        self.request_id, self.cause = request_id, cause
