"""Speculative decoding's host side (engine/speculative.py): n-gram proposals against the
values vLLM's own tests give for its `ngram` method, greedy acceptance, and the rejection
rule's output distribution against the target's."""

from __future__ import annotations

import numpy as np
import pytest

from irforge.engine.speculative import accept_greedy, accept_sampled, ngram_proposal

# (tokens, k, min_n, max_n, proposal): cases and results from vLLM's tests of its ngram
# proposer (tests/v1/spec_decode/test_ngram.py)
VLLM_CASES = [
    ([1, 2, 3, 4, 1, 2, 3, 5, 6], 2, 2, 2, []),
    ([1, 2, 3, 4, 1, 2, 3], 3, 2, 2, [4, 1, 2]),
    ([1, 2, 3, 4, 1, 2, 3], 2, 2, 2, [4, 1]),
    ([1, 2, 3, 4, 1, 2, 3], 3, 1, 1, [4, 1, 2]),
    ([1, 3, 6, 2, 3, 4, 1, 2, 3], 3, 2, 2, [4, 1, 2]),
    ([1, 3, 6, 2, 3, 4, 1, 2, 3], 2, 1, 1, [6, 2]),  # the first match
    ([1, 2, 3, 4, 5], 2, 2, 2, []),
    ([1, 2, 3, 4, 1, 2, 3], 2, 4, 4, []),
    ([1, 2, 3, 4, 1, 2, 3], 2, 3, 4, [4, 1]),
    ([2, 3, 4, 5, 1, 2, 3, 4, 1, 2, 3, 4], 2, 3, 4, [1, 2]),  # the longer n-gram wins
    ([3, 4, 5, 2, 3, 4, 1, 2, 3, 4], 2, 2, 4, [1, 2]),
    ([1, 2, 3, 100, 1, 2, 3, 200, 1, 2, 3, 300, 1, 2, 3], 2, 3, 3, [100, 1]),
    ([1, 2, 3, 4, 2, 3], 4, 2, 3, [4, 2, 3]),  # fewer than k follow (its docstring's example)
]


@pytest.mark.parametrize(("tokens", "k", "min_n", "max_n", "want"), VLLM_CASES)
def test_ngram_proposals_as_vllm_makes_them(
    tokens: list[int], k: int, min_n: int, max_n: int, want: list[int]
) -> None:
    assert ngram_proposal(tokens, k, min_n, max_n) == want


def test_greedy_acceptance_keeps_what_decoding_alone_gives() -> None:
    assert accept_greedy([5, 6, 7], [5, 6, 7, 8]) == [5, 6, 7, 8]  # all kept, one more
    assert accept_greedy([5, 6, 7], [5, 9, 7, 8]) == [5, 9]  # the target's choice replaces
    assert accept_greedy([5, 6, 7], [4, 6, 7, 8]) == [4]
    assert accept_greedy([], [3]) == [3]
    with pytest.raises(ValueError):
        accept_greedy([1, 2], [1, 2])


def test_sampled_acceptance_keeps_the_targets_distribution() -> None:
    """Over many draws, each position's token frequencies match the target's distribution
    (given the positions before it), whatever the proposal: within 5 standard errors."""
    p = np.array([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
    rng = np.random.default_rng(0)
    draws = 40_000
    for proposal in ([1, 3], [3, 0], [0, 3]):
        outs = [accept_sampled(proposal, p, rng) for _ in range(draws)]
        first = np.bincount([o[0] for o in outs], minlength=4) / draws
        assert np.all(np.abs(first - p[0]) < 5 * np.sqrt(p[0] * (1 - p[0]) / draws)), first
        # the second token, where the first kept the proposal (else the step ended)
        kept = [o for o in outs if o[0] == proposal[0]]
        assert all(len(o) >= 2 for o in kept)
        second = np.bincount([o[1] for o in kept], minlength=4) / len(kept)
        bound = 5 * np.sqrt(p[1] * (1 - p[1]) / len(kept))
        assert np.all(np.abs(second - p[1]) < bound), second
        assert all(len(o) == 1 for o in outs if o[0] != proposal[0])
