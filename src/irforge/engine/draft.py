"""A draft model's proposals for speculative decoding: a smaller model with the same
vocabulary guesses the next k tokens, greedily, and the target verifies them.

The draft runs on its own runner (a compiled folder's Session) with its own cache slab of as
many pages as the target's, addressed by the target's page ids, so a request's pages are the
same numbers in both caches and the scheduler allocates once. The draft's cache is filled the
way the target's is: every prefill call is run on the draft too (the same arrays), so pages
the prefix cache shares hold the draft's keys and values as well as the target's.

Decode steps and verify steps are not mirrored. Each request's `synced` count says how many
leading positions of its sequence the draft's cache holds; proposing first writes the rest
(at least the last token) with the draft's verify calls, k + 1 positions at a time from any
position, whose last position gives the first proposed token; then k - 1 draft decode steps
give the others. After the target's verify, the draft's cache is right up to the tokens the
target kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from irforge.engine.runner import Runner
from irforge.errors import ConfigError
from irforge.runtime.batching import blocks, decode_arrays, row_logits, split, verify_arrays
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

    def prefill(self, arrays: Sequence[np.ndarray]) -> None:
        """Run a target's prefill call on the draft as well (its output is not needed)."""
        self.runner.prefill(*arrays)

    def prefilled(self, req: Any, length: int) -> None:
        """`req`'s first `length` positions are now in the draft's cache (a whole context
        prefilled)."""
        self._synced[id(req)] = length

    def forget(self, req: Any) -> None:
        self._synced.pop(id(req), None)

    def propose(self, rows: Sequence[Any], bs: int, k: int) -> list[list[int]]:
        """k greedy draft tokens after each row's sequence (prompt + tokens); the draft's
        cache then holds each sequence and the first k - 1 of its proposal."""
        seqs = [r.prompt + r.tokens for r in rows]
        pending = [seq[self._synced.get(id(r), 0) :] for r, seq in zip(rows, seqs, strict=True)]
        starts = [len(s) - len(p) for s, p in zip(seqs, pending, strict=True)]
        # catch up rows far behind, a whole verify call's width at a time
        while any(len(p) > self.width for p in pending):
            lag = [i for i, p in enumerate(pending) if len(p) > self.width]
            for call in _calls(lag, self.runner.options.verify_batch_sizes):
                self._verify(
                    [pending[i][: self.width] for i in call],
                    [starts[i] for i in call],
                    [rows[i].pages for i in call],
                )
            for i in lag:
                pending[i] = pending[i][self.width :]
                starts[i] += self.width
        out = self._verify(pending, starts, [r.pages for r in rows], bs)
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

    def _verify(
        self,
        chunks: Sequence[Sequence[int]],
        starts: Sequence[int],
        pages: Sequence[Sequence[int]],
        bs: int | None = None,
    ) -> Any:
        size = bs or split(self.runner.options.verify_batch_sizes, len(chunks))[0]
        return self.runner.verify(
            *verify_arrays(chunks, starts, pages, size, self.width, self.stride)
        )


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
