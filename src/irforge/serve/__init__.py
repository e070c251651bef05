"""Serving compiled artifacts: the continuous-batching Engine and its HTTP app."""

from .engine import Engine
from .errors import BadRequest, Overloaded, ServeError, ShuttingDown
from .request import Delta, Request, Status

__all__ = [
    "BadRequest",
    "Delta",
    "Engine",
    "Overloaded",
    "Request",
    "ServeError",
    "ShuttingDown",
    "Status",
]
