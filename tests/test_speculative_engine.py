"""Speculative decoding in the engine, on the fake runner (no compiler): the same tokens as
decoding alone, greedy and seeded sampling, through preemption, limits and stops; the policy
that steps aside; the options.

The fake model here mostly repeats its context (so n-gram proposals are often right) and
sometimes does not (so some are rejected); its next token still depends on every position it
reads back from the cache pages, so a verify step that wrote or read a wrong page, or emitted
a token it should have rejected, changes the output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_scheduler import PROMPTS, STRIDE, VOCAB, FakeRunner, one_hot
from typer.testing import CliRunner

from irforge.engine import Engine
from irforge.engine.speculative import SpeculativeConfig, Speculator
from irforge.errors import ConfigError
from irforge.runtime.sampling import Sampling

K = 3
PERIOD = 5


def repeating(context: list[int]) -> int:
    """The token PERIOD back, except where the context's weighted sum says otherwise."""
    mix = sum((i + 1) * t for i, t in enumerate(context))
    if len(context) >= PERIOD and mix % 7:
        return context[-PERIOD]
    return mix * 31 % VOCAB


def repeating_soft(context: list[int]) -> np.ndarray:
    """A distribution: 60% on `repeating`'s token, the rest spread over 4 others."""
    probs = np.zeros(VOCAB)
    top = repeating(context)
    probs[top] = 0.6
    for i in range(1, 5):
        probs[(top + 11 * i) % VOCAB] += 0.1
    return np.log(np.maximum(probs, 1e-30)).astype(np.float32)


def fake(page_count: int, model) -> FakeRunner:  # noqa: ANN001
    runner = FakeRunner(page_count, decode=(1, 4, 8, 16), max_seq_len=96, speculative_tokens=K)
    runner.model = model
    return runner


def engine(  # noqa: ANN201
    tmp_path: Path,
    speculate: bool,
    *,
    page_count=64,
    model=None,
    draft=None,
    **options,  # noqa: ANN001
) -> Engine:
    """The fake model served; speculating with n-gram lookup, or with `draft` (a model of
    the fake's kind) as the draft model."""
    runner = fake(page_count, model or one_hot(repeating))
    spec = SpeculativeConfig(prompt_lookup_min=1, prompt_lookup_max=3) if speculate else None
    draft_runner = None
    if speculate and draft is not None:
        spec = SpeculativeConfig(model="fake-draft")
        draft_runner = fake(page_count, draft)
    e = Engine(
        tmp_path,
        runner=runner,  # type: ignore[arg-type]
        draft_runner=draft_runner,  # type: ignore[arg-type]
        speculative=spec,
        start=False,
        **options,
    )
    if e.speculator is not None:  # verify whenever there is a proposal: time says nothing here
        e.speculator.timed = lambda kind, bs, seconds: None  # type: ignore[method-assign]
        for bs in (1, 4, 8, 16):
            e.speculator.step_time.update({("decode", bs): 1.0, ("verify", bs): 1.0})
    e.start()
    return e


def _all_free(e: Engine) -> bool:
    return e.pages.free_count == e.pages.page_count - 1


def _run(e: Engine, prompts: list[list[int]], **options: object) -> list[list[int]]:
    with e:
        reqs = [e.submit(p, **options) for p in prompts]  # type: ignore[arg-type]
        out = [r.wait(60).tokens for r in reqs]
        assert _all_free(e)
    return out


def test_greedy_tokens_equal_decoding_alone(tmp_path: Path) -> None:
    """8 concurrent requests of different lengths: the same tokens, fewer steps; proposals
    both kept and rejected; rows of several requests verified together; pages all free."""
    want = _run(engine(tmp_path, False), PROMPTS, max_tokens=30)
    spec = engine(tmp_path, True)
    assert _run(spec, PROMPTS, max_tokens=30) == want
    m = spec.metrics
    drafted, kept = (
        m.counter("spec_decode_draft_tokens_total"),
        m.counter("spec_decode_accepted_tokens_total"),
    )
    assert 0 < kept < drafted
    verifies = [bs for kind, bs, _ in spec.runner.calls if kind == "verify"]
    assert max(verifies) > 1
    steps = sum(1 for kind, *_ in spec.runner.calls if kind in ("decode", "verify"))
    plain = 30 * len(PROMPTS) / 8  # at least this many decode steps without speculation
    assert steps < plain
    rate = spec.gauges()["spec_decode_acceptance_rate"]
    assert rate == pytest.approx(kept / drafted)


