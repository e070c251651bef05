"""Tensor parallelism: shard invariants, eager parity, and TP programs on CPU devices."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from irforge.artifacts.archive import open_archive
from irforge.artifacts.manifest import ExportOptions
from irforge.cli.main import app
from irforge.formats.tensor_ref import read_bytes, read_tensor
from irforge.model import ModelOptions, PagedLlama
from irforge.model.sharded import ShardedPagedLlama, load_sharded
from irforge.model.weights import load_archive
from irforge.stages.compile import compile_folder
from irforge.stages.convert import convert
from irforge.stages.export import export
from irforge.stages.sharding import shard, split_dim, unshard

runner = CliRunner()
PROMPT = [5, 17, 3, 99, 42, 7, 250, 1, 8, 64, 33, 12, 2, 77, 190, 4, 23, 56, 9, 11]


@pytest.fixture(scope="module")
def tp4_archive(llama_tp4_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert(llama_tp4_dir, out=tmp_path_factory.mktemp("tp4") / "m.irpa").out


@pytest.mark.parametrize("tp", [2, 4])
def test_shards_concatenate_to_the_source(tp: int, tp4_archive: Path, tmp_path: Path) -> None:
    whole = open_archive(tp4_archive)
    result = shard(tp4_archive, tp=tp, out=tmp_path / "s.irpa")
    assert len(result.rank_files) == tp and result.split + result.replicated == len(whole.tensors)
    sharded = open_archive(result.out)
    for name, ref in whole.tensors.items():
        dim = split_dim(name)
        want = read_tensor(ref)
        if dim is None:
            torch.testing.assert_close(read_tensor(sharded.tensors[name]), want, rtol=0, atol=0)
            continue
        parts = [read_tensor(sharded.tensors[f"{name}.shard.{i}"]) for i in range(tp)]
        torch.testing.assert_close(torch.cat(parts, dim=dim), want, rtol=0, atol=0)
    joined = unshard(result.out, out=tmp_path / "joined.irpa")
    back = open_archive(joined)
    assert set(back.tensors) == set(whole.tensors)
    for name, ref in whole.tensors.items():
        assert bytes(read_bytes(back.tensors[name])) == bytes(read_bytes(ref))


def test_shard_straight_from_hf_folder_with_cast(llama_tp4_dir: Path, tmp_path: Path) -> None:
    """Convert and shard in one pass (no unsharded file), casting on the way."""
    result = runner.invoke(
        app,
        [
            "shard",
            str(llama_tp4_dir),
            "--tp",
            "2",
            "--dtype",
            "bf16",
            "-o",
            str(tmp_path / "s.irpa"),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.glob("*.irpa")) == [
        "s.irpa",
        "s.rank0.irpa",
        "s.rank1.irpa",
    ]
    _, tensors = load_archive(convert(llama_tp4_dir, out=tmp_path / "u.irpa").out)
    sharded = open_archive(tmp_path / "s.irpa")
    down = read_tensor(sharded.tensors["blk.1.ffn_down.weight.shard.1"])
    want = tensors["blk.1.ffn_down.weight"].to(torch.bfloat16).chunk(2, dim=1)[1]
    torch.testing.assert_close(down, want, rtol=0, atol=0)


def test_bad_tp_missing_and_foreign_rank_files(tp4_archive: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["shard", str(tp4_archive), "--tp", "3", "-o", str(tmp_path / "x.irpa")]
    )
    assert result.exit_code == 2
    assert "tensor-parallel size 3 must divide attention_head_count_kv=4" in result.stderr
    result = runner.invoke(
        app, ["shard", str(tp4_archive), "--tp", "16", "-o", str(tmp_path / "x.irpa")]
    )
    assert result.exit_code == 2 and "between 1 and 8" in result.stderr
    assert not list(tmp_path.glob("x*"))
    a = shard(tp4_archive, tp=2, out=tmp_path / "a" / "m.irpa").out
    b = shard(tp4_archive, tp=2, out=tmp_path / "b" / "m.irpa").out
    shutil.copy(b.with_name("m.rank1.irpa"), a.with_name("m.rank1.irpa"))  # a foreign rank
    result = runner.invoke(app, ["inspect", str(a)])
    assert result.exit_code == 2 and "does not belong to this sharding" in result.stderr
    b.with_name("m.rank0.irpa").unlink()
    result = runner.invoke(app, ["inspect", str(b)])
    assert result.exit_code == 2 and "rank file m.rank0.irpa of 2 is missing" in result.stderr


@pytest.mark.parametrize("tp", [2, 4])
def test_eager_sharded_model_matches_unsharded(tp: int, tp4_archive: Path) -> None:
    config, tensors = load_archive(tp4_archive)
    options = ModelOptions(block_seq_stride=16)
    reference = PagedLlama.from_state_dict(config, tensors, options=options)
    with torch.device("meta"):
        model = ShardedPagedLlama(config, options, tp=tp)
    load_sharded(model, tensors)
    tokens = torch.tensor([PROMPT + [0] * 12, PROMPT[:7] + [0] * 25])
    seq_lens, ids = torch.tensor([20, 7]), torch.tensor([[1, 2], [3, 4]])
    cache = reference.allocate_cache(8)
    caches = [r.kv_cache.allocate(8) for r in model.ranks]
    start = torch.zeros(2, dtype=torch.int64)
    want = reference.prefill(tokens, start, seq_lens, ids, cache)
    torch.testing.assert_close(model.prefill(tokens, start, seq_lens, ids, caches), want)
    step = torch.tensor([[5], [6]])
    want = reference.decode(step, seq_lens + 1, seq_lens, ids, cache)
    torch.testing.assert_close(model.decode(step, seq_lens + 1, seq_lens, ids, caches), want)


@pytest.mark.iree
# TP=4 only: TP=2's program is the same code with fewer devices (its eager model is tested
# above, and quantized TP=2 in test_quantize.py), and each compile is 40 s of CI
@pytest.mark.parametrize("tp", [4])
def test_tp_program_on_cpu_devices_matches_transformers(
    tp: int, tp4_archive: Path, llama_tp4_dir: Path, tmp_path: Path
) -> None:
    from test_export_run import assert_close_rel, dump_module, reference, run_cli

    sharded = shard(tp4_archive, tp=tp, out=tmp_path / "src" / "m.irpa").out
    art = tmp_path / "art"
    export(
        sharded,
        out_dir=art,
        options=ExportOptions(
            block_seq_stride=16,
            prefill_batch_sizes=(1,),
            decode_batch_sizes=(1,),
            speculative_tokens=3,
        ),
    )
    compile_folder(art, target="cpu")
    doc = run_cli(art, PROMPT, 9, tmp_path / "logits.npy")
    want_tokens, want_logits = reference(llama_tp4_dir, PROMPT, 9)  # prefill + 8 decode steps
    assert_close_rel(np.load(tmp_path / "logits.npy"), want_logits)
    assert doc["tokens"] == want_tokens
    # speculative decoding's verify_bs1 on the 4 devices: the greedy continuation's logits
    from irforge.runtime.batching import prefill_arrays, verify_arrays
    from irforge.runtime.session import Session

    session = Session(art, page_count=8)
    try:
        session.prefill(*prefill_arrays([PROMPT], [[1, 2]], 1, 16))
        # generated tokens 0-3 at their positions; position j predicts generated token j + 1
        step = want_tokens[:4]
        got = session.verify(*verify_arrays([step], [len(PROMPT)], [[1, 2]], 1, 4, 16))
    finally:
        session.close()
    assert_close_rel(got[0], want_logits[1:5])
    if tp == 2:  # the same program also builds for two MI300 devices
        out = compile_folder(art, target="gfx942", out=tmp_path / "tp2.gfx942.vmfb").vmfb
        assert "rocm-hsaco-fb" in dump_module(out)
        mlir = (art / "model.mlir").read_text()
        assert '"model"::"blk.0.attn_q.weight.shard.1"' in mlir
        assert "#hal.device.promise<@__device_1>" in mlir


def test_failed_shard_leaves_no_files(
    tp4_archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    real, renamed = os.replace, []

    def fail_on_main(src: str, dst: str) -> None:
        if ".rank" not in Path(dst).name:
            raise KeyboardInterrupt  # interrupted after every rank file was renamed into place
        real(src, dst)
        renamed.append(dst)

    monkeypatch.setattr(os, "replace", fail_on_main)
    with pytest.raises(KeyboardInterrupt):
        shard(tp4_archive, tp=2, out=tmp_path / "out" / "s.irpa")
    assert len(renamed) == 2  # both rank files were in place: the main file is renamed last
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("when", ["after the first new rank file", "after the switch"])
def test_an_interrupted_reshard_leaves_one_whole_sharding(
    when: str, llama_tp4_dir: Path, tmp_path: Path
) -> None:
    """Issue 14, item 3: SIGKILL in the middle of a re-shard leaves the old set or the new."""
    import signal
    import subprocess
    import sys

    from irforge.artifacts.archive import open_archive

    out = tmp_path / "s.irpa"
    first = runner.invoke(app, ["shard", str(llama_tp4_dir), "--tp", "2", "-o", str(out), "-q"])
    assert first.exit_code == 0, first.output
    old = open_archive(out)
    hook = (  # SIGKILL this process at the named point of its shard run
        "import os, signal, sys\n"
        "import importlib\n"
        "m = importlib.import_module('irforge.stages.sharding.shard')\n"
        f"when = {when!r}\n"
        "real_replace, real_link = os.replace, m.link_or_copy\n"
        "def replace(src, dst):\n"
        "    real_replace(src, dst)\n"
        "    if when.startswith('after the first') and '.rank0.' in str(dst):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "def link(src, dst):\n"
        "    real_link(src, dst)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "os.replace, m.link_or_copy = replace, link\n"
        "from irforge.cli.main import main\n"
        f"sys.argv = ['irforge', 'shard', {str(llama_tp4_dir)!r}, '--tp', '2', '-o', "
        f"{str(out)!r}, '-q']\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", hook], capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    now = open_archive(out)  # whole: every rank file belongs to the sharding NAME.irpa names
    assert now.metadata is not None and old.metadata is not None
    if when == "after the switch":
        assert now.metadata.shard_id != old.metadata.shard_id
    else:
        assert now.metadata.shard_id == old.metadata.shard_id
    assert set(now.tensors) == set(old.tensors)


def test_eager_sharded_verify_matches_unsharded(tp4_archive: Path) -> None:
    config, tensors = load_archive(tp4_archive)
    options = ModelOptions(block_seq_stride=16)
    reference = PagedLlama.from_state_dict(config, tensors, options=options)
    with torch.device("meta"):
        model = ShardedPagedLlama(config, options, tp=2)
    load_sharded(model, tensors)
    tokens = torch.tensor([PROMPT[:16], PROMPT[:16]])
    ids, start = torch.tensor([[1, 2], [3, 4]]), torch.zeros(2, dtype=torch.int64)
    cache = reference.allocate_cache(8)
    caches = [r.kv_cache.allocate(8) for r in model.ranks]
    lens = torch.tensor([14, 16])
    reference.prefill(tokens, start, lens, ids, cache)
    model.prefill(tokens, start, lens, ids, caches)
    step, at = torch.tensor([[5, 6, 7], [8, 9, 10]]), torch.tensor([14, 16])
    want = reference.verify(step, at, ids, cache)
    torch.testing.assert_close(model.verify(step, at, ids, caches), want)
