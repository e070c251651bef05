"""Penalties and logit bias (issue 15, sampling), against transformers' logits processor and
OpenAI's published formula, and through the engine on the tiny compiled model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from irforge.errors import ConfigError
from irforge.runtime.sampling import Sampler, Sampling

rng = np.random.default_rng(3)
LOGITS = rng.normal(0, 3, 288).astype(np.float32)
PROMPT = [5, 17, 3, 99, 42]
GENERATED = [7, 7, 250, 5, 7]


@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_repetition_penalty_equals_transformers(penalty: float) -> None:
    sampler = Sampler(Sampling(repetition_penalty=penalty), PROMPT)
    for t in GENERATED:
        sampler.observe(t)
    ours = sampler.adjust(LOGITS)
    ids = torch.tensor([PROMPT + GENERATED])
    theirs = RepetitionPenaltyLogitsProcessor(penalty)(ids, torch.tensor(LOGITS)[None].clone())
    np.testing.assert_allclose(ours, theirs[0].numpy(), rtol=1e-6)


def test_presence_and_frequency_follow_openais_formula() -> None:
    """mu[j] - c[j] * frequency - (c[j] > 0) * presence, c counting generated tokens only."""
    sampler = Sampler(Sampling(presence_penalty=0.5, frequency_penalty=0.25), PROMPT)
    for t in GENERATED:
        sampler.observe(t)
    counts = np.bincount(GENERATED, minlength=LOGITS.size)
    want = LOGITS - counts * 0.25 - (counts > 0) * 0.5
    np.testing.assert_allclose(sampler.adjust(LOGITS), want, rtol=1e-6)
    assert sampler.adjust(LOGITS)[17] == pytest.approx(LOGITS[17])  # a prompt token: untouched


def test_penalties_follow_token_ids_of_a_top_k_program() -> None:
    """A program exported with top_k gives k values and their ids: penalties find them."""
    ids = np.array([7, 3, 250])
    sampler = Sampler(Sampling(frequency_penalty=1.0, logit_bias=((3, -5.0),)))
    sampler.observe(7)
    got = sampler.adjust(np.array([2.0, 1.0, 0.5]), ids)
    np.testing.assert_allclose(got, [1.0, -4.0, 0.5])


def test_logit_bias_decides_greedy_and_bad_values_are_refused() -> None:
    loser = int(np.argmin(LOGITS))
    assert Sampler(Sampling(logit_bias=((loser, 100.0),)))(LOGITS) == loser
    for bad in (
        dict(presence_penalty=3.0),
        dict(frequency_penalty=float("nan")),
        dict(repetition_penalty=0.0),
        dict(logit_bias=((1, 101.0),)),
    ):
        with pytest.raises(ConfigError):
            Sampling(**bad)  # type: ignore[arg-type]


@pytest.mark.iree
def test_a_repetition_penalty_stops_the_tiny_model_repeating(llama_artifacts: Path) -> None:
    """Through the engine: the greedy loop of the tiny model repeats tokens; a strong
    repetition penalty, applied to the same logits, makes each generated token new."""
    from irforge.engine import Engine

    with Engine(llama_artifacts) as engine:
        plain = engine.submit(PROMPT, max_tokens=24, ignore_eos=True).wait(60).tokens
        strict = Sampling(repetition_penalty=10.0)
        fresh = engine.submit(PROMPT, strict, max_tokens=24, ignore_eos=True).wait(60).tokens
    assert len(set(plain)) < len(plain)  # the loop the penalty is for
    assert len(set(fresh)) == len(fresh) and not set(fresh) & set(PROMPT)


@pytest.mark.iree
def test_stop_token_ids_and_min_tokens(llama_artifacts: Path) -> None:
    """vLLM's stop_token_ids end a request at that token; min_tokens keeps them (and eos)
    from being chosen until that many tokens are out."""
    from irforge.engine import BadRequest, Engine

    with Engine(llama_artifacts) as engine:
        plain = engine.submit(PROMPT, max_tokens=12, ignore_eos=True).wait(60).tokens
        third = plain[2]
        first_at = plain.index(third)  # where greedy first produces that token
        cut = engine.submit(PROMPT, max_tokens=12, ignore_eos=True, stop_token_ids=[third])
        assert cut.wait(60).tokens == plain[: first_at + 1] and cut.finish_reason == "stop"
        held = engine.submit(
            PROMPT, max_tokens=12, ignore_eos=True, stop_token_ids=[third], min_tokens=6
        ).wait(60)
        assert len(held.tokens) > 6 and third not in held.tokens[:6]
        with pytest.raises(BadRequest, match="min_tokens"):
            engine.submit(PROMPT, max_tokens=4, min_tokens=5)
        with pytest.raises(BadRequest, match="stop token id"):
            engine.submit(PROMPT, max_tokens=4, stop_token_ids=[10**6])
