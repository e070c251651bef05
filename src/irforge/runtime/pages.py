"""A free list over the cache's pages, with page 0 kept as everyone's scratch page."""

from __future__ import annotations

from irforge.errors import ToolchainError

# Padding rows and padding blocks of a batch point at this page; the model writes their
# (meaningless) K/V there, so no live sequence may own it.
SCRATCH_PAGE = 0


class PagesExhausted(ToolchainError):
    """Not enough free pages for a request."""


class PageAllocator:
    def __init__(self, page_count: int) -> None:
        if page_count < 2:
            raise ValueError(f"need at least 2 pages (one is scratch), got {page_count}")
        self.page_count = page_count
        self._free = list(range(page_count - 1, SCRATCH_PAGE, -1))  # pop() gives low ids first

    @property
    def free_count(self) -> int:
        return len(self._free)

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise PagesExhausted(
                f"{n} cache pages needed, {len(self._free)} free of {self.page_count}; "
                "raise --device-block-count at export or shorten the request"
            )
        return [self._free.pop() for _ in range(n)]

    def free(self, pages: list[int]) -> None:
        self._free.extend(reversed(pages))
