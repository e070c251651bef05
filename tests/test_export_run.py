"""export -> compile (CPU) -> run on IREE, against transformers' logits and greedy tokens."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from typer.testing import CliRunner

import tiny
from irforge.cli.main import app
from irforge.errors import InputError
from irforge.runtime import Session, generate

pytestmark = pytest.mark.iree
runner = CliRunner()
STEPS = 16
PROMPT = [5, 17, 3, 99, 42, 7, 250, 1, 8, 64, 33, 12, 2, 77, 190, 4, 23, 56, 9, 11]  # 20 > stride


def reference(model_dir: Path, prompt: list[int], steps: int) -> tuple[list[int], np.ndarray]:
    """transformers' greedy continuation and its logits at each generated position."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    hf.generation_config.eos_token_id = None  # greedy past eos, as `run --ignore-eos` does
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([prompt]), max_new_tokens=steps, do_sample=False, pad_token_id=0
        )
        tokens = out[0, len(prompt) :].tolist()
        logits = hf(out[:, :-1]).logits[0, len(prompt) - 1 :].numpy()
    return tokens, logits


def run_cli(folder: Path, prompt: list[int], steps: int, logits: Path) -> dict:
    args = [
        "run",
        str(folder),
        "--prompt-ids",
        ",".join(map(str, prompt)),
        "--max-tokens",
        str(steps),
        "--ignore-eos",
        "--json",
        "--logits-out",
        str(logits),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_close_rel(got: np.ndarray, want: np.ndarray, rel: float = 1e-4) -> None:
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < rel, f"max relative error {err:.2e}"


@pytest.mark.parametrize(
    ("artifacts", "source"),
    [
        ("llama_artifacts", "llama_dir"),
        ("mistral_artifacts", "mistral_dir"),
        ("gguf_artifacts", "llama_dir"),
    ],
)
def test_run_matches_transformers(
    artifacts: str, source: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    folder, model_dir = request.getfixturevalue(artifacts), request.getfixturevalue(source)
    want_tokens, want_logits = reference(model_dir, PROMPT, STEPS)
    doc = run_cli(folder, PROMPT, STEPS, tmp_path / "logits.npy")
    got_logits = np.load(tmp_path / "logits.npy")
    assert got_logits.shape == (STEPS, want_logits.shape[-1])
    assert_close_rel(got_logits[:1], want_logits[:1])  # prefill
    assert_close_rel(got_logits, want_logits)  # and each decode step
    assert doc["tokens"] == want_tokens
    assert set(doc["timings"]) == {"prefill_s", "decode_s", "decode_tokens_per_s"}


def test_a_half_precision_gguf_compiles_to_the_right_program(
    gguf_f16_artifacts: Path, llama_dir: Path, tmp_path: Path
) -> None:
    """An f16 GGUF keeps its norms in f32; the program once declared them f16 and IREE read
    their bytes as f16 (relative error 1.7, 0/12 greedy tokens). Within f16's rounding of
    the weights and activations of transformers' f32 answer, greedy tokens exact."""
    archive = json.loads((gguf_f16_artifacts / "manifest.json").read_text())
    assert archive["config"]["dtype"] == "f16"
    want_tokens, want_logits = reference(llama_dir, PROMPT, STEPS)
    doc = run_cli(gguf_f16_artifacts, PROMPT, STEPS, tmp_path / "logits.npy")
    assert_close_rel(np.load(tmp_path / "logits.npy"), want_logits, rel=5e-3)
    assert doc["tokens"] == want_tokens


def test_f16_weights_on_f32_rows_compile_to_the_right_program(
    gguf_f16_rows_artifacts: Path, gguf_f16_artifacts: Path, llama_dir: Path, tmp_path: Path
) -> None:
    """--f32-rows: the f16 weights are widened inside each matmul (model/widening.py), at 1
    and at 4 rows. Within f16's rounding of the weights of transformers' f32 answer, and no
    further from it than the program on f16 rows; greedy tokens exact."""
    folder = gguf_f16_rows_artifacts
    options = json.loads((folder / "manifest.json").read_text())["options"]
    assert (options["activation_dtype"], options["kv_cache_dtype"]) == ("f32", "f16")
    assert "irforge_widening_linear" in (folder / "model.mlir").read_text()
    want_tokens, want_logits = reference(llama_dir, PROMPT, STEPS)
    doc = run_cli(folder, PROMPT, STEPS, tmp_path / "rows.npy")
    assert doc["tokens"] == want_tokens
    run_cli(gguf_f16_artifacts, PROMPT, STEPS, tmp_path / "f16.npy")
    errors = [
        np.abs(np.load(tmp_path / name) - want_logits).max() / np.abs(want_logits).max()
        for name in ("rows.npy", "f16.npy")
    ]
    assert errors[0] < 5e-3 and errors[0] <= errors[1] * 1.01, errors
    prompts = [PROMPT, PROMPT[:3], [7] * 33, PROMPT[5:10]]  # decode_bs4
    result = generate(Session(folder, page_count=64), prompts, max_tokens=8, keep_logits=True)
    for prompt, tokens, logits in zip(prompts, result.tokens, result.logits, strict=True):
        want_tokens, want_logits = reference(llama_dir, prompt, 8)
        assert tokens == want_tokens
        assert_close_rel(logits, want_logits, rel=5e-3)


def test_an_archive_the_program_would_misread_is_refused(tmp_path: Path) -> None:
    """IREE reads a parameter's bytes as the type the program declares, without a check: an
    archive whose tensor dtype differs from the config's is refused at export, by name."""
    import gguf as gguf_pkg

    from irforge.artifacts.archive import open_archive
    from irforge.artifacts.manifest import ExportOptions
    from irforge.stages.export.program import check_parameters

    path = tmp_path / "m.gguf"
    tiny.write_gguf(
        path, tiny.build_model(tiny.llama_config()), float_type=gguf_pkg.GGMLQuantizationType.F16
    )
    result = runner.invoke(app, ["convert", str(path), "-o", str(tmp_path / "m.irpa")])
    assert result.exit_code == 0, result.output
    archive = open_archive(tmp_path / "m.irpa")
    assert {ref.dtype for ref in archive.tensors.values()} == {"f16"}  # norms cast too
    config = archive.require_config()
    options = ExportOptions().resolve(config, 1)
    check_parameters(config, options, archive.tensors, archive.path)  # passes as made
    wrong = config.replace(dtype="f32")
    with pytest.raises(InputError, match=r"tensor .* is f16 .* the program loads f32"):
        check_parameters(wrong, ExportOptions().resolve(wrong, 1), archive.tensors, archive.path)


def test_batch_of_prompts_of_different_lengths(llama_artifacts: Path, llama_dir: Path) -> None:
    prompts = [PROMPT, PROMPT[:3], [7] * 33, PROMPT[5:10]]  # 1 to 3 pages each
    session = Session(llama_artifacts, page_count=64)
    free_before = session.pages.free_count
    result = generate(session, prompts, max_tokens=8, keep_logits=True)
    for prompt, tokens, logits in zip(prompts, result.tokens, result.logits, strict=True):
        want_tokens, want_logits = reference(llama_dir, prompt, 8)
        assert tokens == want_tokens
        assert_close_rel(logits, want_logits)
    assert session.pages.free_count == free_before


def test_text_prompt_and_plain_output(llama_artifacts: Path) -> None:
    result = runner.invoke(
        app, ["run", str(llama_artifacts), "--prompt", "the quick brown fox", "--max-tokens", "4"]
    )
    assert result.exit_code == 0, result.output
    assert "prompt tokens, " in result.stderr and "tokens/s" in result.stderr


def test_export_folder_contract(llama_artifacts: Path) -> None:
    config = json.loads((llama_artifacts / "config.json").read_text())
    # shark-ai's example config (vendored from its docs): shortfin rejects unknown keys
    example = Path(__file__).parent / "data" / "shortfin-example-config.json"
    reference_config = json.loads(example.read_text())
    assert set(config) == set(reference_config)
    assert set(config["paged_kv_cache"]) == set(reference_config["paged_kv_cache"])
    kv = config["paged_kv_cache"]
    # layers * 2 * kv_heads * stride * head_dim
    assert kv["paged_kv_block_size_elements_per_device"] == [2 * 2 * 2 * 16 * 16]
    assert config["prefill_batch_sizes"] == [1, 4] and kv["kv_cache_dtype"] == "float32"
    mlir = (llama_artifacts / "model.mlir").read_text()
    assert '#flow.parameter.named<"model"::"blk.1.attn_q.weight">' in mlir
    assert "dense_resource" not in mlir  # no weights inside the program
    for fn in ("prefill_bs1", "prefill_bs4", "decode_bs1", "decode_bs4"):
        assert re.search(rf"func\.func @{fn}\(", mlir)
    names = {p.name for p in llama_artifacts.iterdir()}
    assert {
        "model.irpa",
        "tokenizer.json",
        "tokenizer_config.json",
        "manifest.json",
        "model.cpu.vmfb",
    } <= names


def test_export_from_config_alone_then_run_says_why_not(llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cfg"
    result = runner.invoke(
        app,
        [
            "export",
            "--config",
            str(llama_dir / "config.json"),
            "-o",
            str(out),
            "--bs-prefill",
            "1",
            "--bs-decode",
            "1",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "model.mlir").is_file() and not (out / "model.irpa").exists()
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("manifest.json", "config.json"):
        (bad / name).write_bytes((out / name).read_bytes())
    (bad / "model.mlir").write_text("this is not MLIR")
    result = runner.invoke(app, ["compile", str(bad), "--target", "cpu", "-q"])
    assert result.exit_code == 2
    assert "iree-compile failed for target cpu" in result.stderr
    assert "compile.cpu.log" in result.stderr and not (bad / "model.cpu.vmfb").exists()
    result = runner.invoke(app, ["run", str(out), "--prompt-ids", "1,2"])
    assert result.exit_code == 2 and "no program compiled for device" in result.stderr


def dump_module(vmfb: Path) -> str:
    """iree-dump-module's listing (executable formats included) of a VMFB."""
    tool = Path(sys.executable).parent / "iree-dump-module"
    return subprocess.run([str(tool), str(vmfb)], capture_output=True, text=True, check=True).stdout


def test_mistral_head_dim_reaches_shortfin_config(mistral_artifacts: Path) -> None:
    config = json.loads((mistral_artifacts / "config.json").read_text())
    assert config["attn_head_dim"] == 32  # head_dim != hidden / heads
    assert tiny.mistral_config().head_dim == 32


def test_shortfin_serves_the_same_greedy_tokens(llama_artifacts: Path) -> None:
    """AMD's own server (shortfin 3.9) runs the folder's `--for-shortfin` program (IREE 3.9's
    compiler) and agrees with `irforge run` (the newest IREE); the runtime of each release
    refuses the other's VMFB, so this is the artifact the README tells shortfin users to build."""
    pytest.importorskip("shortfin_apps")
    from shortfin_server import generate as shortfin_generate
    from shortfin_server import shortfin_server

    from irforge.stages.compile import compile_folder
    from irforge.stages.compile.shortfin import SHORTFIN_IREE_VERSION, shortfin_compiler

    prompts = [PROMPT, PROMPT[:3]]
    ours = [
        run_cli(llama_artifacts, p, 12, llama_artifacts.parent / f"l{len(p)}.npy")["tokens"]
        for p in prompts
    ]
    from importlib.metadata import version

    assert version("shortfin") == SHORTFIN_IREE_VERSION  # one release, named in two places
    vmfb = compile_folder(llama_artifacts, target="cpu", compiler=shortfin_compiler()).vmfb
    assert vmfb.name == f"model.cpu.iree{SHORTFIN_IREE_VERSION.rsplit('.', 1)[0]}.vmfb"
    with shortfin_server(
        llama_artifacts, vmfb=vmfb, parameters=[llama_artifacts / "model.irpa"]
    ) as url:
        theirs = [shortfin_generate(url, p, 12) for p in prompts]
    eos = 2  # shortfin stops at eos; irforge --ignore-eos does not
    for a, b in zip(ours, theirs, strict=True):
        assert b == a[: len(b)] and (len(b) == 12 or b[-1] == eos)
