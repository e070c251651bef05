"""Prefix caching: full cache pages found again by the tokens before and in them.

A page that holds positions [i·stride, (i+1)·stride) of a prompt is identified by a digest of
every token up to its end: a chain, so the key of page i depends on page i-1's (a trie at page
granularity, held as a dict of its paths, as vLLM's block hashes are). SHA-256 rather than
Python's hash, since a collision would hand one prompt another's keys and values.

Pages in use are reference-counted. A registered page nobody uses stays cached, idle, and is
counted as free: `allocate` evicts the least recently released idle pages when the free list
runs short. With caching off, this is the plain allocator.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from irforge.runtime.pages import PageAllocator, PagesExhausted


def page_keys(tokens: Sequence[int], stride: int, pages: int) -> list[bytes]:
    """The chain keys of the first `pages` full pages of `tokens`."""
    keys, parent = [], b""
    ids = np.asarray(tokens[: pages * stride], dtype=np.int64)
    for i in range(pages):
        parent = hashlib.sha256(parent + ids[i * stride : (i + 1) * stride].tobytes()).digest()
        keys.append(parent)
    return keys


class PrefixCache:
    """Pages for requests, with full prompt pages shared between requests that begin alike."""

    def __init__(self, allocator: PageAllocator, stride: int, *, enabled: bool = True) -> None:
        self.allocator, self.stride, self.enabled = allocator, stride, enabled
        self._by_key: dict[bytes, int] = {}
        self._key_of: dict[int, bytes] = {}
        self._refs: dict[int, int] = {}  # registered pages only; others have one owner
        self._idle: OrderedDict[int, None] = OrderedDict()  # registered, unused, oldest first

    @property
    def page_count(self) -> int:
        return self.allocator.page_count

    @property
    def free_count(self) -> int:
        """Pages a request can take: the free list plus idle cached pages."""
        return self.allocator.free_count + len(self._idle)

    @property
    def cached_count(self) -> int:
        return len(self._key_of)

    def allocate(self, n: int) -> list[int]:
        if n > self.free_count:
            raise PagesExhausted(f"{n} cache pages needed, {self.free_count} free")
        while self.allocator.free_count < n:
            page, _ = self._idle.popitem(last=False)
            del self._by_key[self._key_of.pop(page)]
            del self._refs[page]
            self.allocator.free([page])
        return self.allocator.allocate(n)

    def free(self, pages: Sequence[int]) -> None:
        """Release one request's hold on its pages. Its deepest pages go idle first, so they are
        evicted before the shared ones that lead to them."""
        plain = []
        for page in reversed(pages):
            if page not in self._refs:
                plain.append(page)
                continue
            self._refs[page] -= 1
            if self._refs[page] == 0:
                self._idle[page] = None
        self.allocator.free(list(reversed(plain)))

    def lookup(self, tokens: Sequence[int]) -> list[int]:
        """Cached pages holding a prefix of `tokens`, now held by the caller (free them like
        allocated ones). The last token is never covered, so its logits are always computed."""
        if not self.enabled:
            return []
        found = []
        for key in page_keys(tokens, self.stride, (len(tokens) - 1) // self.stride):
            page = self._by_key.get(key)
            if page is None:
                break
            self._refs[page] += 1
            self._idle.pop(page, None)
            found.append(page)
        return found

    def register(self, tokens: Sequence[int], pages: Sequence[int]) -> None:
        """Offer the full pages of `tokens`, now written at `pages`, for later lookups. A page
        whose content is already cached under another page stays its owner's alone."""
        if not self.enabled:
            return
        full = min(len(tokens) // self.stride, len(pages))
        for key, page in zip(page_keys(tokens, self.stride, full), pages, strict=False):
            if page in self._refs or key in self._by_key:
                continue
            self._by_key[key], self._key_of[page], self._refs[page] = page, key, 1
