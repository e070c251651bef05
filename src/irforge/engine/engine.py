"""Engine: requests run on a runner's prefill/decode calls, as the scheduler plans them.

The scheduler (scheduler.py) decides what each step computes; this module runs those plans
on a runner (the compiled Session, or the eager model: runner.py) from one thread, hands each
row's logits to the output stage (outputs.py) and counts what happened (metrics.py).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from irforge.artifacts.files import TOKENIZER_JSON
from irforge.artifacts.manifest import VERIFY_MAX_BATCH, ExportOptions
from irforge.engine.draft import DraftProposer
from irforge.engine.errors import BadRequest, Overloaded, ShuttingDown
from irforge.engine.guided import Grammars
from irforge.engine.limits import Limits
from irforge.engine.metrics import Metrics
from irforge.engine.options import EngineOptions, GenerationOptions
from irforge.engine.outputs import pick_token
from irforge.engine.request import Request, Status
from irforge.engine.runner import Runner
from irforge.engine.scheduler import DecodeBatch, Scheduler
from irforge.engine.speculative import DRAFT_MODEL, Speculator
from irforge.engine.text import TextCodec
from irforge.errors import ConfigError
from irforge.runtime.batching import (
    blocks,
    decode_arrays,
    prefill_arrays,
    row_logits,
    verify_arrays,
)
from irforge.runtime.prefix_cache import PrefixCache
from irforge.runtime.sampling import Sampling

log = logging.getLogger("irforge.serve")
_ids = itertools.count()


class Engine:
    """An artifact folder served to many callers: `submit()` from any thread, one device thread.

    Every runner call happens on the engine's scheduler thread. Each iteration it drops
    cancelled requests, lets the scheduler admit queued ones, runs its prefill plan (a long
    prompt a chunk per step, between the running streams' tokens), then its decode plan: one
    token for every running request. See scheduler.py for the policy (admission, chunking,
    page growth, preemption, prefix sharing).

    Args:
        folder: an artifact folder (`irforge export` + `irforge compile`); its tokenizer and
            chat template serve text prompts.
        options: how to serve it (EngineOptions); or its fields as keyword arguments.
        parameters: an iree.runtime.ParameterIndex instead of the folder's archives (`Session`).
        runner: run on this instead of opening the folder's compiled program (the eager
            model: eager.py, or a test's fake); the device and cache-size options then unused.
        draft_runner: with speculative method draft_model, the draft on this instead of its
            folder's program (its cache as many pages as the target's).
        start: start the scheduler thread now (tests hold it to fill the queue).
    """

    def __init__(
        self,
        folder: Path,
        options: EngineOptions | None = None,
        *,
        parameters: Any = None,
        runner: Runner | None = None,
        draft_runner: Runner | None = None,
        start: bool = True,
        **fields: Any,
    ) -> None:
        if options is not None and fields:
            raise TypeError(f"give EngineOptions or its fields, not both ({', '.join(fields)})")
        options = options or EngineOptions(**fields)
        self.options = options
        self.folder = Path(folder)
        if runner is None:
            from irforge.runtime.session import Session

            session: Runner = Session(
                self.folder,
                device=options.device,
                device_ids=list(options.device_ids) if options.device_ids else None,
                page_count=options.page_count,
                cache_gib=options.cache_gib,
                parameters=parameters,
            )
            runner = session
        self.runner = runner
        exported, config = runner.options, runner.config
        self.max_seq_len = exported.max_seq_len
        self.vocab_size = config.vocab_size
        self.text = TextCodec(self.folder) if (self.folder / TOKENIZER_JSON).is_file() else None
        if self.text is None:
            log.warning("%s: no %s: requests must send token ids", self.folder, TOKENIZER_JSON)
        elif not self.text.has_chat_template:
            log.warning(
                "%s: no chat template (chat_template.jinja, chat_template.json or "
                "tokenizer_config.json): chat prompts are plain 'role: content' lines",
                self.folder,
            )
        eos = set(config.eos_token_ids)
        if self.text and self.text.eos_id is not None:
            eos.add(self.text.eos_id)
        self.eos_ids = frozenset(eos)
        grammars = (
            Grammars(self.folder / TOKENIZER_JSON, self.vocab_size, self.eos_ids)
            if self.text
            else None
        )
        self.metrics = Metrics()
        positioned = runner.prefill_position
        stride = exported.block_seq_stride
        self.pages = PrefixCache(
            runner.pages, stride, enabled=options.prefix_caching and positioned
        )
        self.limits = Limits(
            self.folder,
            self.max_seq_len,
            stride,
            self.pages.page_count,
            self.vocab_size,
            exported.top_k,
            runner.can_score,
            self.text,
            grammars,
        )
        self.scheduler = Scheduler(
            self.pages,
            stride,
            exported.prefill_batch_sizes,
            exported.decode_batch_sizes,
            prefill_chunk=options.prefill_chunk if positioned else 0,
            metrics=self.metrics,
        )
        self.speculator = self._speculator(options, exported)
        self.draft = self._draft(options, draft_runner)
        self._cond = self.scheduler.lock
        self._admitting = True
        self._abort = False
        self._thread = threading.Thread(target=self._loop, name="irforge-engine", daemon=True)
        if start:
            self.start()

    def _speculator(self, options: EngineOptions, exported: ExportOptions) -> Speculator | None:
        if options.speculative is None:
            return None
        if not exported.verify_batch_sizes:
            raise ConfigError(
                f"{self.folder}: the program has no verify entry points, so it cannot "
                "speculate; `irforge build` makes them (or export with --speculative-tokens "
                f"and a decode batch size of at most {VERIFY_MAX_BATCH})"
            )
        stride = exported.block_seq_stride
        return Speculator(
            options.speculative,
            exported.speculative_tokens,
            exported.verify_batch_sizes,
            blocks(self.max_seq_len, stride) * stride,
        )

    def _draft(self, options: EngineOptions, runner: Runner | None) -> DraftProposer | None:
        """The draft model's proposer, on `runner` or on the draft folder's program with as
        many cache pages as the target (its pages are addressed by the target's page ids)."""
        spec = options.speculative
        if spec is None or spec.method != DRAFT_MODEL:
            return None
        if runner is None:
            from irforge.runtime.session import Session

            assert spec.model is not None
            runner = Session(
                Path(spec.model),
                device=options.device,
                device_ids=list(options.device_ids) if options.device_ids else None,
                page_count=self.pages.page_count,
            )
        exported = self.runner.options
        if runner.options.max_seq_len < self.max_seq_len:
            raise ConfigError(
                f"the draft model serves {runner.options.max_seq_len} positions, the target "
                f"{self.max_seq_len}; export it with --max-seq-len {self.max_seq_len}"
            )
        return DraftProposer(
            runner, self.vocab_size, exported.block_seq_stride, exported.verify_batch_sizes
        )

    # -- callers ------------------------------------------------------------------------------

    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

    @property
    def running(self) -> bool:
        """Whether the scheduler thread is serving (False before start and after shutdown)."""
        return self._thread.is_alive()

    def submit(
        self, prompt: str | Sequence[int], sampling: Sampling | None = None, **options: Any
    ) -> Request:
        """`enqueue` with GenerationOptions(sampling=sampling, **options)."""
        return self.enqueue(prompt, GenerationOptions(sampling=sampling or Sampling(), **options))

    def enqueue(self, prompt: str | Sequence[int], options: GenerationOptions) -> Request:
        """Queue one generation; returns its handle at once.

        `prompt` is text (needs tokenizer.json) or token ids. Raises BadRequest for a request
        that can never be served (limits.py) and Overloaded (or ShuttingDown) when the queue
        is full or the engine is stopping.
        """
        checked = self.limits.check(prompt, options)
        detokenize = options.detokenize or any(options.stop)  # stop strings need the text
        req = Request(
            id=options.request_id or f"req-{next(_ids)}",
            prompt=checked.ids,
            sampling=options.sampling,
            max_tokens=checked.max_tokens,
            stop=tuple(s for s in options.stop if s),
            eos_ids=(frozenset() if options.ignore_eos else self.eos_ids)
            | frozenset(options.stop_token_ids),
            min_tokens=options.min_tokens,
            prompt_text=checked.text,
            detokenize=detokenize,
            logprobs=options.logprobs,
            guide=checked.guide,
            echo=options.echo and options.logprobs is not None,
            decoder=self.text.stream() if self.text is not None and detokenize else None,
        )
        req.on_cancel = self._wake
        with self._cond:
            if not self._admitting:
                self.metrics.requests_rejected.labels(reason="shutting_down").inc()
                raise ShuttingDown("the server is shutting down; no new requests", 5)
            queue = self.scheduler.queue
            if len(queue) >= self.options.max_queue and not self.scheduler.cache_takes(req):
                self.metrics.requests_rejected.labels(reason="queue_full").inc()
                raise Overloaded(
                    f"the request queue is full ({self.options.max_queue} waiting, "
                    f"{self.pages.free_count} cache pages free); retry shortly"
                )
            queue.append(req)
            self._cond.notify()
        self.metrics.requests_received.inc()
        return req

    def shutdown(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Stop admitting; with `drain`, finish queued and running requests, then stop."""
        self.stop_admitting()
        with self._cond:
            self._abort = self._abort or not drain
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        elif not self._thread.ident:  # never started: nothing will serve the queue
            self._interrupt_all("shutdown")

    def close(self) -> None:
        """Release the device and program once the scheduler thread is gone (never under a
        call still running on it)."""
        if not self._thread.is_alive():
            self.runner.close()
            if self.draft is not None:
                self.draft.runner.close()

    def stop_admitting(self) -> None:
        self._admitting = False  # a plain store: safe from a signal handler

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(drain=False)

    def gauges(self) -> dict[str, float]:
        s, m = self.scheduler, self.metrics
        gauges: dict[str, float] = {
            "queue_depth": len(s.queue),
            "running_requests": len(s.running) + len(s.prefilling),
            "kv_pages_free": self.pages.free_count,
            "kv_pages_cached": self.pages.cached_count,
            "kv_pages_total": self.pages.page_count - 1,
            "page_tokens": s.stride,
        }
        if self.speculator is not None:
            proposed = m.counter("spec_decode_draft_tokens_total")
            accepted = m.counter("spec_decode_accepted_tokens_total")
            gauges["spec_decode_acceptance_rate"] = accepted / proposed if proposed else 0.0
        return gauges

    def _wake(self, _: Request | None = None) -> None:
        with self._cond:
            self._cond.notify()

    # -- the scheduler thread --------------------------------------------------------------------

    def _loop(self) -> None:
        s = self.scheduler
        while True:
            with self._cond:
                while not (s.queue or s.busy or self._abort or not self._admitting):
                    self._cond.wait()
                if self._abort or not (s.queue or s.busy or self._admitting):
                    break
                cancelled = s.take_cancelled()
                s.admit()
            for r in cancelled:
                self._finish(r, Status.INTERRUPTED, "cancelled")
            try:
                self._prefill()
                self._decode()
            except Exception:  # a bug here must not leave callers waiting forever
                log.exception("engine step failed")
                for r in s.prefilling + s.running:
                    self._finish(r, Status.INTERRUPTED, "error", "internal error in the engine")
        self._interrupt_all("shutdown")

    def _interrupt_all(self, reason: str) -> None:
        for r in self.scheduler.drain():
            self._finish(r, Status.INTERRUPTED, reason)

    def _finish(self, req: Request, status: Status, reason: str, error: str | None = None) -> None:
        if self.speculator is not None:
            self.speculator.forget(req)
        if self.draft is not None:
            self.draft.forget(req)
        if not self.scheduler.release(req) and req.done:
            return  # already finished and counted
        if not req.done:
            req.set_status(status, reason, error)
        self.metrics.requests_finished.labels(reason=req.finish_reason or reason).inc()

    def _emit(self, req: Request, scores: Any, ids: Any) -> int | None:
        """Pick, add and count `req`'s next token from one position's logits; the token, or
        None if sampling failed (the request is then finished with an error)."""
        try:
            token = pick_token(req, scores, ids)
        except (ValueError, FloatingPointError, IndexError) as e:
            # one request's sampling (NaN logits, say) fails that request, not the batch
            log.warning("request %s: sampling failed: %s", req.id, e)
            self._finish(req, Status.INTERRUPTED, "error", f"sampling failed: {e}")
            return None
        first = req.first_token_at is None
        last = req.last_token_at
        req.add_token(token)
        self.metrics.generation_tokens.inc()
        now = req.last_token_at or time.perf_counter()  # add_token just set it
        if first or last is None:
            self.metrics.time_to_first_token.observe(now - req.submitted_at)
        else:
            self.metrics.time_per_output_token.observe(now - last)
        if req.done:
            self._finish(req, req.status, req.finish_reason or "stop")
        return token

    def _prefill(self) -> None:
        s, stride = self.scheduler, self.scheduler.stride
        for r in [r for r in s.prefilling if r.cancelled]:
            self._finish(r, Status.INTERRUPTED, "cancelled")
        plan = s.prefill_plan()
        for r in plan.score:
            self._score(r)
        for batch in plan.batches:
            chunks = [chunk for _, chunk in batch.rows]
            arrays = prefill_arrays(
                chunks,
                [r.pages for r, _ in batch.rows],
                batch.bs,
                stride,
                [r.prefilled for r, _ in batch.rows],
            )
            out = self.runner.prefill(*arrays)
            self.metrics.prefill_calls.labels(bs=str(batch.bs)).inc()
            for row, (r, chunk) in enumerate(batch.rows):
                self.metrics.prompt_tokens.inc(len(chunk))
                if self.draft is not None:  # (re)admitted: the draft starts from nothing
                    self.draft.forget(r)
                if s.prefilled(r, len(chunk)):
                    self._emit(r, *row_logits(out, row, len(r.prompt) - 1))

    def _score(self, r: Request) -> None:
        """Prefill an echo request's prompt in one score_bs1 call, keeping its logprobs."""
        context = r.context()
        arrays = prefill_arrays([context], [r.pages], 1, self.scheduler.stride)
        last, chosen, values, ids = self.runner.score(*arrays)
        if self.draft is not None:
            self.draft.forget(r)
        top = r.logprobs or 0
        r.prompt_logprobs = [
            (
                float(chosen[0, i]),
                tuple(
                    (int(t), float(v))
                    for t, v in zip(ids[0, i, :top], values[0, i, :top], strict=True)
                ),
            )
            for i in range(len(context) - 1)
        ]
        self.metrics.prefill_calls.labels(bs="1").inc()
        self.metrics.prompt_tokens.inc(len(context))
        self.scheduler.prefilled(r, len(context) - r.prefilled)
        self._emit(r, *row_logits(last, 0, len(context) - 1))

    def _decode(self) -> None:
        s = self.scheduler
        for r in [r for r in s.running if r.cancelled]:
            self._finish(r, Status.INTERRUPTED, "cancelled")
        batches = s.decode_plan()
        running = len(s.running)
        for batch in batches:
            group = batch.rows
            for r in group:
                if r.status is Status.PREFILLED:
                    r.set_status(Status.GENERATING)
            if self.speculator is not None and self._speculate(batch, running):
                continue
            positions = [len(r.prompt) + len(r.tokens) - 1 for r in group]
            arrays = decode_arrays(
                [r.tokens[-1] for r in group],
                positions,
                [r.pages for r in group],
                batch.bs,
                s.stride,
            )
            started = time.perf_counter()
            out = self.runner.decode(*arrays)
            self._timed("decode", batch.bs, started)
            self.metrics.decode_calls.labels(bs=str(batch.bs)).inc()
            for row, r in enumerate(group):
                self._emit(r, *row_logits(out, row, 0))

    def _timed(self, kind: str, bs: int, started: float) -> None:
        seconds = time.perf_counter() - started
        log.debug("%s_bs%d %.2f ms", kind, bs, seconds * 1e3)
        if self.speculator is not None:
            self.speculator.timed(kind, bs, seconds)

    def _speculate(self, batch: DecodeBatch, running: int) -> bool:
        """Verify the batch's proposals in one verify_bs{N} call and emit each row's tokens,
        if the speculator says it gains (speculative.py); False: decode it instead."""
        spec, s = self.speculator, self.scheduler
        assert spec is not None

        rows, draft = batch.rows, self.draft
        lengths = [len(r.prompt) + len(r.tokens) for r in rows]  # the last token's K/V is due

        def propose() -> list[list[int]]:
            # at most what each request may still generate, less the token verify adds
            caps = [min(spec.k, r.max_tokens - len(r.tokens) - 1) for r in rows]
            if draft is None:
                wanted = [
                    spec.propose(r.prompt + r.tokens, c + 1)
                    for r, c in zip(rows, caps, strict=True)
                ]
            elif all(spec.fits(n) and spec.fits(n - spec.width + draft.width) for n in lengths):
                # pages first: the draft writes its proposal's keys and values into them
                for r, n, c in zip(rows, lengths, caps, strict=True):
                    s.reserve(r, n + c)
                wanted = draft.propose(rows, batch.bs, spec.k)
            else:
                return [[] for _ in rows]
            proposals = []
            for r, n, c, proposal in zip(rows, lengths, caps, wanted, strict=True):
                proposal = proposal[: max(c, 0)]
                # pages for the proposal's positions, as far as free pages go (no preempting)
                room = s.reserve(r, n + len(proposal)) - n if proposal else 0
                proposals.append(proposal[: max(room, 0)])
            return proposals

        # a verify step's time includes making its proposals (a draft model's steps)
        started = time.perf_counter()
        proposals = spec.plan(rows, batch.bs, running, propose)
        if proposals is None:
            return False
        arrays = verify_arrays(
            [[r.tokens[-1], *p] for r, p in zip(batch.rows, proposals, strict=True)],
            [len(r.prompt) + len(r.tokens) - 1 for r in batch.rows],
            [r.pages for r in batch.rows],
            batch.bs,
            spec.width,
            s.stride,
        )
        out = self.runner.verify(*arrays)
        # (a draft's catching up on a new request's prompt is not part of a step's cost)
        self._timed("verify", batch.bs, started + (draft.catch_up_seconds if draft else 0.0))
        m = self.metrics
        m.verify_calls.labels(bs=str(batch.bs)).inc()
        for row, (r, proposal) in enumerate(zip(batch.rows, proposals, strict=True)):
            # position j's logits follow the proposal's first j tokens: emit while they agree
            kept = 0
            for j in range(len(proposal) + 1):
                token = self._emit(r, *row_logits(out, row, j))
                agreed = j < len(proposal) and token == proposal[j]
                kept += agreed
                if not agreed or r.done:
                    break
            if proposal:
                m.spec_decode_drafts.inc()
                m.spec_decode_draft_tokens.inc(len(proposal))
                m.spec_decode_accepted_tokens.inc(kept)
                spec.observe(r, len(proposal), kept)
            if self.draft is not None:
                self.draft.kept(r, lengths[row], kept, len(proposal))
        return True


def check_sampling(
    temperature: float, top_k: int, top_p: float, seed: int | None, **penalties: Any
) -> Sampling:
    """A Sampling, or BadRequest naming the bad parameter."""
    try:
        return Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, **penalties)
    except ConfigError as e:
        param = str(e).split(" ", 1)[0]
        raise BadRequest(str(e), param) from e