def test_limits_stops_and_preemption(tmp_path: Path) -> None:
    """max_tokens cuts an accepted run short; an eos among accepted tokens ends the request
    there; a cache too small for every request preempts and recomputes; all exactly as
    decoding alone, every page back."""
    prompts = PROMPTS[:6]
    for options in (
        {"max_tokens": 7},
        {"max_tokens": 25, "stop_token_ids": [repeating(PROMPTS[2] + [0]) or 1]},
    ):
        want = _run(engine(tmp_path, False), prompts, **options)
        assert _run(engine(tmp_path, True), prompts, **options) == want
    want = _run(
        engine(tmp_path, False, page_count=14, prefix_caching=False), prompts, max_tokens=24
    )
    tight = engine(tmp_path, True, page_count=14, prefix_caching=False)
    assert _run(tight, prompts, max_tokens=24) == want
    assert tight.metrics.counter("preemptions_total") > 0


def test_prefix_cache_and_chunked_prefill(tmp_path: Path) -> None:
    """Prompts sharing 3 pages, prefilled 8 tokens a step, the later ones finding the shared
    pages in the prefix cache (written by prefill, never by a verify's rejected positions)."""
    system = [(5 * i + 3) % VOCAB for i in range(12)]
    prompts = [system + [k, k + 1, k + 2] for k in (1, 30, 60, 90)]

    def run(speculate: bool) -> tuple[list[list[int]], list[int]]:
        e = engine(tmp_path, speculate, prefill_chunk=8)
        with e:
            first = e.submit(prompts[0], max_tokens=20).wait(60).tokens
            rest = [e.submit(p, max_tokens=20) for p in prompts[1:]]
            out = [first] + [r.wait(60).tokens for r in rest]
            assert _all_free(e)
        return out, [r.cached_tokens for r in rest]

    plain, cached = run(False)
    spec, spec_cached = run(True)
    assert spec == plain and spec_cached == cached and min(cached) >= 12


def test_seeded_sampling_is_unchanged_and_follows_the_model(tmp_path: Path) -> None:
    """Sampling at a position and keeping the proposal while they agree is the rejection rule
    for a proposer sure of its token (speculative.py): with the same seed, a request samples
    the same tokens as decoding alone. Over 300 seeds the first two tokens are distributed as
    the model says (within 5 standard errors)."""
    prompt = PROMPTS[3]
    seeds = range(300)

    def sample(speculate: bool) -> list[list[int]]:
        e = engine(tmp_path, speculate, model=repeating_soft, page_count=200, max_queue=1000)
        with e:
            reqs = [
                e.submit(prompt, Sampling(temperature=1.0, seed=s), max_tokens=6) for s in seeds
            ]
            out = [r.wait(60).tokens for r in reqs]
            assert _all_free(e)
            if speculate:
                assert e.metrics.counter("spec_decode_accepted_tokens_total") > 0
        return out

    plain, spec = sample(False), sample(True)
    assert spec == plain
    first = np.exp(repeating_soft(prompt))
    counts = np.bincount([t[0] for t in spec], minlength=VOCAB) / len(seeds)
    top = int(first.argmax())
    se = np.sqrt(first * (1 - first) / len(seeds))
    assert np.all(np.abs(counts - first) <= 5 * se + 1e-9)
    after_top = [t[1] for t in spec if t[0] == top]
    second = np.exp(repeating_soft(prompt + [top]))
    freq = np.bincount(after_top, minlength=VOCAB) / len(after_top)
    se = np.sqrt(second * (1 - second) / len(after_top))
    assert np.all(np.abs(freq - second) <= 5 * se + 1e-9)


