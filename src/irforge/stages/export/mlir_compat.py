"""Lets iree-turbine 3.9 (the newest on PyPI) run on the MLIR bindings of newer IREE compilers.

turbine 3.9 tests types and values with the bindings' `X.isinstance(obj)` class methods, which
MLIR removed in the bindings IREE 3.11+ ship (`isinstance(obj, X)` works there because objects
come back already downcast). Without them every custom op (`transfer_to_logical_device`, which
tensor parallelism needs) fails to expand with "type object 'IntegerType' has no attribute
'isinstance'". Restoring the method as "does X accept a cast of obj" is what the removed
method did; on a compiler that still has it, nothing is touched.
"""

from __future__ import annotations

from typing import Any


def _accepts(cls: type, obj: Any) -> bool:
    try:
        cls(obj)  # the bindings' checked cast: ValueError when obj is not a cls
    except (ValueError, TypeError):
        return False
    return True


def restore_isinstance() -> int:
    """Give MLIR's Type/Attribute/Value classes `isinstance` where missing; returns how many."""
    from iree.compiler import ir

    bases = (ir.Type, ir.Attribute, ir.Value)
    patched = 0
    for name in dir(ir):
        cls = getattr(ir, name)
        if isinstance(cls, type) and issubclass(cls, bases) and not hasattr(cls, "isinstance"):
            cls.isinstance = classmethod(_accepts)  # type: ignore[attr-defined]
            patched += 1
    return patched
