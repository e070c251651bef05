"""The validating readers agree with the reference libraries on good files."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import safetensors
import torch

from irforge.errors import OutputError
from irforge.formats.atomic import StridedRange
from irforge.formats.gguf import read_gguf
from irforge.formats.irpa import OutputEntry, read_irpa, tensor_metadata, write_irpa, write_irpas
from irforge.formats.safetensors import read_folder_weights, read_safetensors
from irforge.formats.tensor_ref import read_tensor


def test_safetensors_matches_reference_library(llama_dir: Path) -> None:
    ours = read_safetensors(llama_dir / "model.safetensors")
    with safetensors.safe_open(llama_dir / "model.safetensors", framework="pt") as ref:
        assert sorted(t.name for t in ours.tensors) == sorted(ref.keys())
        for t in ours.tensors:
            torch.testing.assert_close(read_tensor(t), ref.get_tensor(t.name), rtol=0, atol=0)
        assert ours.metadata == ref.metadata()


def test_sharded_index_reads_every_shard(llama_bf16_sharded_dir: Path) -> None:
    weights = read_folder_weights(llama_bf16_sharded_dir)
    assert len(weights.files) > 1
    for f in weights.files:
        with safetensors.safe_open(f.path, framework="pt") as ref:
            for t in f.tensors:
                assert t.dtype == "bf16"
                torch.testing.assert_close(read_tensor(t), ref.get_tensor(t.name), rtol=0, atol=0)


def test_gguf_matches_gguf_reader(llama_gguf: tuple[Path, dict]) -> None:
    path, _ = llama_gguf
    ours = read_gguf(path)
    ref = gguf.GGUFReader(path)
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for mine, theirs in zip(ours.tensors, ref.tensors, strict=True):
        assert mine.shape == tuple(int(x) for x in reversed(theirs.shape.tolist()))
        assert mine.offset == theirs.data_offset
        assert mine.nbytes == theirs.n_bytes
        assert mine.dtype == theirs.tensor_type.name.lower()
    for key, field in ref.fields.items():
        if key.startswith("GGUF."):
            continue  # the reader's own pseudo-fields (version, counts)
        value = field.contents()
        if isinstance(value, float):
            assert ours.metadata[key] == pytest.approx(value, rel=1e-6)
        else:
            assert ours.metadata[key] == value


def test_irpa_roundtrip_with_iree_and_turbine(tmp_path: Path) -> None:
    import iree.runtime as rt
    from iree.turbine.aot import ParameterArchive

    tensors = {
        "a": torch.randn(3, 5),
        "b": torch.arange(7, dtype=torch.int64),
        "c": torch.randn(2, 2).to(torch.bfloat16),
    }
    entries = []
    for name, t in tensors.items():
        raw = t.contiguous().view(torch.uint8).numpy().tobytes()
        dtype = {torch.float32: "f32", torch.int64: "i64", torch.bfloat16: "bf16"}[t.dtype]
        entries.append(
            OutputEntry(name, len(raw), (lambda r=raw: [r]), tensor_metadata(dtype, t.shape))
        )
    out = tmp_path / "x.irpa"
    write_irpa(out, entries)
    assert out.stat().st_size % 4096 == 0
    for e in read_irpa(out):
        torch.testing.assert_close(read_tensor(e.ref), tensors[e.ref.name], rtol=0, atol=0)
        assert e.ref.offset % 64 == 0
    index = rt.ParameterIndex()
    index.load(str(out))
    assert sorted(k for k, _ in index.items()) == ["a", "b", "c"]
    archive = ParameterArchive(out)
    for name, entry in archive.items():
        torch.testing.assert_close(entry.as_tensor(), tensors[name], rtol=0, atol=0)


def test_irpa_reads_archives_written_by_iree(tmp_path: Path) -> None:
    from iree.turbine.aot import ParameterArchiveBuilder

    builder = ParameterArchiveBuilder()
    want = {"w": torch.randn(4, 8), "n": torch.randn(8).to(torch.float16)}
    for k, v in want.items():
        builder.add_tensor(k, v)
    builder.save(tmp_path / "t.irpa")
    got = {e.ref.name: read_tensor(e.ref) for e in read_irpa(tmp_path / "t.irpa")}
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)


def test_irpa_empty_and_zero_sized_entries(tmp_path: Path) -> None:
    out = tmp_path / "z.irpa"
    write_irpa(out, [OutputEntry("empty", 0, lambda: [], tensor_metadata("f32", (0, 4)))])
    (entry,) = read_irpa(out)
    assert entry.ref.shape == (0, 4) and entry.ref.nbytes == 0
    assert read_tensor(entry.ref).shape == (0, 4)


def test_column_slices_gathered_across_windows_and_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shard's row-parallel path: a few rows mapped at a time, every file's slice from them.

    The matrix sits at an offset no page boundary divides and the window is 3 rows, so the
    window arithmetic (map base, last partial window) is exercised; numpy's slicing of the
    same bytes is the reference, IREE's parser reads the files back.
    """
    import iree.runtime as rt

    from irforge.formats import atomic

    monkeypatch.setattr(atomic, "COPY_CHUNK", 3 * 40)  # 3 rows of 40 bytes per window
    rows, cols, ranks = 11, 20, 4  # f16: a 40-byte stride, 10-byte slices
    matrix = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float16)
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 4100 + matrix.tobytes() + b"y" * 7)
    per = cols // ranks
    files = []
    for r in range(ranks):
        where = StridedRange(src, 4100 + r * per * 2, rows, cols * 2, per * 2)
        meta = tensor_metadata("f16", (rows, per))
        plain = matrix[:2].tobytes()  # an ordinary entry beside it, written by another thread
        files.append(
            (
                tmp_path / f"r{r}.irpa",
                [
                    OutputEntry("w", where.nbytes, where, meta),
                    OutputEntry(
                        "p", len(plain), (lambda b=plain: [b]), tensor_metadata("f16", (2, cols))
                    ),
                ],
            )
        )
    write_irpas(files)
    for r, (path, _) in enumerate(files):
        got = {e.ref.name: read_tensor(e.ref).numpy() for e in read_irpa(path)}
        np.testing.assert_array_equal(got["w"], matrix[:, r * per : (r + 1) * per])
        np.testing.assert_array_equal(got["p"], matrix[:2])
        index = rt.ParameterIndex()
        index.load(str(path))
        assert sorted(k for k, _ in index.items()) == ["p", "w"]


def test_a_failed_entry_writes_none_of_the_files(tmp_path: Path) -> None:
    def broken() -> list[bytes]:
        raise OSError(28, "No space left on device")

    ok = OutputEntry("a", 4, lambda: [b"abcd"], tensor_metadata("u8", (4,)))
    bad = OutputEntry("b", 4, broken, tensor_metadata("u8", (4,)))
    with pytest.raises(OutputError, match="No space left"):
        write_irpas([(tmp_path / "one.irpa", [ok]), (tmp_path / "two.irpa", [ok, bad])])
    assert list(tmp_path.iterdir()) == []


def test_numpy_dequantize_reference_for_q8_0(llama_gguf: tuple[Path, dict]) -> None:
    path, written = llama_gguf
    (ref,) = [t for t in read_gguf(path).tensors if t.name == "blk.0.ffn_up.weight"]
    assert ref.dtype == "q8_0"
    np.testing.assert_allclose(read_tensor(ref).numpy(), written[ref.name], atol=0.02)