def test_the_speculator_steps_aside_where_it_would_cost() -> None:
    spec = Speculator(SpeculativeConfig(), 3, [1, 4], max_positions=64)
    rows = [object(), object()]
    asked: list[object] = []

    def propose() -> list[list[int]]:
        asked.extend(rows)
        return [[1, 2, 3], []]

    def plan(bs: int = 4, running: int = 2, s: Speculator = spec) -> list[list[int]] | None:
        asked.clear()
        return s.plan(rows, bs, running, propose)

    assert plan() is None and not asked  # no decode time measured yet
    spec.timed("decode", 4, 0.010)
    assert plan() == [[1, 2, 3], []]  # verify's time unknown: measure it
    spec.timed("verify", 4, 0.030)
    # expected tokens 1 + 0.5 * 3 + 1 = 3.5 in 30 ms against 2 in 10 ms: decode; and even
    # 3-token proposals for both rows (5 tokens) cannot pay, so nothing is looked up
    assert plan() is None and not asked
    spec.step_time[("verify", 4)] = 0.012
    assert plan() == [[1, 2, 3], []]  # 3.5 tokens in 12 ms beat 2 in 10 ms
    spec.step_time[("verify", 4)] = 0.018  # 5 could pay, the 3.5 proposed cannot
    assert plan() is None and asked == rows
    spec.step_time[("verify", 4)] = 0.012
    assert plan(bs=8) is None and not asked  # no verify_bs8
    limited = Speculator(SpeculativeConfig(disable_by_batch_size=2), 3, [1, 4], 64)
    limited.step_time.update({("decode", 4): 1.0, ("verify", 4): 1.0})
    assert plan(s=limited) and plan(running=3, s=limited) is None
    # rejected proposals lower a request's estimate until verifying stops paying
    for _ in range(6):
        spec.observe(rows[0], 3, 0)
    assert plan() is None
    # and steps not verified bring it back toward the prior: tried again some steps later
    tries = next(i for i in range(200) if plan() is not None)
    assert 5 < tries < 100
    # near the end of the context there is no proposal: verify's positions would not fit
    assert spec.propose([1, 2, 3, 1, 2], 10) == [3, 1, 2]
    assert spec.propose(list(range(61)) + [0], 10) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not JSON"),
        ("[]", "must be a JSON object"),
        ('{"method": "eagle"}', "'eagle' is not supported"),
        ('{"num_speculative_tokens": 0}', "num_speculative_tokens must be an integer of 1"),
        ('{"prompt_lookup_min": 5, "prompt_lookup_max": 2}', "prompt_lookup_min 5 is over"),
        ('{"lookahead": 2}', "unknown fields lookahead"),
    ],
)
def test_bad_speculative_configs_are_refused_in_one_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SpeculativeConfig.parse(text)


def test_speculation_needs_a_program_that_can_verify(tmp_path: Path) -> None:
    runner = FakeRunner(16)  # exported without speculative_tokens
    with pytest.raises(ConfigError, match="no verify entry points"):
        Engine(tmp_path, runner=runner, speculative=SpeculativeConfig(), start=False)  # type: ignore[arg-type]
    runner = FakeRunner(16, speculative_tokens=2)
    with pytest.raises(ConfigError, match="num_speculative_tokens 3 is over the 2"):
        Engine(
            tmp_path,
            runner=runner,  # type: ignore[arg-type]
            speculative=SpeculativeConfig(num_speculative_tokens=3),
            start=False,
        )


def test_the_lookup_defaults_follow_vllm_when_one_is_given() -> None:
    assert SpeculativeConfig().lookup == (4, 2)
    assert SpeculativeConfig(prompt_lookup_max=3).lookup == (3, 3)
    assert SpeculativeConfig(prompt_lookup_min=2).lookup == (2, 2)


def test_serve_refuses_a_bad_speculative_config_in_one_line(tmp_path: Path) -> None:
    from irforge.cli.main import app

    result = CliRunner().invoke(app, ["serve", str(tmp_path), "--speculative-config", "{"])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "not JSON" in result.stderr


assert STRIDE == 4  # the fake's pages; the proposals above cross them


# -- the compiled tiny model: verify_bs{N} against decode_bs{N} ---------------------------------


