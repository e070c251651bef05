"""Speculative decoding's host side: n-gram proposals and the acceptance rules (issue 39).

Pure functions over token ids and probabilities; the verify step that scores a row's last
token and its proposal in one call is the program's (not exported yet: see bench/RESULTS.md).

- `ngram_proposal`: prompt lookup as vLLM's `ngram` method does it: the longest suffix of the
  sequence, `prompt_lookup_min` to `prompt_lookup_max` tokens long, that occurred earlier;
  of equally long ones the earliest; the (at most k) tokens that followed it are proposed.
- `accept_greedy`: the proposal's tokens are kept while they equal the target's greedy
  choices, and the target's next choice is added, so the output is exactly what decoding
  alone would give.
- `accept_sampled`: the standard rejection rule (Leviathan et al. 2023; Chen et al. 2023) for
  a proposer that puts all its probability on one token: a proposed token t is kept with
  probability p(t); at the first rejection the replacement is drawn from p without t,
  renormalized; if all are kept, one more token is drawn from the last position's p. The
  output's distribution is p's, position by position.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ngram_proposal(tokens: Sequence[int], k: int, min_n: int, max_n: int) -> list[int]:
    """Up to `k` tokens that followed the longest earlier occurrence of the sequence's end."""
    total = len(tokens)
    if k < 1 or total < min_n + 1:
        return []
    seq = np.asarray(tokens)
    for n in range(min(max_n, total - 1), min_n - 1, -1):
        suffix = seq[total - n :]
        # occurrences that end before the last token, so at least one token follows them
        windows = np.lib.stride_tricks.sliding_window_view(seq[: total - 1], n)
        hits = np.flatnonzero((windows == suffix).all(axis=1))
        if hits.size:
            start = int(hits[0]) + n
            return [int(t) for t in seq[start : start + k]]
    return []


def accept_greedy(proposal: Sequence[int], choices: Sequence[int]) -> list[int]:
    """The tokens a verify step yields: `choices[i]` is the target's greedy token after the
    row's last token and proposal[:i] (len(proposal) + 1 of them)."""
    if len(choices) != len(proposal) + 1:
        raise ValueError(f"{len(proposal)} proposed tokens need {len(proposal) + 1} choices")
    out = []
    for proposed, chosen in zip(proposal, choices, strict=False):
        out.append(int(chosen))
        if proposed != chosen:
            return out
    out.append(int(choices[-1]))
    return out


def accept_sampled(
    proposal: Sequence[int], probs: np.ndarray, rng: np.random.Generator
) -> list[int]:
    """The tokens a verify step yields under sampling: `probs[i]` is the target's
    distribution after the row's last token and proposal[:i] ([len(proposal) + 1, vocab])."""
    if probs.shape[0] != len(proposal) + 1:
        raise ValueError(f"{len(proposal)} proposed tokens need {len(proposal) + 1} rows")
    out = []
    for i, token in enumerate(proposal):
        p = probs[i]
        if rng.random() < p[token]:
            out.append(int(token))
            continue
        rest = p.copy()  # (p(t) < 1 here: a rejected token leaves mass elsewhere)
        rest[token] = 0.0
        out.append(int(rng.choice(len(rest), p=rest / rest.sum())))
        return out
    last = probs[len(proposal)]
    out.append(int(rng.choice(len(last), p=last / last.sum())))
    return out
