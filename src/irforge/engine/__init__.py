"""The serving engine: requests scheduled onto a runner's prefill/decode calls; no HTTP.

Names load on first use, so a CLI command that needs only `EngineOptions` does not pay for
the engine's imports at startup.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from irforge.engine.engine import Engine
    from irforge.engine.errors import BadRequest, EngineError, Overloaded, ShuttingDown
    from irforge.engine.request import Delta, Request, Status

_WHERE = {
    "Engine": "engine",
    "BadRequest": "errors",
    "EngineError": "errors",
    "Overloaded": "errors",
    "ShuttingDown": "errors",
    "Delta": "request",
    "Request": "request",
    "Status": "request",
}
__all__ = [
    "BadRequest",
    "Delta",
    "Engine",
    "EngineError",
    "Overloaded",
    "Request",
    "ShuttingDown",
    "Status",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"irforge.engine.{_WHERE[name]}"), name)
