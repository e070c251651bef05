"""generate(): prefill a batch of prompts, then decode one token per step through the pages."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from .pages import SCRATCH_PAGE
from .sampling import Sampler, Sampling
from .session import Session


@dataclass
class GenerationResult:
    tokens: list[list[int]]  # generated ids per prompt (the prompt excluded)
    logits: list[np.ndarray] = field(default_factory=list)  # per prompt [steps, vocab]
    prefill_s: float = 0.0
    decode_s: float = 0.0
    decode_steps: int = 0

    @property
    def decode_tokens_per_s(self) -> float:
        generated = sum(max(0, len(t) - 1) for t in self.tokens)
        return generated / self.decode_s if self.decode_s else 0.0


def _batch_size(sizes: Sequence[int], n: int, what: str) -> int:
    fitting = [b for b in sizes if b >= n]
    if not fitting:
        raise ConfigError(
            f"{n} prompts need a {what} batch size of at least {n}; the program has "
            f"{list(sizes)} (re-export with --bs-{what} including {n})"
        )
    return min(fitting)


def _blocks(length: int, stride: int) -> int:
    return max(1, -(-length // stride))


class _Batch:
    """Row i of every call is prompt i; rows past the prompts are padding on the scratch page."""

    def __init__(self, session: Session, prompts: list[list[int]], max_tokens: int) -> None:
        self.session, self.stride = session, session.options.block_seq_stride
        limit = session.options.max_seq_len
        for i, p in enumerate(prompts):
            if not p:
                raise ConfigError(f"prompt {i} is empty")
            if len(p) + max_tokens > limit:
                raise ConfigError(
                    f"prompt {i} has {len(p)} tokens; with {max_tokens} new tokens it exceeds "
                    f"the program's max_seq_len {limit}"
                )
        self.pages = [
            session.pages.allocate(_blocks(len(p) + max_tokens, self.stride)) for p in prompts
        ]

    def block_ids(self, rows: int, lengths: Sequence[int], live: Sequence[bool]) -> np.ndarray:
        width = max(_blocks(n, self.stride) for n in lengths)
        ids = np.full((rows, width), SCRATCH_PAGE, dtype=np.int64)
        for i, (n, pages) in enumerate(zip(lengths, self.pages, strict=False)):
            if live[i]:
                used = _blocks(n, self.stride)
                ids[i, :used] = pages[:used]
        return ids

    def release(self) -> None:
        for pages in self.pages:
            self.session.pages.free(pages)


def _pick(out: object, rows: list[int], positions: list[int]) -> tuple[np.ndarray | None, list]:
    """(logits [rows, vocab] or None, token ids if the program chose them) at positions."""
    if isinstance(out, tuple):  # exported with top_k: (values, indices) [N, S, k]
        return None, [int(out[1][r, p, 0]) for r, p in zip(rows, positions, strict=True)]
    logits = np.asarray(out)
    return logits[rows, positions].astype(np.float32), []


def generate(
    session: Session,
    prompts: list[list[int]],
    *,
    max_tokens: int,
    sampling: Sampling | None = None,
    eos_ids: Sequence[int] = (),
    keep_logits: bool = False,
    on_token: Callable[[int, int], None] | None = None,
) -> GenerationResult:
    """Generate up to `max_tokens` tokens for each prompt (token ids), batched.

    Raises:
        ConfigError: no exported batch size fits, a prompt is too long, or pages run out.
    """
    if max_tokens < 1:
        raise ConfigError(f"max tokens must be at least 1, got {max_tokens}")
    sampler = Sampler(sampling or Sampling())
    n = len(prompts)
    bs_prefill = _batch_size(session.options.prefill_batch_sizes, n, "prefill")
    bs_decode = _batch_size(session.options.decode_batch_sizes, n, "decode")
    batch = _Batch(session, prompts, max_tokens)
    result = GenerationResult(tokens=[[] for _ in prompts], logits=[[] for _ in prompts])  # type: ignore[misc]
    try:
        lengths = [len(p) for p in prompts]
        live = [True] * n
        started = time.perf_counter()
        out = _prefill(session, batch, prompts, bs_prefill)
        _take(
            result,
            sampler,
            out,
            list(range(n)),
            [x - 1 for x in lengths],
            live,
            eos_ids,
            keep_logits,
            on_token,
        )
        result.prefill_s = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(max_tokens - 1):
            if not any(live):
                break
            out = _decode(session, batch, result, lengths, live, bs_decode)
            lengths = [x + 1 if ok else x for x, ok in zip(lengths, live, strict=True)]
            rows = [i for i in range(n) if live[i]]
            _take(result, sampler, out, rows, [0] * len(rows), live, eos_ids, keep_logits, on_token)
            result.decode_steps += 1
        result.decode_s = time.perf_counter() - started
    finally:
        batch.release()
    if keep_logits:
        result.logits = [np.stack(x) if len(x) else np.zeros((0,)) for x in result.logits]
    return result


def _prefill(session: Session, batch: _Batch, prompts: list[list[int]], bs: int) -> object:
    lengths = [len(p) for p in prompts] + [1] * (bs - len(prompts))
    live = [True] * len(prompts) + [False] * (bs - len(prompts))
    block_ids = batch.block_ids(bs, lengths, live)
    tokens = np.zeros((bs, block_ids.shape[1] * batch.stride), dtype=np.int64)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = p
    return session.prefill(tokens, np.array(lengths, dtype=np.int64), block_ids)


def _decode(
    session: Session,
    batch: _Batch,
    result: GenerationResult,
    lengths: list[int],
    live: list[bool],
    bs: int,
) -> object:
    n = len(lengths)
    # the new token goes at position `length`; padding and finished rows sit on scratch
    starts = [lengths[i] if live[i] else 0 for i in range(n)] + [0] * (bs - n)
    seq_lens = [s + 1 for s in starts]
    rows_live = list(live) + [False] * (bs - n)
    block_ids = batch.block_ids(bs, seq_lens, rows_live)
    tokens = np.zeros((bs, 1), dtype=np.int64)
    for i in range(n):
        if live[i]:
            tokens[i, 0] = result.tokens[i][-1]
    return session.decode(tokens, np.array(seq_lens), np.array(starts), block_ids)


def _take(
    result: GenerationResult,
    sampler: Sampler,
    out: object,
    rows: list[int],
    positions: list[int],
    live: list[bool],
    eos_ids: Sequence[int],
    keep_logits: bool,
    on_token: Callable[[int, int], None] | None,
) -> None:
    logits, chosen = _pick(out, rows, positions)
    if keep_logits and logits is None:
        raise ConfigError("the program was exported with --top-k: full logits are not available")
    for j, row in enumerate(rows):
        token = chosen[j] if chosen else sampler(logits[j])  # type: ignore[index]
        result.tokens[row].append(token)
        if keep_logits:
            result.logits[row].append(logits[j])  # type: ignore[index,union-attr]
        if on_token:
            on_token(row, token)
        if token in eos_ids:
            live[row] = False
