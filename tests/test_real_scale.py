"""The seed models' scale on the tiny models' budget: a 128256-token vocabulary, a 131072-token
context with llama3 rope scaling, half-precision weights, a prompt of a thousand tokens, and
token ids at the vocabulary's edge. Narrow and shallow (hidden 64, 2 layers), so it stays fast.

References: transformers on the same weights, in float32 (the exact answer) and in the
weights' own dtype (what a half-precision reference reaches). irforge must be at least as
close to the float32 answer as transformers in half precision is, give or take rounding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from test_export_run import run_cli
from test_serve_engine import _all_free
from typer.testing import CliRunner

import tiny
from irforge.cli.main import app

pytestmark = pytest.mark.iree
VOCAB, CONTEXT = 128256, 131072
DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16}
rng = np.random.default_rng(7)
PROMPT = rng.integers(0, VOCAB, 20).tolist()
LONG = rng.integers(0, VOCAB, 1000).tolist()  # 32 pages of 32 positions
STEPS = 8


def real_config(**overrides: object) -> transformers.LlamaConfig:
    scaling = dict(tiny.LLAMA3_SCALING, original_max_position_embeddings=8192)
    return tiny.llama_config(
        vocab_size=VOCAB,
        max_position_embeddings=CONTEXT,
        rope_theta=500000.0,
        rope_scaling=scaling,
        **overrides,
    )


# (weights' dtype, export options): the default (decomposed attention in f32) in both half
# precisions, and torch's sdpa computing in f16 itself.
BUILDS = {
    "f16": ("f16", {}),
    "bf16": ("bf16", {}),
    "f16-sdpa-f16": ("f16", {"attention": "sdpa", "attention_dtype": "f16"}),
}


@pytest.fixture(scope="module", params=sorted(BUILDS))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(dtype, HF folder, artifact folder) of the real-vocabulary model, built one way."""
    from irforge.artifacts.manifest import ExportOptions
    from irforge.stages.compile import compile_folder
    from irforge.stages.convert import convert
    from irforge.stages.export import export

    dtype, extra = BUILDS[request.param]
    root = tmp_path_factory.mktemp(f"real-{request.param}")
    hf = root / "hf"
    tiny.save_hf(hf, real_config(), dtype=DTYPES[dtype])
    archive = convert(hf, out=root / "model.irpa").out
    options = ExportOptions(prefill_batch_sizes=(1,), decode_batch_sizes=(1,), **extra)
    export(archive, out_dir=root / "art", options=options)
    compile_folder(root / "art", target="cpu")
    return dtype, hf, root / "art"


def _reference(hf: Path, prompt: list[int], dtype: torch.dtype) -> tuple[list[int], np.ndarray]:
    model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=dtype).eval()
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=STEPS, do_sample=False, pad_token_id=0
        )
        logits = model(out[:, :-1]).logits[0, len(prompt) - 1 :].float().numpy()
    return out[0, len(prompt) :].tolist(), logits


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("prompt", [PROMPT, LONG], ids=["20-tokens", "1000-tokens"])
def test_half_precision_matches_transformers(built, prompt: list[int], tmp_path: Path) -> None:
    """Greedy tokens equal float32 transformers' until a step where its top two are closer
    than the half-precision logits can tell apart (then either is right, and from there the
    two continuations feed different tokens, so their logits no longer compare); the logits
    up to there are as close to float32 as transformers' own in that dtype."""
    name, hf, art = built
    exact_tokens, exact = _reference(hf, prompt, torch.float32)
    _, half = _reference(hf, prompt, DTYPES[name])
    doc = run_cli(art, prompt, STEPS, tmp_path / "logits.npy")
    ours = np.load(tmp_path / "logits.npy")
    assert ours.shape == (STEPS, VOCAB)
    agree = _first_difference(doc["tokens"], exact_tokens)
    seen = min(agree + 1, STEPS)  # the steps fed the same tokens as the reference
    assert _rel(ours[:seen], exact[:seen]) <= max(2 * _rel(half[:seen], exact[:seen]), 1e-3)
    _assert_a_tie_if_apart(doc["tokens"], exact_tokens, exact, DTYPES[name])


