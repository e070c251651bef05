"""The scheduler: which requests hold pages and what each step computes. Pure code.

It owns the queue, the requests being prefilled and the running ones, and the cache's pages
(a PrefixCache). It never calls a program: each step it plans batches (`prefill_plan`,
`decode_plan`), the engine runs them on its runner and reports back (`prefilled`, `finish`).
Tests drive it with a fake runner or none at all.

Policy, as vLLM's V0 scheduler with recompute:
- Admission in arrival order while the next request's context fits in the free pages (full
  pages already in the prefix cache are shared, not recomputed); with chunked prefill, no
  further than what the next step can prefill.
- Prefill up to `prefill_chunk` prompt tokens a step, in admission order, between decode
  steps; a chunk that is not a request's last is whole pages.
- A running request takes a page when its next token starts one; when none is free, the most
  recently admitted request is preempted: its pages freed, itself requeued first in line, its
  context prefilled again when pages free up.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from irforge.engine.metrics import Metrics
from irforge.engine.request import Request, Status
from irforge.runtime.batching import blocks, split
from irforge.runtime.prefix_cache import PrefixCache

log = logging.getLogger("irforge.serve")


@dataclass(frozen=True)
class PrefillBatch:
    """One prefill call: rows of (request, the context tokens it prefills now)."""

    bs: int
    rows: list[tuple[Request, list[int]]]


@dataclass(frozen=True)
class DecodeBatch:
    """One decode call: each row's request writes its last token and samples the next."""

    bs: int
    rows: list[Request]


@dataclass(frozen=True)
class PrefillPlan:
    score: list[Request]  # echo requests: scored whole in one score_bs1 call each
    batches: list[PrefillBatch]


