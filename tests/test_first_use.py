"""What a new user hit trying the README: each edge is one line on stderr and exit 2, help
texts that say what the command does, plain output for pipes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from irforge.cli.main import app

runner = CliRunner()
COMMANDS = ["inspect", "download", "models", "convert", "shard", "export", "compile", "run"]
COMMANDS += ["build", "serve"]


def one_line_error(result, *words: str) -> str:  # noqa: ANN001
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["nope"], ["No such command 'nope'", "irforge --help"]),
        (["run"], ["Missing argument", "irforge run --help"]),
        (["run", "x", "--bogus"], ["No such option: --bogus"]),
        (["run", "x", "--prompt", "a", "--max-tokens", "0"], ["--max-tokens"]),
        (["serve", "x", "--device-ids", "0,x"], ["--device-ids"]),
        (["compile", "x", "--target", "tpu9"], ["unknown target 'tpu9'"]),
    ],
)
def test_usage_errors_are_one_line(args: list[str], words: list[str]) -> None:
    one_line_error(runner.invoke(app, args), *words)


def test_debug_works_after_the_command_too(tmp_path: Path) -> None:
    args = ["run", str(tmp_path / "nope"), "--prompt", "x"]
    quiet = runner.invoke(app, args)
    one_line_error(quiet, "no such file or folder")
    loud = runner.invoke(app, [*args, "--debug"])
    assert loud.exit_code == 2 and "Traceback" in loud.stderr
    again = runner.invoke(app, args)  # --debug did not stick to the process
    assert "Traceback" not in again.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_no_value_for_flags_and_no_mangled_names(command: str) -> None:
    result = runner.invoke(app, [command, "--help"], terminal_width=120)
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.stdout and "..vmfb" not in result.stdout
    assert "(the default)" not in result.stdout


def test_help_tells_the_truth_about_exits_and_files() -> None:
    assert "model.TARGET.vmfb" in runner.invoke(app, ["compile", "--help"]).stdout
    serve = " ".join(runner.invoke(app, ["serve", "--help"], terminal_width=200).stdout.split())
    assert "exits 0" in serve and "exits 130" in serve


@pytest.mark.iree
def test_run_refuses_broken_inputs_in_one_line(llama_artifacts: Path, tmp_path: Path) -> None:
    folder = tmp_path / "art"
    shutil.copytree(llama_artifacts, folder)
    base = ["run", str(folder), "--prompt-ids"]
    one_line_error(runner.invoke(app, [*base, "1,99999"]), "token id 99999", "vocabulary")
    one_line_error(runner.invoke(app, [*base, "1,-3"]), "token id -3")
    garbage = tmp_path / "garbage.vmfb"
    garbage.write_bytes(b"not a flatbuffer")
    one_line_error(runner.invoke(app, [*base, "1", "--vmfb", str(garbage)]), "IREE can load")
    from irforge.stages.compile import compile_folder

    gpu = compile_folder(folder, target="gfx942", out=tmp_path / "gpu.vmfb").vmfb
    line = one_line_error(runner.invoke(app, [*base, "1", "--vmfb", str(gpu)]))
    assert "compiled for hip devices, not local-task" in line and len(line) < 300
    irpa = (folder / "model.irpa").resolve()
    truncated = folder / "model.irpa"
    data = irpa.read_bytes()
    truncated.unlink()
    truncated.write_bytes(data[: len(data) // 2])
    one_line_error(runner.invoke(app, [*base, "1"]), "model.irpa", "truncated")


@pytest.mark.iree
def test_inspect_of_a_built_folder_lists_its_archive(llama_artifacts: Path) -> None:
    result = runner.invoke(app, ["inspect", str(llama_artifacts), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["format"] == "artifact folder" and doc["tensor_count"] > 0
    assert any("model.cpu.vmfb" in c for c in doc["metadata"]["artifacts"]["compiled"])


def test_models_piped_is_one_plain_row_per_model() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "irforge", "models"], capture_output=True, text=True, check=True
    )
    rows = [r.split("\t") for r in done.stdout.strip().splitlines()]
    ids = {r[1] for r in rows}
    assert "meta-llama/Llama-3.1-70B-Instruct" in ids and all(len(r) == 5 for r in rows)
    row = next(r for r in rows if r[0] == "llama-3.1-70b")
    assert all(f"tp{n} " in row[4] for n in (1, 2, 4, 8)), row  # every TP, not just the max


@pytest.mark.iree
@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("device_block_count", -5, "device_block_count must be an integer from 2"),
        ("block_seq_stride", 0, "block_seq_stride must be an integer from 1"),
        ("decode_batch_sizes", ["x"], "decode_batch_sizes must be distinct integers"),
        ("tensor_parallelism_size", "x", "tensor_parallelism_size must be an integer"),
        ("attention", "magic", "attention must be one of decomposed, sdpa"),
    ],
)
def test_a_manifest_with_absurd_options_is_refused_where_it_is_read(
    llama_artifacts: Path, tmp_path: Path, key: str, value: object, words: str
) -> None:
    folder = tmp_path / "art"
    shutil.copytree(llama_artifacts, folder)
    doc = json.loads((folder / "manifest.json").read_text())
    doc["options"][key] = value
    (folder / "manifest.json").write_text(json.dumps(doc))
    one_line_error(runner.invoke(app, ["run", str(folder), "--prompt-ids", "1"]), "manifest", words)
