"""The CLI layer: help texts, argument forwarding, output formats."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from unittest.mock import patch

import pytest
from typer.testing import CliRunner

from irforge.cli.main import app
from irforge.stages.convert import ConvertResult

runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["convert"], ["inspect"]])
def test_help_explains_every_option(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    expected = {
        "convert": ["--out", "--dtype", "--config", "--quiet"],
        "inspect": ["--json", "--metadata"],
    }.get("".join(command), ["convert", "inspect"])
    for word in expected:
        assert word in result.stdout


def test_convert_forwards_options(tmp_path: Path) -> None:
    out = tmp_path / "x.irpa"
    with patch(
        "irforge.stages.convert.convert", return_value=ConvertResult(out=out, config=None)
    ) as fn:
        result = runner.invoke(app, ["convert", "src.gguf", "-o", str(out), "--dtype", "bf16"])
    assert result.exit_code == 0, result.output
    (args, kwargs) = fn.call_args
    assert args == (Path("src.gguf"),)
    assert kwargs["out"] == out and kwargs["dtype"] == "bf16" and kwargs["config"] is None
    assert result.stdout.strip() == str(out)


def test_end_to_end_convert_then_inspect(llama_gguf: tuple[Path, dict], tmp_path: Path) -> None:
    """Unpatched, through the installed console script, as a user runs it."""
    src, _ = llama_gguf
    out = tmp_path / "m.irpa"
    exe = Path(sys.executable).parent / "irforge"
    done = subprocess.run(
        [str(exe), "convert", str(src), "-o", str(out)], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == str(out)
    assert "2 dequantized" in done.stderr
    inspected = subprocess.run(
        [str(exe), "inspect", "--json", str(out)], capture_output=True, text=True, check=True
    )
    doc = json.loads(inspected.stdout)
    assert doc["format"] == "irpa" and doc["metadata"]["config"]["rope_interleaved"] is True
    names = {t["name"] for t in doc["tensors"]}
    assert "blk.1.ffn_down.weight" in names and "rope_freqs.weight" not in names


def test_inspect_every_source_kind(
    llama_dir: Path, llama_bf16_sharded_dir: Path, llama_gguf: tuple[Path, dict]
) -> None:
    index = llama_bf16_sharded_dir / "model.safetensors.index.json"
    cases = {
        llama_dir: "hf-folder",
        llama_dir / "model.safetensors": "safetensors",
        index: "safetensors-index",
        llama_gguf[0]: "gguf",
    }
    for path, kind in cases.items():
        result = runner.invoke(app, ["inspect", "--json", str(path)])
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert doc["format"] == kind
        assert doc["tensor_count"] == len(doc["tensors"]) > 0
        t = doc["tensors"][0]
        assert {"name", "dtype", "shape", "nbytes", "offset", "file"} <= set(t)
    gguf_doc = json.loads(runner.invoke(app, ["inspect", "--json", str(llama_gguf[0])]).stdout)
    # the 288-entry token list is summarized, not dumped
    assert gguf_doc["metadata"]["tokenizer.ggml.tokens"] == "<array of 288 items>"
    table = runner.invoke(app, ["inspect", str(llama_dir)])
    assert table.exit_code == 0 and "blk" not in table.stdout  # HF names in an HF folder
    assert "model.layers.0.self_attn.q_proj.weight" in table.stdout


def test_debug_flag_shows_traceback(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--debug", "inspect", str(tmp_path / "missing.irpa")])
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "no such file" in result.stderr


def test_python_dash_m_and_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "irforge", "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.startswith("irforge ")


def test_serve_takes_one_cache_size(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["serve", str(tmp_path), "--kv-cache-pages", "64", "--kv-cache-gib", "1"]
    )
    assert result.exit_code == 2 and "not both" in result.stderr
    result = runner.invoke(app, ["serve", str(tmp_path), "--kv-cache-pages", "1"])
    assert result.exit_code == 2 and "kv-cache-pages" in result.stderr