def _compiled(folder: Path, speculate: bool) -> Engine:
    spec = SpeculativeConfig(prompt_lookup_min=1, prompt_lookup_max=2) if speculate else None
    e = Engine(folder, speculative=spec, start=False)
    if e.speculator is not None:  # verify every proposal, whatever the step times
        e.speculator.timed = lambda kind, bs, seconds: None  # type: ignore[method-assign]
        e.speculator.step_time.update({(k, bs): 1.0 for k in ("decode", "verify") for bs in (1, 4)})
    e.start()
    return e


REPEATS = ["a b c d a b c d a b", "the cat sat on the mat the cat", "1 2 3 1 2 3 1 2 3 1"]


@pytest.mark.iree
def test_the_compiled_program_speculates_to_the_same_outputs(llama_artifacts: Path) -> None:
    """Greedy text with logprobs, stop strings and a regex grammar, and seeded top-k/top-p
    sampling, 6 requests at once (verify_bs4 and _bs1): equal with speculation on and off,
    streams equal to the final text, every page back."""
    from irforge.engine.guided import GuidedSpec

    def run(speculate: bool) -> tuple[list[object], Engine]:
        with _compiled(llama_artifacts, speculate) as e:
            reqs = [e.submit(p, max_tokens=24, ignore_eos=True, logprobs=2) for p in REPEATS]
            reqs.append(e.submit(REPEATS[0], max_tokens=24, ignore_eos=True, stop=["d a"]))
            reqs.append(
                e.submit(REPEATS[1], max_tokens=12, guided=GuidedSpec.of("regex", "(ab|cd)+"))
            )
            sampling = Sampling(temperature=0.8, top_k=20, top_p=0.9, seed=7)
            reqs.append(e.submit(REPEATS[2], sampling, max_tokens=24, ignore_eos=True))
            streamed = "".join(d.text for d in reqs[0].stream(timeout=60))
            out = [(r.wait(60).tokens, r.text, r.finish_reason) for r in reqs]
            assert streamed == reqs[0].text
            logprobs = [r.token_logprobs for r in reqs[:3]]
            assert _all_free(e)
        return [out, logprobs], e

    (plain, plain_lp), _ = run(False)
    (spec, spec_lp), e = run(True)
    assert spec == plain
    for a, b in zip(plain_lp, spec_lp, strict=True):
        assert [[t for t, _ in top] for _, top in a] == [[t for t, _ in top] for _, top in b]
        assert np.allclose([lp for lp, _ in a], [lp for lp, _ in b], atol=1e-4)
    assert e.metrics.counter("verify_calls_total", bs="4") > 0
    assert e.metrics.counter("spec_decode_accepted_tokens_total") > 0


@pytest.mark.iree
def test_the_compiled_program_as_its_own_draft(llama_artifacts: Path) -> None:
    """A draft model on IREE (the tiny program drafting for itself, each with its own cache):
    greedy outputs equal decoding alone's, and nearly every proposal is kept, as the draft
    is the target (the draft's cache stays in step with the target's)."""
    spec = SpeculativeConfig(model=str(llama_artifacts))
    out = []
    for config in (None, spec):
        with Engine(llama_artifacts, speculative=config, start=False) as e:
            if e.speculator is not None:
                e.speculator.timed = lambda kind, bs, seconds: None  # type: ignore[method-assign]
                e.speculator.step_time.update(
                    {(k, bs): 1.0 for k in ("decode", "verify") for bs in (1, 4)}
                )
            e.start()
            reqs = [e.submit(p, max_tokens=20, ignore_eos=True) for p in REPEATS * 2]
            out.append([r.wait(60).tokens for r in reqs])
            assert _all_free(e)
            m = e.metrics
    assert out[1] == out[0]
    drafted = m.counter("spec_decode_draft_tokens_total")
    assert drafted > 0 and m.counter("spec_decode_accepted_tokens_total") >= 0.9 * drafted


