"""generate(): prefill a batch of prompts, then decode one token per step through the pages."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from irforge.errors import ConfigError
from irforge.runtime.batching import blocks, decode_arrays, prefill_arrays, row_logits
from irforge.runtime.sampling import Sampler, Sampling
from irforge.runtime.session import Session


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


def _check(session: Session, prompts: list[list[int]], max_tokens: int) -> None:
    if max_tokens < 1:
        raise ConfigError(f"max tokens must be at least 1, got {max_tokens}")
    limit, vocab = session.options.max_seq_len, session.config.vocab_size
    for i, p in enumerate(prompts):
        if not p:
            raise ConfigError(f"prompt {i} is empty")
        bad = next((t for t in p if not 0 <= t < vocab), None)
        if bad is not None:
            raise ConfigError(
                f"prompt {i}: token id {bad} is outside the vocabulary (0..{vocab - 1})"
            )
        if len(p) + max_tokens > limit:
            raise ConfigError(
                f"prompt {i} has {len(p)} tokens; with {max_tokens} new tokens it exceeds "
                f"the program's max_seq_len {limit}"
            )


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
    """Generate up to `max_tokens` tokens for each prompt (token ids), as one static batch.

    Each prompt holds the pages of prompt + max_tokens from the start; finished prompts
    leave the batch. (`irforge serve`'s Engine batches continuously instead.)

    Raises:
        ConfigError: no exported batch size fits, a prompt is too long, or pages run out.
    """
    _check(session, prompts, max_tokens)
    stride = session.options.block_seq_stride
    bs_prefill = _batch_size(session.options.prefill_batch_sizes, len(prompts), "prefill")
    bs_decode = _batch_size(session.options.decode_batch_sizes, len(prompts), "decode")
    sampler = Sampler(sampling or Sampling())
    pages = [session.pages.allocate(blocks(len(p) + max_tokens, stride)) for p in prompts]
    result = GenerationResult(tokens=[[] for _ in prompts])
    kept: list[list[np.ndarray]] = [[] for _ in prompts]
    live = list(range(len(prompts)))

    def take(out: object, rows: list[int], positions: list[int]) -> None:
        for row, i, pos in zip(rows, list(live), positions, strict=True):
            scores, ids = row_logits(out, row, pos)
            if keep_logits:
                if ids is not None:
                    raise ConfigError("the program was exported with --top-k: no full logits")
                kept[i].append(scores)
            choice = sampler(scores)
            token = int(ids[choice]) if ids is not None else choice
            result.tokens[i].append(token)
            if on_token:
                on_token(i, token)
            if token in eos_ids:
                live.remove(i)

    try:
        started = time.perf_counter()
        out = session.prefill(*prefill_arrays(prompts, pages, bs_prefill, stride))
        take(out, list(range(len(prompts))), [len(p) - 1 for p in prompts])
        result.prefill_s = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(max_tokens - 1):
            if not live:
                break
            positions = [len(prompts[i]) + len(result.tokens[i]) - 1 for i in live]
            last = [result.tokens[i][-1] for i in live]
            arrays = decode_arrays(last, positions, [pages[i] for i in live], bs_decode, stride)
            take(session.decode(*arrays), list(range(len(live))), [0] * len(live))
            result.decode_steps += 1
        result.decode_s = time.perf_counter() - started
    finally:
        for p in pages:
            session.pages.free(p)
    if keep_logits:
        result.logits = [np.stack(x) for x in kept]
    return result