def _first_difference(tokens: list[int], want: list[int]) -> int:
    assert len(tokens) == len(want)
    return next((i for i, (a, b) in enumerate(zip(tokens, want, strict=True)) if a != b), len(want))


def _assert_a_tie_if_apart(
    tokens: list[int], want: list[int], logits: np.ndarray, dtype: torch.dtype
) -> None:
    """Where `tokens` leave `want`, the reference's logits for the two were closer than the
    dtype resolves: either token is right there, and the continuations no longer compare."""
    at = _first_difference(tokens, want)
    if at < len(want):
        step = logits[at]
        gap = abs(step[want[at]] - step[tokens[at]])
        resolution = float(torch.finfo(dtype).eps) * np.abs(step).max()
        assert gap <= 2 * resolution, f"step {at}: a clear winner missed (gap {gap:.4f})"


def test_token_ids_at_the_vocabulary_edge(built) -> None:
    _, _, art = built
    runner = CliRunner()
    ok = runner.invoke(
        app, ["run", str(art), "--prompt-ids", f"0,{VOCAB - 1}", "--max-tokens", "1"]
    )
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(app, ["run", str(art), "--prompt-ids", f"5,{VOCAB}"])
    assert bad.exit_code == 2 and f"token id {VOCAB} is outside the vocabulary" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_the_program_serves_the_whole_context(built) -> None:
    """The export keeps the 131072-token context (llama3 rope scaling included)."""
    from irforge.artifacts.manifest import Manifest

    _, _, art = built
    manifest = Manifest.load(art)
    assert manifest.options.max_seq_len == CONTEXT and manifest.config.rope_scaling is not None
    assert manifest.options.attention_dtype == (
        "f32" if manifest.options.attention == "decomposed" else "f16"
    )


def _solo(art: Path, prompt: list[int], steps: int, tmp: Path) -> tuple[list[int], np.ndarray]:
    """The tokens and logits of `irforge run`, the prompt alone in the cache."""
    doc = run_cli(art, prompt, steps, tmp / "solo.npy")
    return doc["tokens"], np.load(tmp / "solo.npy")


@pytest.mark.parametrize("built", ["bf16"], indirect=True)
def test_an_oversubscribed_cache_preempts_at_the_real_vocabulary(built, tmp_path: Path) -> None:
    """8 usable pages; 5 requests that each grow to 5 pages: the newest is preempted when the
    pages run out and resumes later by recomputing its prefix. Each request gets its solo
    tokens; in bf16 a recomputed prefix rounds differently from the steps that made it, so a
    request may leave them at a step whose top two the solo logits cannot tell apart."""
    from irforge.engine import Engine

    name, _, art = built
    with Engine(art, page_count=9) as engine:
        steps = 5 * engine.scheduler.stride - len(PROMPT)  # the last token needs no cache slot
        want, logits = _solo(art, PROMPT, steps, tmp_path)
        reqs = [engine.submit(PROMPT, max_tokens=steps, ignore_eos=True) for _ in range(5)]
        for r in reqs:
            _assert_a_tie_if_apart(r.wait(300).tokens, want, logits, DTYPES[name])
        assert reqs[0].tokens == want  # the oldest is never the one preempted
        assert all(r.finish_reason == "length" for r in reqs)
        assert _all_free(engine)
    # Readmitted only once the running requests have room to grow, a preempted request is
    # not the first to go again at once: a handful of preemptions, not one per page.
    assert 0 < engine.metrics.counter("preemptions_total") <= 10


@pytest.mark.parametrize("built", ["bf16"], indirect=True)
def test_no_max_tokens_at_the_real_context(built) -> None:
    """OpenAI's default: without max_tokens a request runs to the context (131072 here), so a
    small cache, not a reservation for the whole context, is what caps it."""
    from irforge.engine import BadRequest, Engine

    _, _, art = built
    with Engine(art, page_count=9) as small:
        assert small.max_seq_len == CONTEXT
        req = small.submit(PROMPT, ignore_eos=True)
        assert len(req.wait(300).tokens) == 8 * small.scheduler.stride - len(PROMPT)
        assert req.finish_reason == "length" and _all_free(small)
        with pytest.raises(BadRequest, match="outside the vocabulary"):
            small.submit([1, VOCAB], max_tokens=1)