@pytest.mark.iree
def test_served_with_speculation_answers_as_without(llama_artifacts: Path) -> None:
    """`irforge serve --speculative-config`: n = 2 seeded choices, a greedy stream and a
    guided choice over HTTP equal the plain server's; /metrics has the speculation series."""
    import openai
    from test_serve import metrics, serving, wait_all_pages_free

    def answers(*args: str) -> tuple[list[object], dict[str, float]]:
        with serving(llama_artifacts, "--model-name", "tiny", *args) as (url, _):
            c = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
            text = REPEATS[0]
            n2 = c.completions.create(
                model="tiny", prompt=text, max_tokens=16, temperature=0.9, seed=3, n=2
            )
            chunks = c.completions.create(
                model="tiny", prompt=REPEATS[1], max_tokens=16, temperature=0, stream=True
            )
            streamed = "".join(ch.choices[0].text for ch in chunks)
            chosen = c.completions.create(
                model="tiny",
                prompt=text,
                max_tokens=8,
                temperature=0,
                extra_body={"guided_choice": ["a b c", "d e f"]},
            )
            wait_all_pages_free(url)
            out = [[ch.text for ch in n2.choices], streamed, chosen.choices[0].text]
            return out, metrics(url)

    plain, _ = answers()
    spec, m = answers("--speculative-config", '{"method": "ngram", "prompt_lookup_min": 1}')
    assert spec == plain
    assert "irforge_spec_decode_acceptance_rate" in m
    assert "irforge_spec_decode_draft_tokens_total" in m


# -- a draft model ------------------------------------------------------------------------------


def periodic(context: list[int]) -> int:
    """`repeating` without its exceptions: a draft right most of the time."""
    return context[-PERIOD] if len(context) >= PERIOD else 3


@pytest.mark.parametrize("draft", ["periodic", "the target itself"])
def test_a_draft_model_gives_the_same_tokens(tmp_path: Path, draft: str) -> None:
    """A draft model's proposals, verified: decoding alone's tokens for 8 concurrent requests
    of different lengths, with a cache small enough to preempt, prefix sharing and chunked
    prefill; the target as its own draft has every proposal kept, which holds only if the
    draft's cache stays in step with each sequence (the fake reads every position back)."""
    model = one_hot(periodic if draft == "periodic" else repeating)
    system = [(5 * i + 3) % VOCAB for i in range(12)]
    prompts = PROMPTS + [system + [k] for k in (1, 30, 60)]
    options = {"page_count": 20, "prefill_chunk": 8}
    want = _run(engine(tmp_path, False, **options), prompts, max_tokens=24)
    spec = engine(tmp_path, True, draft=model, **options)
    assert _run(spec, prompts, max_tokens=24) == want
    m = spec.metrics
    drafted = m.counter("spec_decode_draft_tokens_total")
    kept = m.counter("spec_decode_accepted_tokens_total")
    assert m.counter("preemptions_total") > 0 and drafted > 0
    if draft == "periodic":
        assert 0 < kept < drafted
    else:
        assert kept == drafted


def test_a_draft_model_keeps_seeded_sampling(tmp_path: Path) -> None:
    prompt = PROMPTS[3]

    def sample(speculate: bool) -> list[list[int]]:
        e = engine(
            tmp_path,
            speculate,
            model=repeating_soft,
            draft=one_hot(periodic),
            page_count=200,
            max_queue=1000,
        )
        with e:
            reqs = [
                e.submit(prompt, Sampling(temperature=1.0, seed=s), max_tokens=6)
                for s in range(100)
            ]
            return [r.wait(60).tokens for r in reqs]

    assert sample(True) == sample(False)


def test_a_draft_must_match_the_target(tmp_path: Path) -> None:
    def make(draft: FakeRunner) -> None:
        Engine(
            tmp_path,
            runner=fake(16, one_hot(repeating)),  # type: ignore[arg-type]
            draft_runner=draft,  # type: ignore[arg-type]
            speculative=SpeculativeConfig(model="x"),
            start=False,
        )

    other = fake(16, one_hot(repeating))
    other.config = type(other.config)(vocab_size=VOCAB + 1, eos_token_ids=())
    with pytest.raises(ConfigError, match="vocabulary has 98 tokens, the target's 97"):
        make(other)
    with pytest.raises(ConfigError, match="needs verify entry points"):
        make(FakeRunner(16, decode=(1, 4, 8, 16), max_seq_len=96))
    with pytest.raises(ConfigError, match="draft model serves 64 positions, the target 96"):
        make(FakeRunner(16, decode=(1, 4, 8, 16), speculative_tokens=K))
    with pytest.raises(ConfigError, match="needs a model"):
        SpeculativeConfig(method="draft_model")
