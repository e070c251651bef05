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
    from irforge.compile import compile_folder
    from irforge.convert import convert
    from irforge.export import export
    from irforge.manifest import ExportOptions

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
    agree = next(
        (i for i, (a, b) in enumerate(zip(doc["tokens"], exact_tokens, strict=True)) if a != b),
        STEPS,
    )
    seen = min(agree + 1, STEPS)  # the steps fed the same tokens as the reference
    assert _rel(ours[:seen], exact[:seen]) <= max(2 * _rel(half[:seen], exact[:seen]), 1e-3)
    if agree < STEPS:
        step = exact[agree]
        gap = abs(step[exact_tokens[agree]] - step[doc["tokens"][agree]])
        resolution = float(torch.finfo(DTYPES[name]).eps) * np.abs(step).max()
        assert gap <= 2 * resolution, f"step {agree}: a clear winner missed (gap {gap:.4f})"


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
    from irforge.manifest import Manifest

    _, _, art = built
    manifest = Manifest.load(art)
    assert manifest.options.max_seq_len == CONTEXT and manifest.config.rope_scaling is not None
    assert manifest.options.attention_dtype == (
        "f32" if manifest.options.attention == "decomposed" else "f16"
    )
