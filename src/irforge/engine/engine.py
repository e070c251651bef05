"""Engine: continuous batching of requests over a Session's prefill/decode programs."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from irforge.artifacts.files import SCORE_FUNCTION, TOKENIZER_JSON
from irforge.engine.errors import BadRequest, Overloaded, ShuttingDown
from irforge.engine.guided import Grammars, Guide, GuidedSpec
from irforge.engine.metrics import Metrics
from irforge.engine.request import Request, Status
from irforge.engine.text import TextCodec
from irforge.errors import ConfigError
from irforge.runtime.batching import (
    DEFAULT_PREFILL_CHUNK,
    blocks,
    decode_arrays,
    prefill_arrays,
    row_logits,
    split,
)
from irforge.runtime.prefix_cache import PrefixCache
from irforge.runtime.sampling import MAX_LOGPROBS, Sampling, token_logprobs
from irforge.runtime.session import Session

log = logging.getLogger("irforge.serve")
# A prompt longer than context x this cannot fit: refused before it is tokenized.
MAX_CHARS_PER_TOKEN = 64
_ids = itertools.count()


class Engine:
    """An artifact folder served to many callers: `submit()` from any thread, one device thread.

    Every IREE call happens on the engine's scheduler thread. Each iteration it drops
    cancelled requests, admits queued ones in order while their prompt's pages fit (full
    pages already in the prefix cache are shared, not recomputed), prefills up to
    `prefill_chunk` prompt tokens in batches, then runs one decode step for every running
    request: a long prompt is prefilled a chunk per step, between the running streams' tokens.
    Pages are taken as sequences grow: when a running request needs a page and none is free,
    the most recently admitted request is preempted (its pages freed, itself requeued first in
    line, its prompt and tokens so far prefilled again when pages free up), as vLLM's
    recompute does.

    Args:
        folder: an artifact folder (`irforge export` + `irforge compile`).
        device, device_ids: the IREE driver and devices (see `Session`).
        max_queue: requests waiting for admission before `submit` raises `Overloaded`; a
            request the free cache pages can take along with everything queued is never
            refused for the count (admission follows what the cache holds).
        page_count: cache pages (default: the export's device_block_count).
        cache_gib: instead of page_count, the pages that fit in this many GiB per device.
        prefix_caching: share full prompt pages between requests that begin alike.
        prefill_chunk: prompt tokens prefilled per step, all requests together (rounded down
            to whole pages; 0: whole prompts at once). Both need a folder whose prefill takes
            start_pos (`Manifest.prefill_position`); older folders prefill whole prompts.
        parameters: an iree.runtime.ParameterIndex instead of the folder's archives (`Session`).
        start: start the scheduler thread now (tests hold it to fill the queue).
    """

    def __init__(
        self,
        folder: Path,
        *,
        device: str = "local-task",
        device_ids: list[int] | None = None,
        max_queue: int = 256,
        page_count: int | None = None,
        cache_gib: float | None = None,
        prefix_caching: bool = True,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        parameters: Any = None,
        start: bool = True,
    ) -> None:
        self.folder = Path(folder)
        self.session = Session(
            self.folder,
            device=device,
            device_ids=device_ids,
            page_count=page_count,
            cache_gib=cache_gib,
            parameters=parameters,
        )
        options = self.session.options
        self.stride, self.max_seq_len = options.block_seq_stride, options.max_seq_len
        self.prefill_sizes = options.prefill_batch_sizes
        self.decode_sizes = options.decode_batch_sizes
        self.vocab_size, self.top_k = self.session.config.vocab_size, options.top_k
        self.text = TextCodec(self.folder) if (self.folder / TOKENIZER_JSON).is_file() else None
        if self.text is None:
            log.warning("%s: no %s: requests must send token ids", self.folder, TOKENIZER_JSON)
        elif not self.text.has_chat_template:
            log.warning(
                "%s: no chat template (chat_template.jinja, chat_template.json or "
                "tokenizer_config.json): chat prompts are plain 'role: content' lines",
                self.folder,
            )
        eos = set(self.session.config.eos_token_ids)
        if self.text and self.text.eos_id is not None:
            eos.add(self.text.eos_id)
        self.eos_ids = frozenset(eos)
        self.grammars = (
            Grammars(self.folder / TOKENIZER_JSON, self.vocab_size, self.eos_ids)
            if self.text
            else None
        )
        self.max_queue = max_queue
        self.metrics = Metrics()
        positioned = self.session.prefill_position
        self.pages = PrefixCache(
            self.session.pages, self.stride, enabled=prefix_caching and positioned
        )
        if prefill_chunk < 0:
            raise ConfigError(f"prefill_chunk must be 0 or more tokens, got {prefill_chunk}")
        # whole pages, as a chunk after the first starts on a page boundary
        self.prefill_chunk = max(self.stride, prefill_chunk // self.stride * self.stride)
        if not (prefill_chunk and positioned):
            self.prefill_chunk = 0
        self._prefilling: list[Request] = []  # admitted, context not all in the cache yet
        session = self.session
        self.can_score = bool(
            session.prefill_position and session.module.lookup_function(SCORE_FUNCTION)
        )
        self._cond = threading.Condition()
        self._queue: deque[Request] = deque()
        self._running: list[Request] = []
        self._admitting = True
        self._abort = False
        self._thread = threading.Thread(target=self._loop, name="irforge-engine", daemon=True)
        if start:
            self.start()

    # -- callers ------------------------------------------------------------------------------

    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

    def submit(
        self,
        prompt: str | Sequence[int],
        sampling: Sampling | None = None,
        *,
        max_tokens: int | None = None,
        stop: Sequence[str] = (),
        ignore_eos: bool = False,
        request_id: str | None = None,
        min_tokens: int = 0,
        stop_token_ids: Sequence[int] = (),
        detokenize: bool = True,
        logprobs: int | None = None,
        guided: GuidedSpec | None = None,
        echo: bool = False,
    ) -> Request:
        """Queue one generation; returns its handle at once.

        `prompt` is text (needs tokenizer.json) or token ids; `max_tokens` defaults to the
        room left in the context. Raises BadRequest for a request that can never be served
        and Overloaded (or ShuttingDown) when the queue is full or the engine is stopping.
        With `detokenize=False` the request carries token ids only (a little less work per
        token); stop strings need text, so they turn it back on. With `logprobs=N` each
        generated token carries its log-probability and the N likeliest alternatives'.
        `guided` constrains the output to a JSON schema, a regex or a choice (guided.py).
        `echo` with `logprobs` scores the prompt as well (`prompt_logprobs`, score_bs1).
        """
        ids, text = self._prompt(prompt)
        room = self.max_seq_len - len(ids)
        if room < 1:
            raise BadRequest(
                f"the prompt has {len(ids)} tokens; the context is {self.max_seq_len} tokens, "
                f"so a prompt may have at most {self.max_seq_len - 1}",
                "prompt",
            )
        cache_tokens = (self.pages.page_count - 1) * self.stride  # page 0 is scratch
        if len(ids) >= cache_tokens:
            raise BadRequest(
                f"the prompt has {len(ids)} tokens; the KV cache holds {cache_tokens} "
                "(serve --kv-cache-pages / --kv-cache-gib)",
                "prompt",
            )
        if max_tokens is None:  # OpenAI's: up to the context, here as far as the cache holds
            max_tokens = min(room, cache_tokens - len(ids))
        if max_tokens < 1:
            raise BadRequest(f"max_tokens must be at least 1, got {max_tokens}", "max_tokens")
        if max_tokens > room:
            raise BadRequest(
                f"max_tokens {max_tokens} is over the limit: {room} new tokens fit after the "
                f"prompt's {len(ids)} in the context of {self.max_seq_len}",
                "max_tokens",
            )
        if len(ids) + max_tokens > cache_tokens:
            raise BadRequest(
                f"the request needs {blocks(len(ids) + max_tokens, self.stride)} cache pages "
                f"even alone, the cache has {self.pages.page_count - 1}; lower max_tokens",
                "max_tokens",
            )
        if not 0 <= min_tokens <= max_tokens:
            raise BadRequest(
                f"min_tokens must be between 0 and max_tokens ({max_tokens}), got {min_tokens}",
                "min_tokens",
            )
        bad_stop = next((t for t in stop_token_ids if not 0 <= t < self.vocab_size), None)
        if bad_stop is not None:
            raise BadRequest(
                f"stop token id {bad_stop} is outside the vocabulary (0..{self.vocab_size - 1})",
                "stop_token_ids",
            )
        if logprobs is not None:
            if not 0 <= logprobs <= MAX_LOGPROBS:
                raise BadRequest(
                    f"logprobs must be between 0 and {MAX_LOGPROBS}, got {logprobs}", "logprobs"
                )
            if self.top_k:
                raise BadRequest(
                    f"logprobs need the full logits; this program returns only its top "
                    f"{self.top_k} (exported with --top-k)",
                    "logprobs",
                )
        guide = self._guide(guided) if guided is not None else None
        if echo and logprobs is not None and not self.can_score:
            raise BadRequest(
                f"{self.folder}: scoring the prompt needs a single-device folder exported by "
                "this irforge (its program has score_bs1)",
                "echo",
            )
        sampling = sampling or Sampling()
        bad = next((t for t, _ in sampling.logit_bias if t >= self.vocab_size), None)
        if bad is not None:
            raise BadRequest(
                f"logit_bias token id {bad} is outside the vocabulary (0..{self.vocab_size - 1})",
                "logit_bias",
            )
        if self.top_k and sampling.top_k > self.top_k:
            raise BadRequest(
                f"top_k {sampling.top_k} is over the program's exported top_k {self.top_k}",
                "top_k",
            )
        req = Request(
            id=request_id or f"req-{next(_ids)}",
            prompt=ids,
            sampling=sampling,
            max_tokens=max_tokens,
            stop=tuple(s for s in stop if s),
            eos_ids=(frozenset() if ignore_eos else self.eos_ids) | frozenset(stop_token_ids),
            min_tokens=min_tokens,
            prompt_text=text,
            detokenize=detokenize or any(stop),
            logprobs=logprobs,
            guide=guide,
            echo=echo and logprobs is not None,
        )
        if self.text is not None and req.detokenize:
            req.decoder = self.text.stream()
        req.on_cancel = self._wake
        with self._cond:
            if not self._admitting:
                self.metrics.inc("requests_rejected_total", reason="shutting_down")
                raise ShuttingDown("the server is shutting down; no new requests", 5)
            if len(self._queue) >= self.max_queue and not self._cache_takes(req):
                self.metrics.inc("requests_rejected_total", reason="queue_full")
                raise Overloaded(
                    f"the request queue is full ({self.max_queue} waiting, "
                    f"{self.pages.free_count} cache pages free); retry shortly"
                )
            self._queue.append(req)
            self._cond.notify()
        self.metrics.inc("requests_received_total")
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
            self.session.close()

    def stop_admitting(self) -> None:
        self._admitting = False  # a plain store: safe from a signal handler

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(drain=False)

    def gauges(self) -> dict[str, float]:
        return {
            "queue_depth": len(self._queue),
            "running_requests": len(self._running) + len(self._prefilling),
            "kv_pages_free": self.pages.free_count,
            "kv_pages_cached": self.pages.cached_count,
            "kv_pages_total": self.pages.page_count - 1,
        }

    def _prompt(self, prompt: str | Sequence[int]) -> tuple[list[int], str | None]:
        if isinstance(prompt, str):
            if not prompt:
                raise BadRequest("the prompt is empty", "prompt")
            if self.text is None:
                raise BadRequest(f"{self.folder} has no tokenizer.json: send token ids", "prompt")
            if len(prompt) > self.max_seq_len * MAX_CHARS_PER_TOKEN:  # refused untokenized
                raise BadRequest(
                    f"the prompt has {len(prompt)} characters; no {self.max_seq_len}-token "
                    "context holds that many",
                    "prompt",
                )
            ids = self.text.encode(prompt)
            if not ids:
                raise BadRequest("the prompt encodes to no tokens", "prompt")
            return ids, prompt
        if len(prompt) >= self.max_seq_len:
            raise BadRequest(
                f"the prompt has {len(prompt)} tokens; the context is {self.max_seq_len} tokens, "
                f"so a prompt may have at most {self.max_seq_len - 1}",
                "prompt",
            )
        ids = [int(t) for t in prompt]
        if not ids:
            raise BadRequest("the prompt is empty", "prompt")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise BadRequest(
                f"token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})",
                "prompt",
            )
        return ids, None

    def _guide(self, spec: GuidedSpec) -> Guide:
        if self.grammars is None:
            raise BadRequest(
                f"{self.folder} has no tokenizer.json: structured output needs one",
                "response_format",
            )
        if self.top_k:
            raise BadRequest(
                "structured output needs the full logits; this program returns only its top "
                f"{self.top_k} (exported with --top-k)",
                "response_format",
            )
        return self.grammars.guide(spec)

    def _cache_takes(self, req: Request) -> bool:
        """Whether the free pages hold the prompts of every queued request and this one."""
        queued = sum(blocks(len(r.context()), self.stride) for r in self._queue)
        return queued + blocks(len(req.prompt), self.stride) <= self.pages.free_count

    def _wake(self, _: Request | None = None) -> None:
        with self._cond:
            self._cond.notify()

    # -- the scheduler thread --------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._queue or self._busy() or self._abort or not self._admitting):
                    self._cond.wait()
                if self._abort or not (self._queue or self._busy() or self._admitting):
                    break
                waiting = [r for r in self._queue if r.cancelled]
                for r in waiting:
                    self._queue.remove(r)
                admitted = self._admit()
            for r in waiting:
                self._finish(r, Status.INTERRUPTED, "cancelled")
            self._prefilling += admitted
            try:
                self._prefill()
                self._decode()
            except Exception:  # a bug here must not leave callers waiting forever
                log.exception("engine step failed")
                for r in self._prefilling + self._running:
                    self._finish(r, Status.INTERRUPTED, "error", "internal error in the engine")
                self._running, self._prefilling = [], []
        self._interrupt_all("shutdown")

    def _busy(self) -> bool:
        return bool(self._running or self._prefilling)

    def _interrupt_all(self, reason: str) -> None:
        with self._cond:
            left = list(self._queue) + self._prefilling + self._running
            self._queue.clear()
        for r in left:
            self._finish(r, Status.INTERRUPTED, reason)
        self._running, self._prefilling = [], []

    def _admit(self) -> list[Request]:
        """Queued requests, in order, while the next one's context fits in the free pages."""
        admitted: list[Request] = []
        while self._queue:
            # With chunked prefill, no more than the next step can start: a request admitted
            # later looks up the prefix cache after the ones before it have filled it.
            backlog = sum(len(r.context()) - r.prefilled for r in self._prefilling + admitted)
            if self.prefill_chunk and backlog >= self.prefill_chunk:
                break
            req = self._queue[0]
            context = req.context()
            scoring = req.echo and not req.tokens  # every prompt position is computed
            found = [] if scoring else self.pages.lookup(context)
            need = blocks(len(context), self.stride) - len(found)
            # A resumed request waits until each running one can also take its next page:
            # admitted any sooner, it is the newest and the first to be preempted again.
            growing = len(self._running) + len(self._prefilling) + len(admitted)
            headroom = growing if req.tokens else 0
            if need + headroom > self.pages.free_count:
                self.pages.free(found)
                break
            req.pages = found + self.pages.allocate(need)
            req.prefilled = len(found) * self.stride
            if not req.tokens:  # a first admission, not a resumption
                req.cached_tokens = req.prefilled
            if self.pages.enabled:
                self.metrics.inc("prefix_cache_lookups_total")
                self.metrics.inc("prefix_cache_queried_tokens_total", len(context))
                self.metrics.inc("prefix_cache_hit_tokens_total", req.prefilled)
            admitted.append(self._queue.popleft())
        return admitted

    def _preempt(self, victim: Request) -> None:
        """Give the victim's pages back and requeue it first: it resumes by recomputing."""
        self.pages.free(victim.pages)
        victim.pages, victim.prefilled = [], 0
        (self._prefilling if victim in self._prefilling else self._running).remove(victim)
        victim.set_status(Status.QUEUED)
        with self._cond:
            self._queue.appendleft(victim)
        self.metrics.inc("preemptions_total")
        log.info("preempted %s at %d tokens", victim.id, len(victim.context()))

    def _grow(self) -> None:
        """A page for every running request whose next token starts one, preempting for it."""
        for r in list(self._running):  # admission order: the oldest are served first
            if r not in self._running:
                continue  # preempted for an older request in this pass
            while len(r.pages) < blocks(len(r.context()) + 1, self.stride):
                if self.pages.free_count == 0:
                    # the newest: a request still prefilling, else the last admitted, maybe r
                    self._preempt((self._prefilling or self._running)[-1])
                    if r not in self._running:
                        break
                    continue
                r.pages += self.pages.allocate(1)

    def _finish(self, req: Request, status: Status, reason: str, error: str | None = None) -> None:
        if req.done and not req.pages and req not in self._running + self._prefilling:
            return  # already finished and counted
        if req.pages:
            self.pages.free(req.pages)
            req.pages = []
        if req in self._running:
            self._running.remove(req)
        if req in self._prefilling:
            self._prefilling.remove(req)
        if not req.done:
            req.set_status(status, reason, error)
        self.metrics.inc("requests_finished_total", reason=req.finish_reason or reason)

    def _emit(self, req: Request, scores: Any, ids: Any) -> None:
        try:
            allowed = req.guide.mask(scores) if req.guide is not None else scores
            choice = req.sampler(allowed, ids)
            token = int(ids[choice]) if ids is not None else choice
            if req.logprobs is not None:  # full logits only (submit refuses top-k programs)
                req.token_logprobs.append(token_logprobs(scores, choice, req.logprobs))
            if req.guide is not None:
                req.guide.accept(token)
        except (ValueError, FloatingPointError, IndexError) as e:
            # one request's sampling (NaN logits, say) fails that request, not the batch
            log.warning("request %s: sampling failed: %s", req.id, e)
            self._finish(req, Status.INTERRUPTED, "error", f"sampling failed: {e}")
            return
        first = req.first_token_at is None
        last = req.last_token_at
        req.add_token(token)
        self.metrics.inc("generation_tokens_total")
        now = req.last_token_at or time.perf_counter()  # add_token just set it
        if first or last is None:
            self.metrics.observe("time_to_first_token_seconds", now - req.submitted_at)
        else:
            self.metrics.observe("time_per_output_token_seconds", now - last)
        if req.done:
            self._finish(req, req.status, req.finish_reason or "stop")

    def _chunks(self) -> list[tuple[Request, list[int]]]:
        """This step's prefill work: (request, the context tokens to prefill next), in
        admission order, up to prefill_chunk tokens in all (0: every request's rest)."""
        budget = self.prefill_chunk or None
        work = []
        for r in self._prefilling:
            if r.echo and not r.tokens:
                continue  # scored whole (_score)
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

    def _prefill(self) -> None:
        for r in [r for r in self._prefilling if r.cancelled]:
            self._finish(r, Status.INTERRUPTED, "cancelled")
        for r in [r for r in self._prefilling if r.echo and not r.tokens]:
            self._score(r)
        # similar lengths together: less padding up to the longest chunk of a call
        pending = sorted(self._chunks(), key=lambda w: len(w[1]))
        for bs in split(self.prefill_sizes, len(pending)):
            group, pending = pending[:bs], pending[bs:]
            out = self.session.prefill(
                *prefill_arrays(
                    [chunk for _, chunk in group],
                    [r.pages for r, _ in group],
                    bs,
                    self.stride,
                    [r.prefilled for r, _ in group],
                )
            )
            self.metrics.inc("prefill_calls_total", bs=str(bs))
            for row, (r, chunk) in enumerate(group):
                self.metrics.inc("prompt_tokens_total", len(chunk))
                r.prefilled += len(chunk)
                context = r.context()
                self.pages.register(context[: r.prefilled], r.pages)  # its full pages so far
                if r.prefilled < len(context):
                    continue  # more chunks to come
                self._prefilling.remove(r)
                self._running.append(r)
                if r.tokens:  # resumed after preemption: its next token is already known
                    r.set_status(Status.GENERATING)
                    continue
                r.set_status(Status.PREFILLED)
                self._emit(r, *row_logits(out, row, len(r.prompt) - 1))

    def _score(self, r: Request) -> None:
        """Prefill an echo request's prompt in one score_bs1 call, keeping its logprobs."""
        context = r.context()
        last, chosen, values, ids = self.session.score(
            *prefill_arrays([context], [r.pages], 1, self.stride)
        )
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
        self.metrics.inc("prefill_calls_total", bs="1")
        self.metrics.inc("prompt_tokens_total", len(context))
        r.prefilled = len(context)
        self._prefilling.remove(r)
        self.pages.register(context, r.pages)
        self._running.append(r)
        r.set_status(Status.PREFILLED)
        self._emit(r, *row_logits(last, 0, len(context) - 1))

    def _decode(self) -> None:
        for r in [r for r in self._running if r.cancelled]:
            self._finish(r, Status.INTERRUPTED, "cancelled")
        self._grow()
        pending = list(self._running)
        for bs in split(self.decode_sizes, len(pending)):
            group, pending = pending[:bs], pending[bs:]
            positions = [len(r.prompt) + len(r.tokens) - 1 for r in group]
            arrays = decode_arrays(
                [r.tokens[-1] for r in group], positions, [r.pages for r in group], bs, self.stride
            )
            started = time.perf_counter()
            out = self.session.decode(*arrays)
            log.debug("decode_bs%d %.2f ms", bs, (time.perf_counter() - started) * 1e3)
            self.metrics.inc("decode_calls_total", bs=str(bs))
            for row, r in enumerate(group):
                if r.status is Status.PREFILLED:
                    r.set_status(Status.GENERATING)
                self._emit(r, *row_logits(out, row, 0))


def check_sampling(
    temperature: float, top_k: int, top_p: float, seed: int | None, **penalties: Any
) -> Sampling:
    """A Sampling, or BadRequest naming the bad parameter."""
    try:
        return Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, **penalties)
    except ConfigError as e:
        param = str(e).split(" ", 1)[0]
        raise BadRequest(str(e), param) from e
