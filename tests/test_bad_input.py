"""Bad input: one clear line naming the file and the problem, exit code 2, nothing written."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import gguf
import pytest
from typer.testing import CliRunner

from irforge.cli.main import app

runner = CliRunner()


def safetensors_bytes(header: dict | bytes, data: bytes, *, length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


ONE_F32 = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


def one(dtype: str, shape: list[int], end: int) -> dict:
    return {"w": {"dtype": dtype, "shape": shape, "data_offsets": [0, end]}}


def truncated_copy(src: Path, keep: float) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        dst = folder / src.name
        dst.write_bytes(src.read_bytes()[: int(src.stat().st_size * keep)])
        return dst

    return make


def written(name: str, content: bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        (folder / name).write_bytes(content)
        return folder / name

    return make


SAFETENSORS_CASES = {
    "absurd header length": (
        written("a.safetensors", safetensors_bytes(b"{}", b"", length=1 << 40)),
        "exceeds the",
    ),
    "header past end of file": (
        written("b.safetensors", safetensors_bytes(b"{}", b"", length=5000)),
        "runs past the end",
    ),
    "non-UTF-8 header": (
        written("c.safetensors", safetensors_bytes(b'{"\xff\xfe": 1}', b"")),
        "not UTF-8",
    ),
    "non-JSON header": (
        written("d.safetensors", safetensors_bytes(b"{not json", b"")),
        "not valid JSON",
    ),
    "JSON that is not an object": (
        written("e.safetensors", safetensors_bytes(b"[1, 2]", b"")),
        "not a JSON object",
    ),
    "unknown dtype": (
        written(
            "f.safetensors",
            safetensors_bytes(one("F7", [2], 8), b"x" * 8),
        ),
        "unknown dtype 'F7'",
    ),
    "offsets outside the file": (
        written(
            "g.safetensors",
            safetensors_bytes(one("F32", [4], 16), b"x" * 8),
        ),
        "truncated",
    ),
    "size does not match shape": (
        written(
            "h.safetensors",
            safetensors_bytes(one("F32", [3], 8), b"x" * 8),
        ),
        "expected 12",
    ),
    "overlapping tensors": (
        written(
            "i.safetensors",
            safetensors_bytes(
                {
                    "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
                },
                b"x" * 12,
            ),
        ),
        "overlaps",
    ),
    "trailing bytes": (
        written("j.safetensors", safetensors_bytes(ONE_F32, b"x" * 12)),
        "4 trailing bytes",
    ),
    "duplicate keys": (
        written(
            "k.safetensors",
            safetensors_bytes(
                b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
                b'"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}',
                b"x" * 8,
            ),
        ),
        "duplicate key",
    ),
    "too short": (written("l.safetensors", b"\x01\x02"), "too short"),
}


def gguf_file(arch: str = "llama", **kv: int) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / f"{arch}.gguf"
        w = gguf.GGUFWriter(str(path), arch)
        for k, v in kv.items():
            w.add_uint32(k, v)
        import numpy as np

        w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return path

    return make


def gguf_header(n_tensors: int, n_kv: int, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + b"\x00" * 64


GGUF_CASES = {
    "unsupported architecture": (gguf_file("gpt2"), "architecture 'gpt2' is not supported"),
    "missing hyperparameters": (gguf_file("llama"), "lacks required hyperparameter"),
    "absurd counts": (written("n.gguf", gguf_header(1 << 60, 1 << 60)), "cannot fit"),
    "bad version": (written("v.gguf", gguf_header(0, 0, version=1)), "version 1"),
    "big-endian": (written("b.gguf", gguf_header(0, 0, version=3 << 24)), "big-endian"),
}


def hf_folder_without(key: str) -> Callable[[Path], Path]:
    def make(folder: Path, source: Path) -> Path:
        dst = folder / "model"
        shutil.copytree(source, dst)
        cfg = json.loads((dst / "config.json").read_text())
        del cfg[key]
        (dst / "config.json").write_text(json.dumps(cfg))
        return dst

    return make


def run_convert(src: Path, out_dir: Path) -> tuple[int, str]:
    result = runner.invoke(app, ["convert", str(src), "-o", str(out_dir / "out.irpa"), "-q"])
    return result.exit_code, result.stderr


def assert_clean_failure(code: int, stderr: str, src: Path, expected: str, out_dir: Path) -> None:
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert expected in lines[0] and src.name in lines[0], lines[0]
    assert "Traceback" not in stderr
    assert list(out_dir.iterdir()) == [], "a failed convert left files behind"


@pytest.mark.parametrize("case", sorted(SAFETENSORS_CASES) + sorted(GGUF_CASES))
def test_bad_file(case: str, tmp_path: Path) -> None:
    make, expected = {**SAFETENSORS_CASES, **GGUF_CASES}[case]
    src_dir, out_dir = tmp_path / "src", tmp_path / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    src = make(src_dir)
    assert_clean_failure(*run_convert(src, out_dir), src, expected, out_dir)


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_gguf(keep: float, llama_gguf: tuple[Path, dict], tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    src = truncated_copy(llama_gguf[0], keep)(tmp_path)
    assert_clean_failure(*run_convert(src, out_dir), src, "truncated", out_dir)


def test_truncated_safetensors(llama_dir: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    src = truncated_copy(llama_dir / "model.safetensors", 0.7)(tmp_path)
    assert_clean_failure(*run_convert(src, out_dir), src, "truncated", out_dir)


@pytest.mark.parametrize("key", ["hidden_size", "num_hidden_layers", "rms_norm_eps"])
def test_config_missing_hyperparameter(key: str, llama_dir: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    src = hf_folder_without(key)(tmp_path, llama_dir)
    code, stderr = run_convert(src, out_dir)
    assert_clean_failure(code, stderr, src, f"lacks required hyperparameter '{key}'", out_dir)


def test_truncated_irpa_is_rejected_by_inspect(llama_dir: Path, tmp_path: Path) -> None:
    from irforge.stages.convert import convert

    out = convert(llama_dir, out=tmp_path / "m.irpa").out
    bad = tmp_path / "bad.irpa"
    bad.write_bytes(out.read_bytes()[:5000])
    result = runner.invoke(app, ["inspect", str(bad)])
    assert result.exit_code == 2
    assert "bad.irpa" in result.stderr and "past the end" in result.stderr


def test_missing_source_and_unknown_format(tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, stderr = run_convert(tmp_path / "nope.gguf", out_dir)
    assert code == 2 and "no such file" in stderr
    (tmp_path / "w.bin").write_bytes(b"\x00" * 64)
    code, stderr = run_convert(tmp_path / "w.bin", out_dir)
    assert code == 2 and "unknown source format" in stderr
    assert list(out_dir.iterdir()) == []


def test_output_onto_input_is_refused(llama_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "model.safetensors"
    shutil.copy(llama_dir / "model.safetensors", src)
    result = runner.invoke(app, ["convert", str(src), "-o", str(src) + ".irpa", "-q"])
    assert result.exit_code == 0  # a different name is fine
    result = runner.invoke(app, ["convert", str(src), "-o", str(tmp_path / "x.txt"), "-q"])
    assert result.exit_code == 2 and "must end in .irpa" in result.stderr


def test_failure_mid_write_leaves_no_output(
    llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from irforge.formats import irpa

    def boom(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(irpa, "_verify", boom)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = runner.invoke(app, ["convert", str(llama_dir), "-o", str(out_dir / "m.irpa"), "-q"])
    assert result.exit_code == 130
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("num_hidden_layers", 10**12, "block_count"),
        ("vocab_size", 10**12, "vocab_size"),
        ("max_position_embeddings", 10**15, "context_length"),
        ("hidden_size", "x", "hidden_size must be an integer"),
        ("num_attention_heads", 0, "attention_head_count"),
        ("num_hidden_layers", True, "num_hidden_layers must be an integer"),
    ],
)
def test_absurd_hyperparameters_are_refused_in_one_line(
    key: str, value: object, field: str, llama_dir: Path, tmp_path: Path
) -> None:
    """An untrusted config.json cannot ask for an export of 10^12 layers (issue 14, item 12)."""
    config = json.loads((llama_dir / "config.json").read_text())
    config[key] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    result = runner.invoke(app, ["export", "--config", str(path), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert field in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "model.mlir").exists()


@pytest.mark.parametrize("damage", ["missing", "misshapen"])
def test_an_archive_that_lacks_a_weight_is_refused_where_it_is_read(
    damage: str, llama_dir: Path, tmp_path: Path
) -> None:
    """Not in `run` 35 lines later (issue 14, item 13): export and shard name the tensor."""
    from irforge.formats.irpa import OutputEntry, read_irpa, tensor_metadata, write_irpa
    from irforge.formats.tensor_ref import read_bytes
    from irforge.stages.convert import convert

    good = convert(llama_dir, out=tmp_path / "good.irpa").out
    victim = "blk.0.attn_q.weight"
    entries = []
    for e in read_irpa(good):
        if e.ref.name != victim:
            entries.append(OutputEntry(e.ref.name, e.ref.nbytes, e.ref, e.metadata))
        elif damage == "misshapen":  # half the rows, and metadata that says so
            half = bytes(read_bytes(e.ref))[: e.ref.nbytes // 2]
            rows, cols = e.ref.shape
            meta = tensor_metadata(e.ref.dtype, (rows // 2, cols))
            entries.append(OutputEntry(e.ref.name, len(half), lambda b=half: iter([b]), meta))
    bad = tmp_path / "bad.irpa"
    write_irpa(bad, entries)
    for command in (
        ["export", str(bad), "-o", str(tmp_path / "out")],
        ["shard", str(bad), "--tp", "2", "-o", str(tmp_path / "s.irpa")],
    ):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        assert victim in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert ("is missing" if damage == "missing" else "the config implies") in result.stderr
