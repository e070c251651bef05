"""Letting IREE update the KV cache argument in place: mark its import `consume`.

The exported programs mutate their cache argument (torch's `overwrite.tensor.contents`), which
IREE's torch input conversion turns into a plain `hal.tensor.import` of the argument for the
reads and a `hal.tensor.alias` of the result onto the same buffer. A plain import is a borrowed
buffer the caller may still use, so stream copies it into a transient, updates the copy and
copies it back: two cache-sized copies a call, and a step that costs more the bigger the cache
(1B-shaped model: 218 ms with 128 MiB of cache, 650 ms with 1 GiB). Marking the import
`consume` (ownership passes to the callee, which writes it back into the caller's buffer
through the alias anyway) lets stream's copy elision drop both copies and the transient.

No iree-compile flag says this, so compile stops after the input phase, rewrites the imports
of aliased arguments, and resumes from there. The rewrite is a no-op on programs that mutate
nothing.
"""

from __future__ import annotations

import re

# a function starts at `util.func`; arguments are named per function (%arg2 recurs)
_FUNC = re.compile(r"^\s*util\.func\b", re.MULTILINE)
# `hal.tensor.alias [on(...)] [wait(%f) =>] %value : type to %storage : !hal.buffer_view`
_ALIAS_TARGET = re.compile(r"hal\.tensor\.alias\b[^\n]*?\bto (%[\w$.-]+) :")
# the import's source operand is the first `%name :` after the op name (wait's fence is in
# parentheses and `on(...)` holds no SSA value)
_IMPORT = re.compile(r"(hal\.tensor\.import\b[^\n]*?)(?<![\w(])(consume )?(%[\w$.-]+) :")


def mark_consumed(text: str) -> tuple[str, int]:
    """The input-phase MLIR with each aliased argument's single import marked `consume`,
    and how many imports were marked."""
    starts = [m.start() for m in _FUNC.finditer(text)]
    if not starts:
        return text, 0
    pieces = [text[: starts[0]]]
    marked = 0
    for begin, end in zip(starts, [*starts[1:], len(text)], strict=True):
        chunk, count = _mark_function(text[begin:end])
        pieces.append(chunk)
        marked += count
    return "".join(pieces), marked


def _mark_function(chunk: str) -> tuple[str, int]:
    targets = set(_ALIAS_TARGET.findall(chunk))
    if not targets:
        return chunk, 0
    imports: dict[str, int] = {}
    for m in _IMPORT.finditer(chunk):
        imports[m.group(3)] = imports.get(m.group(3), 0) + 1
    # an argument imported twice would be consumed twice: leave such a function as it is
    chosen = {name for name in targets if imports.get(name) == 1}
    marked = 0

    def mark(m: re.Match[str]) -> str:
        nonlocal marked
        if m.group(3) not in chosen or m.group(2):
            return m.group(0)
        marked += 1
        return f"{m.group(1)}consume {m.group(3)} :"

    return _IMPORT.sub(mark, chunk), marked
