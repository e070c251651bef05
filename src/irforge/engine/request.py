"""Request: one generation in the engine, its status, and its token stream (threads or asyncio)."""

from __future__ import annotations

import asyncio
import enum
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from irforge.engine.text import TextOutput, TextStream
from irforge.runtime.sampling import Sampler, Sampling


class Status(enum.StrEnum):
    QUEUED = "queued"  # waiting for pages and a prefill slot (again, once preempted)
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
    eos_ids: frozenset[int] = frozenset()  # eos and the request's stop token ids
    min_tokens: int = 0  # before this many, eos/stop ids cannot be sampled, stop strings wait
    prompt_text: str | None = None
    detokenize: bool = True  # False: token ids only (no text, so no stop strings either)
    status: Status = Status.QUEUED
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # stop, length, cancelled, error, shutdown
    error: str | None = None
    pages: list[int] = field(default_factory=list)
    # with logprobs=N: per generated token, its log-probability and the N likeliest
    logprobs: int | None = None
    token_logprobs: list[tuple[float, tuple[tuple[int, float], ...]]] = field(default_factory=list)
    guide: Any = field(default=None, repr=False)  # guided.Guide: the grammar the output keeps
    echo: bool = False  # score the prompt too: prompt_logprobs[i] is about prompt[i + 1]
    prompt_logprobs: list[tuple[float, tuple[tuple[int, float], ...]]] = field(default_factory=list)
    prefilled: int = 0  # positions of context() in the cache (found there or computed)
    cached_tokens: int = 0  # of the prompt, found in the prefix cache at admission
    decoder: TextStream | None = field(default=None, repr=False)  # streaming detokenizer
    submitted_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    last_token_at: float | None = None

    def __post_init__(self) -> None:
        # one per request, so seeds reproduce
        self.sampler = Sampler(self.sampling, self.prompt, self.eos_ids, self.min_tokens)
        self.cancelled = False
        self.output = TextOutput(self.stop, self.decoder if self.detokenize else None)
        self._deltas: list[Delta] = []
        self._cond = threading.Condition()
        # (loop, event, every delta?): astream wakes per delta, await_done only at the end
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event, bool]] = []
        self.on_cancel: Callable[[Request], None] = lambda r: None

    def context(self) -> list[int]:
        """The ids whose keys and values must be in the cache before the next decode step:
        the prompt, and for a preempted request all but the last generated token too."""
        return self.prompt + self.tokens[:-1]

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

    def add_token(self, token: int) -> None:
        """Append a generated token: stream its text (TextOutput: detokenized, stop strings cut
        and held back), finish on a stop string, eos, a whole grammar output or the length."""
        now = time.perf_counter()
        self.first_token_at = self.first_token_at or now
        self.last_token_at = now
        self.tokens.append(token)
        self.sampler.observe(token)
        tail, cut = self.output.step(token, stops_armed=len(self.tokens) >= self.min_tokens)
        reason = None
        if cut or (token in self.eos_ids and len(self.tokens) > self.min_tokens):
            reason = "stop"
        elif self.guide is not None and self.guide.finished:  # the grammar's output is whole
            reason = "stop"
        elif len(self.tokens) >= self.max_tokens:
            reason = "length"
        delta = self.output.release(tail, final=reason is not None, cut=cut)
        with self._cond:
            self._deltas.append(Delta(token, delta))
            if reason:
                self.status, self.finish_reason = Status.FINISHED, reason
            self._notify()

    @property
    def text(self) -> str:
        """The visible text so far: stop strings cut, a possible stop string's start held back."""
        return self.output.text

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
