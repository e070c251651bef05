"""Request: one generation in the engine, its status, and its token stream (threads or asyncio)."""

from __future__ import annotations

import asyncio
import enum
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

from ..runtime.sampling import Sampler, Sampling


class Status(enum.StrEnum):
    QUEUED = "queued"  # waiting for pages and a prefill slot
    PREFILLED = "prefilled"  # prompt in the cache, first token out
    GENERATING = "generating"  # decoding one token per engine step
    FINISHED = "finished"  # eos, stop string or max tokens
    INTERRUPTED = "interrupted"  # cancelled, failed, or the engine stopped


DONE = (Status.FINISHED, Status.INTERRUPTED)


@dataclass(frozen=True)
class Delta:
    """One generated token and the text it made visible ("" while held back or special)."""

    token: int
    text: str


@dataclass(eq=False)
class Request:
    """A handle on one generation: read `tokens`/`text`/`status`, iterate `stream()`, `cancel()`.

    The engine's scheduler thread is the only writer; readers on other threads or event loops
    wait through `stream`, `astream`, `result` or `wait`.
    """

    id: str
    prompt: list[int]
    sampling: Sampling
    max_tokens: int
    stop: tuple[str, ...] = ()
    eos_ids: frozenset[int] = frozenset()
    prompt_text: str | None = None
    detokenize: bool = True  # False: token ids only (no text, so no stop strings either)
    status: Status = Status.QUEUED
    tokens: list[int] = field(default_factory=list)
    text: str = ""  # visible text: stop strings cut, partial stop prefixes held back
    finish_reason: str | None = None  # stop, length, cancelled, error, shutdown
    error: str | None = None
    pages: list[int] = field(default_factory=list)
    submitted_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    last_token_at: float | None = None

    def __post_init__(self) -> None:
        self.sampler = Sampler(self.sampling)  # one per request, so seeds reproduce
        self.cancelled = False
        self._deltas: list[Delta] = []
        self._cond = threading.Condition()
        # (loop, event, every delta?): astream wakes per delta, await_done only at the end
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event, bool]] = []
        self.on_cancel: Callable[[Request], None] = lambda r: None

    @property
    def done(self) -> bool:
        return self.status in DONE

    def cancel(self) -> None:
        """Stop generating; the engine frees the pages before its next step."""
        if not self.done:
            self.cancelled = True
            self.on_cancel(self)

    # -- readers ----------------------------------------------------------------------------

    def stream(self, timeout: float | None = None) -> Iterator[Delta]:
        """Each Delta as it comes, until the request is done (TimeoutError after `timeout` s)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = 0
        while True:
            with self._cond:
                while seen == len(self._deltas) and not self.done:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"request {self.id}: no token within {timeout} s")
                    self._cond.wait(left)
                new, finished = self._deltas[seen:], self.done
            seen += len(new)
            yield from new
            if finished and seen == len(self._deltas):
                return

    def wait(self, timeout: float | None = None) -> Request:
        """Block until done; returns self."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.done, timeout):
                raise TimeoutError(f"request {self.id} not done within {timeout} s")
        return self

    async def astream(self) -> AsyncIterator[Delta]:
        """`stream()` for asyncio: the scheduler thread wakes this loop, never blocks it."""
        event = asyncio.Event()
        entry = (asyncio.get_running_loop(), event, True)
        with self._cond:
            self._waiters.append(entry)
        seen = 0
        try:
            while True:
                event.clear()  # before reading, so a push after the read still wakes us
                with self._cond:
                    new, finished = self._deltas[seen:], self.done
                seen += len(new)
                for delta in new:
                    yield delta
                if finished and seen == len(self._deltas):
                    return
                if not new:
                    await event.wait()
        finally:
            with self._cond:
                self._waiters.remove(entry)

    async def await_done(self) -> Request:
        """Wait, without blocking the loop, until the request is done; returns self."""
        event = asyncio.Event()
        entry = (asyncio.get_running_loop(), event, False)
        with self._cond:
            if self.done:
                return self
            self._waiters.append(entry)
        try:
            await event.wait()
        finally:
            with self._cond:
                self._waiters.remove(entry)
        return self

    # -- the engine's side: the scheduler thread calls these, clients never do -------------

    def _notify(self) -> None:
        # called with self._cond held
        self._cond.notify_all()
        for loop, event, every in self._waiters:
            if not (every or self.done):
                continue
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop is closed; its reader is gone
                pass

    def add_token(self, token: int, detokenize: Callable[[list[int]], str]) -> None:
        """Append a generated token: stream its text, finish on a stop string, eos or length."""
        now = time.perf_counter()
        self.first_token_at = self.first_token_at or now
        self.last_token_at = now
        self.tokens.append(token)
        full = detokenize(self.tokens) if self.detokenize else ""
        reason = None
        cut = _first_stop(full, self.stop)
        if cut >= 0:
            full, reason = full[:cut], "stop"
        elif token in self.eos_ids:
            reason = "stop"
        elif len(self.tokens) >= self.max_tokens:
            reason = "length"
        visible = full if reason else full[: len(full) - _held_back(full, self.stop)]
        # detokenizing one more token normally only appends; should it rewrite what was already
        # streamed, stream nothing more, but still finish with the full text
        delta = ""
        if visible.startswith(self.text):
            delta, self.text = visible[len(self.text) :], visible
        elif reason:
            self.text = visible
        with self._cond:
            self._deltas.append(Delta(token, delta))
            if reason:
                self.status, self.finish_reason = Status.FINISHED, reason
            self._notify()

    def set_status(
        self, status: Status, reason: str | None = None, error: str | None = None
    ) -> None:
        """Move the request on (prefilled, generating, finished or interrupted) and wake readers."""
        with self._cond:
            self.status = status
            if reason:
                self.finish_reason = reason
            if error:
                self.error = error
            self._notify()


def _first_stop(text: str, stops: tuple[str, ...]) -> int:
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else -1


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters may still become a stop string or a multi-byte character."""
    hold = 0
    if text.endswith("\ufffd"):  # a byte-level token that completes a character comes next
        hold = len(text) - len(text.rstrip("\ufffd"))
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:n]):
                hold = n
                break
    return hold