class Scheduler:
    """Queue, admission, chunk budget, page growth, preemption and prefix sharing.

    Args:
        pages: the cache's pages (page 0 is scratch).
        stride: positions per page (block_seq_stride).
        prefill_sizes, decode_sizes: the batch sizes the program has.
        prefill_chunk: prompt tokens per step, all requests together (rounded down to whole
            pages; 0: whole prompts at once; EngineOptions checks it).
        metrics: where admissions and preemptions are counted.

    `lock` guards the queue: `submit` appends under it from any thread; everything else runs
    on the engine's one scheduler thread.
    """

    def __init__(
        self,
        pages: PrefixCache,
        stride: int,
        prefill_sizes: Sequence[int],
        decode_sizes: Sequence[int],
        *,
        prefill_chunk: int = 0,
        metrics: Metrics | None = None,
    ) -> None:
        self.pages, self.stride = pages, stride
        self.prefill_sizes, self.decode_sizes = list(prefill_sizes), list(decode_sizes)
        # whole pages, as a chunk after the first starts on a page boundary
        self.prefill_chunk = max(stride, prefill_chunk // stride * stride) if prefill_chunk else 0
        self.metrics = metrics or Metrics()
        self.lock = threading.Condition()
        self.queue: deque[Request] = deque()
        self.prefilling: list[Request] = []  # admitted, context not all in the cache yet
        self.running: list[Request] = []  # context in the cache, one token a decode step

    @property
    def busy(self) -> bool:
        return bool(self.running or self.prefilling)

    def cache_takes(self, req: Request) -> bool:
        """Whether the free pages hold the prompts of every queued request and this one."""
        queued = sum(blocks(len(r.context()), self.stride) for r in self.queue)
        return queued + blocks(len(req.prompt), self.stride) <= self.pages.free_count

    def take_cancelled(self) -> list[Request]:
        """Remove the cancelled requests from the queue (caller holds `lock`)."""
        gone = [r for r in self.queue if r.cancelled]
        for r in gone:
            self.queue.remove(r)
        return gone

    def admit(self) -> list[Request]:
        """Queued requests, in order, while the next one's context fits in the free pages;
        they join `prefilling` (caller holds `lock`)."""
        admitted: list[Request] = []
        while self.queue:
            # With chunked prefill, no more than the next step can start: a request admitted
            # later looks up the prefix cache after the ones before it have filled it.
            backlog = sum(len(r.context()) - r.prefilled for r in self.prefilling + admitted)
            if self.prefill_chunk and backlog >= self.prefill_chunk:
                break
            req = self.queue[0]
            context = req.context()
            scoring = req.echo and not req.tokens  # every prompt position is computed
            found = [] if scoring else self.pages.lookup(context)
            need = blocks(len(context), self.stride) - len(found)
            # A resumed request waits until each running one can also take its next page:
            # admitted any sooner, it is the newest and the first to be preempted again.
            growing = len(self.running) + len(self.prefilling) + len(admitted)
            headroom = growing if req.tokens else 0
            if need + headroom > self.pages.free_count:
                self.pages.free(found)
                break
            req.pages = found + self.pages.allocate(need)
            req.prefilled = len(found) * self.stride
            if not req.tokens:  # a first admission, not a resumption
                req.cached_tokens = req.prefilled
            if self.pages.enabled:
                self.metrics.prefix_cache_lookups.inc()
                self.metrics.prefix_cache_queried_tokens.inc(len(context))
                self.metrics.prefix_cache_hit_tokens.inc(req.prefilled)
            admitted.append(self.queue.popleft())
        self.prefilling += admitted
        return admitted

    def prefill_plan(self) -> PrefillPlan:
        """This step's prefill work: echo requests to score, then batches of chunks."""
        score = [r for r in self.prefilling if r.echo and not r.tokens]
        # similar lengths together: less padding up to the longest chunk of a call
        pending = sorted(self._chunks(), key=lambda w: len(w[1]))
        batches = []
        for bs in split(self.prefill_sizes, len(pending)):
            batches.append(PrefillBatch(bs, pending[:bs]))
            pending = pending[bs:]
        return PrefillPlan(score, batches)

    def _chunks(self) -> list[tuple[Request, list[int]]]:
        """(request, the context tokens to prefill next), in admission order, up to
        prefill_chunk tokens in all (0: every request's rest)."""
        budget = self.prefill_chunk or None
        work = []
        for r in self.prefilling:
            if r.echo and not r.tokens:
                continue  # scored whole
            context = r.context()
            take = len(context) - r.prefilled
            if budget is not None:
                if budget < self.stride:
                    break
                if take > budget:  # a chunk that is not a request's last is whole pages
                    take = budget // self.stride * self.stride
                budget -= take
            work.append((r, context[r.prefilled : r.prefilled + take]))
        return work

    def prefilled(self, req: Request, n: int) -> bool:
        """`n` more context positions of `req` are in the cache; offers its full pages to the
        prefix cache. True when its context is whole and its first token is due (it is then
        running); a request resumed after preemption already has its next token."""
        req.prefilled += n
        context = req.context()
        self.pages.register(context[: req.prefilled], req.pages)
        if req.prefilled < len(context):
            return False  # more chunks to come
        self.prefilling.remove(req)
        self.running.append(req)
        if req.tokens:
            req.set_status(Status.GENERATING)
            return False
        req.set_status(Status.PREFILLED)
        return True

    def decode_plan(self) -> list[DecodeBatch]:
        """Pages for the next token of every running request (preempting the newest when
        none are free), then the running requests in decode batches."""
        self._grow()
        pending, batches = list(self.running), []
        for bs in split(self.decode_sizes, len(pending)):
            batches.append(DecodeBatch(bs, pending[:bs]))
            pending = pending[bs:]
        return batches

    def _grow(self) -> None:
        for r in list(self.running):  # admission order: the oldest are served first
            if r not in self.running:
                continue  # preempted for an older request in this pass
            while len(r.pages) < blocks(len(r.context()) + 1, self.stride):
                if self.pages.free_count == 0:
                    # the newest: a request still prefilling, else the last admitted, maybe r
                    self.preempt((self.prefilling or self.running)[-1])
                    if r not in self.running:
                        break
                    continue
                r.pages += self.pages.allocate(1)

    def reserve(self, req: Request, positions: int) -> int:
        """Pages for up to `positions` positions of running `req` from the free ones, never by
        preempting (speculative decoding's proposals are optional); the positions its pages
        now hold."""
        while len(req.pages) < blocks(positions, self.stride) and self.pages.free_count:
            req.pages += self.pages.allocate(1)
        return len(req.pages) * self.stride

    def preempt(self, victim: Request) -> None:
        """Give the victim's pages back and requeue it first: it resumes by recomputing."""
        self.pages.free(victim.pages)
        victim.pages, victim.prefilled = [], 0
        (self.prefilling if victim in self.prefilling else self.running).remove(victim)
        victim.set_status(Status.QUEUED)
        with self.lock:
            self.queue.appendleft(victim)
        self.metrics.preemptions.inc()
        log.info("preempted %s at %d tokens", victim.id, len(victim.context()))

    def release(self, req: Request) -> bool:
        """Free `req`'s pages and drop it from the step; False if it was already released."""
        held = bool(req.pages) or req in self.running or req in self.prefilling
        if req.pages:
            self.pages.free(req.pages)
            req.pages = []
        if req in self.running:
            self.running.remove(req)
        if req in self.prefilling:
            self.prefilling.remove(req)
        return held

    def drain(self) -> list[Request]:
        """Every request the scheduler holds, removed (the engine interrupts them)."""
        with self.lock:
            left = list(self.queue) + self.prefilling + self.running
            self.queue.clear()
        for r in left:
            self.release(r)
        return left
