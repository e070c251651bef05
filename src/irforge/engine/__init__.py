"""The serving engine: requests scheduled onto a runner's prefill/decode calls; no HTTP."""

from irforge.engine.engine import Engine
from irforge.engine.errors import BadRequest, EngineError, Overloaded, ShuttingDown
from irforge.engine.request import Delta, Request, Status

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
