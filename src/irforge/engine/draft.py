"""A draft model's proposals for speculative decoding: a smaller model with the same
vocabulary guesses the next k tokens, greedily, and the target verifies them.

The draft runs on its own runner (a compiled folder's Session) with its own cache slab of as
many pages as the target's, addressed by the target's page ids, so a request's pages are the
same numbers in both caches and the scheduler allocates once.

The draft computes only when asked for a proposal, so a draft that does not pay (the engine
then stops asking, speculative.py) costs nothing. Each request's `synced` count says how
many leading positions of its sequence the draft's cache holds, since its context was last
prefilled by the target (pages may be new then: a resumed request's); proposing first writes
the rest: a row far behind by a prefill from the page it is in, and every row's last tokens
by a draft verify call (k + 1 positions from any position), whose last position gives the
first proposed token; then k - 1 draft decode steps give the others. After the target's
verify, the draft's cache is right up to the tokens the target kept.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from irforge.engine.runner import Runner
from irforge.errors import ConfigError
from irforge.runtime.batching import (
    blocks,
    decode_arrays,
    prefill_arrays,
    row_logits,
    split,
    verify_arrays,
)
from irforge.runtime.pages import SCRATCH_PAGE


class DraftProposer:
    """Greedy proposals of a draft runner for rows of requests.

    Args:
        runner: the draft's runner (decode and verify entry points; prefill mirrors the
            target's).
        vocab_size, stride: the target's, which the draft must share.
        sizes: the target's verify batch sizes (the draft needs them too).
    """

    def __init__(self, runner: Runner, vocab_size: int, stride: int, sizes: Sequence[int]):
        o = runner.options
        if runner.config.vocab_size != vocab_size:
            raise ConfigError(
                f"the draft model's vocabulary has {runner.config.vocab_size} tokens, the "
                f"target's {vocab_size}: a draft must share the target's tokenizer"
            )
        if o.block_seq_stride != stride:
            raise ConfigError(
                f"the draft model pages {o.block_seq_stride} positions, the target {stride}; "
                "export it with the target's --block-seq-stride"
            )
        missing = sorted(set(sizes) - set(o.verify_batch_sizes))
        if missing or not runner.prefill_position:
            raise ConfigError(
                "the draft model needs verify entry points at the target's batch sizes "
                f"{list(sizes)} (it has {list(o.verify_batch_sizes)}); build it with "
                "`irforge build` and the target's --bs-decode"
            )
        self.runner, self.stride = runner, stride
        self.width = o.speculative_tokens + 1  # tokens a draft verify call writes per row
        self._synced: dict[int, int] = {}  # by id() of a request
        self.catch_up_seconds = 0.0  # of the last proposal's catching up

    def forget(self, req: Any) -> None:
        """Nothing of `req` is in the draft's cache: it is done, or its context was just
        prefilled into pages that may be new (a resumed request's)."""
        self._synced.pop(id(req), None)

    def propose(self, rows: Sequence[Any], bs: int, k: int) -> list[list[int]]:
        """k greedy draft tokens after each row's sequence (prompt + tokens); the draft's
        cache then holds each sequence and the first k - 1 of its proposal."""
        seqs = [r.prompt + r.tokens for r in rows]
        synced = [self._synced.get(id(r), 0) for r in rows]
        # rows further behind than one verify call catch up by prefilling, from the page
        # their first unsynced position is in, up to their last token (a prefill starts on a
        # page boundary; the positions it writes again get the same keys and values)
        lag = [i for i, seq in enumerate(seqs) if len(seq) - synced[i] > self.width]
        started = time.perf_counter()
        for call in _calls(lag, self.runner.options.prefill_batch_sizes):
            starts = [synced[i] // self.stride * self.stride for i in call]
            chunks = [seqs[i][start:-1] for i, start in zip(call, starts, strict=True)]
            size = split(self.runner.options.prefill_batch_sizes, len(call))[0]
            pages = [rows[i].pages for i in call]
            self.runner.prefill(*prefill_arrays(chunks, pages, size, self.stride, starts))
            for i in call:
                synced[i] = len(seqs[i]) - 1
        # a prompt's catch-up is paid once per request, as its prefill is: not a step's cost
        self.catch_up_seconds = time.perf_counter() - started
        pending = [seq[n:] for seq, n in zip(seqs, synced, strict=True)]
        starts = [len(s) - len(p) for s, p in zip(seqs, pending, strict=True)]
        out = self.runner.verify(
            *verify_arrays(pending, starts, [r.pages for r in rows], bs, self.width, self.stride)
        )
        tokens = [[_argmax(out, row, len(p) - 1)] for row, p in enumerate(pending)]
        # the proposal's positions past a row's pages are written to the scratch page: the
        # target keeps no more of a proposal than its pages hold
        pages = [
            list(r.pages)
            + [SCRATCH_PAGE] * max(0, blocks(len(seq) + k, self.stride) - len(r.pages))
            for r, seq in zip(rows, seqs, strict=True)
        ]
        for step in range(1, k):
            out = self.runner.decode(
                *decode_arrays(
                    [t[-1] for t in tokens],
                    [len(seq) + step - 1 for seq in seqs],
                    pages,
                    bs,
                    self.stride,
                )
            )
            for row, t in enumerate(tokens):
                t.append(_argmax(out, row, 0))
        for r, seq in zip(rows, seqs, strict=True):
            self._synced[id(r)] = len(seq)
        return tokens

    def kept(self, req: Any, length: int, kept: int, proposed: int) -> None:
        """The target kept `kept` of the `proposed` tokens after `req`'s first `length`: the
        draft's cache is right through the kept ones it wrote (it wrote all but the last)."""
        self._synced[id(req)] = length + min(kept, max(proposed - 1, 0))


def _calls(rows: list[int], sizes: Sequence[int]) -> list[list[int]]:
    """`rows` in groups of the batch sizes that serve them."""
    groups = []
    for size in split(sizes, len(rows)):
        groups.append(rows[:size])
        rows = rows[size:]
    return groups


def _argmax(out: Any, row: int, position: int) -> int:
    scores, ids = row_logits(out, row, position)
    best = int(np.argmax(scores))
    return int(ids[best]) if ids is not None else best
