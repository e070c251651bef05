"""Why the engine refuses a request: each class is one kind of refusal, with a short code.

The engine speaks no HTTP: the server maps these classes to statuses (serve/errors.py).
"""

from __future__ import annotations

from irforge.errors import ToolchainError


class EngineError(ToolchainError):
    """Base class; `code` is a short machine-readable name of the failure."""

    code = "INTERNAL"


class BadRequest(EngineError):
    """The request cannot be served as asked (empty or too long prompt, bad sampling...);
    `param` names the request field at fault."""

    code = "INVALID_REQUEST"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class Overloaded(EngineError):
    """The admission queue is full (pages are busy): try again after `retry_after` seconds."""

    code = "QUEUE_FULL"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDown(Overloaded):
    """The engine drains in-flight requests and admits no new one."""

    code = "SHUTTING_DOWN"
