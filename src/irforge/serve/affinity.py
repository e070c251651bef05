"""Which replica holds a prompt's prefix: the table a prefix-aware router keeps.

A prompt is cut into whole blocks of `BLOCK_CHARS` characters; each block's key chains the
keys before it (as vLLM and the engine's prefix cache chain page hashes), so a key stands for
the whole prefix up to its block. The table maps a key to the replica the first prompt with
that prefix went to; the longest prefix with a live owner wins. Bounded: the least recently
routed keys are dropped first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Hashable, Sequence
from typing import Generic, TypeVar

# about one 16-token cache page of English text: a shorter match shares no page
BLOCK_CHARS = 64
CAPACITY = 1 << 16  # keys kept: 4 MiB of prompt text's worth of prefixes

Owner = TypeVar("Owner", bound=Hashable)


def chain(text: str, block: int = BLOCK_CHARS) -> list[int]:
    """The keys of `text`'s whole blocks, each standing for all of the text up to its end."""
    keys, key = [], 0
    for end in range(block, len(text) + 1, block):
        key = hash((key, text[end - block : end]))
        keys.append(key)
    return keys


class PrefixTable(Generic[Owner]):
    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._owners: OrderedDict[int, Owner] = OrderedDict()

    def owner(self, keys: Sequence[int], alive: Collection[Owner]) -> tuple[Owner | None, int]:
        """The live replica that took the longest of these prefixes, and how many blocks
        long it is ((None, 0): none)."""
        for n in range(len(keys), 0, -1):
            found = self._owners.get(keys[n - 1])
            if found is not None and found in alive:
                return found, n
        return None, 0

    def record(self, keys: Sequence[int], owner: Owner) -> None:
        """`owner` took a prompt with these keys: it owns those nobody owned (a prefix keeps
        its first owner, so affinity does not flip when the load sends one request elsewhere)."""
        for key in keys:
            self._owners.setdefault(key, owner)
            self._owners.move_to_end(key)
        while len(self._owners) > self.capacity:
            self._owners.popitem(last=False)

    def forget(self, owner: Owner) -> None:
        """Drop a replica that is gone (its cache went with it)."""
        for key in [k for k, o in self._owners.items() if o == owner]:
            del self._owners[key]

    def __len__(self) -> int:
        return len(self._owners)
