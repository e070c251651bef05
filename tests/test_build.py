"""irforge build: the whole pipeline on the built-in tiny model, and its step caching."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from irforge.cli.main import app
from irforge.stages.build import build

pytestmark = pytest.mark.iree
runner = CliRunner()
# no verify entry points: these tests are about the build's steps, and each compile is CI time
# (test_smollm2.py builds with the default, verify included, and speculates with it)
ARGS = {"targets": ["cpu"], "bs": (1,), "block_seq_stride": 16, "speculative_tokens": 0}


def statuses(result) -> dict[str, str]:  # noqa: ANN001
    return {s.name: s.status for s in result.steps}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("build") / "tiny"
    result = build("tiny", out_dir=out, **ARGS)
    assert set(statuses(result).values()) == {"ran"}
    return out


def test_build_tiny_runs_and_records(built: Path) -> None:
    names = {p.name for p in built.iterdir()}
    assert {
        "model.irpa",
        "model.mlir",
        "model.cpu.vmfb",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "manifest.json",
    } <= names
    record = json.loads((built / "manifest.json").read_text())["build"]["steps"]
    assert set(record) == {"create tiny", "convert", "export", "compile cpu", "verify cpu"}
    # the build checked its program against the eager model (verify.py); f32 here: exact
    report = record["verify cpu"]["report"]
    assert report["greedy_agree"] == report["positions"] == 16 and report["mean_kl"] < 1e-6
    irpa = record["convert"]["outputs"]["model.irpa"]  # paths inside OUT are relative to it
    assert len(irpa["sha256"]) == 64 and irpa["size"] == (built / "model.irpa").stat().st_size
    assert record["export"]["command"].startswith("irforge export ")
    result = runner.invoke(
        app, ["run", str(built), "--prompt", "hello world", "--max-tokens", "4", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["tokens"]) >= 1


def test_second_build_skips_every_step(built: Path) -> None:
    result = build("tiny", out_dir=built, **ARGS)
    assert set(statuses(result).values()) == {"skipped"}


def test_corrupt_intermediate_is_rebuilt(built: Path) -> None:
    irpa = built / "model.irpa"
    data = bytearray(irpa.read_bytes())
    data[-100] ^= 0xFF  # same size, different bytes
    irpa.write_bytes(bytes(data))
    result = build("tiny", out_dir=built, **ARGS)
    # the rebuilt archive is byte-identical, so the steps after it stay up to date
    assert statuses(result) == {
        "create tiny": "skipped",
        "convert": "ran",
        "export": "skipped",
        "compile cpu": "skipped",
        "verify cpu": "skipped",
    }
    assert next(s for s in result.steps if s.name == "convert").reason.startswith("an output")


def test_steps_made_by_other_code_are_not_up_to_date(built: Path) -> None:
    """An irforge or IREE upgrade changes what export and compile make: a folder built by
    another version rebuilds (here: the export step's record claims other code)."""
    path = built / "build.json"
    record = json.loads(path.read_text())
    assert len(record["steps"]["export"]["code"]) == 16
    record["steps"]["export"]["code"] = "0" * 16
    path.write_text(json.dumps(record))
    result = build("tiny", out_dir=built, **{**ARGS, "dry_run": True})
    planned = {s.name: (s.status, s.reason) for s in result.steps}
    assert planned["export"] == ("would run", "made by another irforge or IREE")
    assert planned["convert"] == ("up to date", "")
    result = build("tiny", out_dir=built, **ARGS)  # the same program again: nothing after it
    assert statuses(result)["export"] == "ran"
    assert statuses(result)["compile cpu"] == "skipped"


def test_changed_argument_reruns_only_later_steps(built: Path) -> None:
    result = build("tiny", out_dir=built, **{**ARGS, "bs": (1, 2)})
    assert statuses(result) == {
        "create tiny": "skipped",
        "convert": "skipped",
        "export": "ran",
        "compile cpu": "ran",
        "verify cpu": "ran",
    }
    config = json.loads((built / "config.json").read_text())
    assert config["prefill_batch_sizes"] == [1, 2]
    manifest = json.loads((built / "manifest.json").read_text())
    assert [c["target"] for c in manifest["compiled"]] == ["cpu"]


def test_dry_run_lists_steps_and_commands(tmp_path: Path) -> None:
    out = tmp_path / "planned"
    result = runner.invoke(
        app,
        [
            "build",
            "tiny",
            "-o",
            str(out),
            "--target",
            "cpu",
            "--target",
            "mi300x",
            "--tp",
            "2",
            "--dry-run",
        ],
    )
    assert result.exit_code == 0, result.output
    for word in ("create tiny", "shard", "export", "compile cpu", "compile gfx942", "would run"):
        assert word in result.stdout
    assert f"irforge shard {out}/source --tp 2 -o {out}/model.irpa" in result.stdout
    assert "--f32-rows" not in result.stdout  # a GPU shares the export: its rows as they are
    assert not out.exists()


def test_a_cpu_only_build_exports_f32_rows_unless_told_not_to(tmp_path: Path) -> None:
    result = build("tiny", out_dir=tmp_path / "cpu", dry_run=True, **ARGS)
    (export,) = [c for c in result.commands if c.startswith("irforge export")]
    assert "--f32-rows" in export
    args = ["build", "tiny", "-o", str(tmp_path / "no"), "--no-f32-rows", "--dry-run"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "irforge export" in result.stdout and "--f32-rows" not in result.stdout


@pytest.mark.parametrize(
    ("options", "prefill", "decode"),
    [
        ([], "1,4", "1,4,8,32"),  # decode serves 32 sequences a step by default
        (["--bs", "2"], "2", "2"),
        (["--bs", "2", "--bs-decode", "16,1"], "2", "1,16"),
        (["--bs-prefill", "8"], "8", "1,4,8,32"),
    ],
)
def test_build_batch_size_options(
    tmp_path: Path, options: list[str], prefill: str, decode: str
) -> None:
    args = ["build", "tiny", "-o", str(tmp_path / "x"), "--dry-run", *options]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"--bs-prefill {prefill} --bs-decode {decode} " in result.stdout.replace("\n", " ")


def test_a_copied_or_respelled_out_is_still_up_to_date(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build("tiny", out_dir=built, **ARGS)  # back to ARGS, whatever the tests before changed
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    assert set(statuses(build("tiny", out_dir=copy, **ARGS)).values()) == {"skipped"}
    monkeypatch.chdir(tmp_path)
    assert set(statuses(build("tiny", out_dir=Path("copy"), **ARGS)).values()) == {"skipped"}


def test_an_interrupted_build_keeps_its_finished_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import irforge.stages.build as build_module

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    out = tmp_path / "tiny"
    monkeypatch.setattr(build_module, "compile_folder", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build("tiny", out_dir=out, **ARGS)
    monkeypatch.undo()
    assert statuses(build("tiny", out_dir=out, **ARGS)) == {
        "create tiny": "skipped",
        "convert": "skipped",
        "export": "skipped",
        "compile cpu": "ran",
        "verify cpu": "ran",
    }


def test_a_wrong_program_fails_the_build(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check that would have stopped issue 34's f16 build: a program over the KL limit
    fails `irforge build` with one line, and --no-verify keeps it."""
    import irforge.stages.verify as verify_module

    wrong = verify_module.Verification(positions=16, greedy_agree=2, mean_kl=3.2, max_kl=9.0)
    monkeypatch.setattr(verify_module, "verify_folder", lambda folder: wrong)
    args = ["build", "tiny", "-o", str(built), "--target", "cpu", "--bs", "1"]
    args += ["--speculative-tokens", "0"]
    result = runner.invoke(app, [*args, "--block-seq-stride", "16", "--force"])
    assert result.exit_code != 0
    assert "the compiled cpu program is wrong: greedy 2/16" in result.stderr
    kept = runner.invoke(app, [*args, "--block-seq-stride", "16", "--no-verify"])
    assert kept.exit_code == 0, kept.output


def test_every_equivalent_command_runs_on_its_own(tmp_path: Path) -> None:
    """The dry run's commands are real ones: the first (tiny's source) is run here."""
    out = tmp_path / "planned"
    result = build("tiny", out_dir=out, dry_run=True, **ARGS)
    first = shlex.split(result.commands[0])
    assert first[:3] == ["python", "-m", "irforge.stages.tiny"]
    subprocess.run([sys.executable, *first[1:]], check=True, capture_output=True)
    assert (out / "source" / "config.json").is_file()
    for cmd in result.commands[1:]:
        assert shlex.split(cmd)[0] == "irforge"
        name = shlex.split(cmd)[1]
        help_run = runner.invoke(app, [name, "--help"])
        assert help_run.exit_code == 0, (cmd, help_run.output)


def test_an_identical_reexport_keeps_its_programs_and_a_changed_one_drops_them(
    built: Path,
) -> None:
    """Compiled programs stay listed only while they match the MLIR (no stale VMFB is run)."""
    from irforge.artifacts.manifest import Manifest
    from irforge.stages.export import export

    build("tiny", out_dir=built, **ARGS)
    before = Manifest.load(built)
    assert [c.target for c in before.compiled] == ["cpu"] and before.compiled[0].mlir_sha256
    export(built / "model.irpa", out_dir=built, options=before.options)
    assert Manifest.load(built).compiled == before.compiled
    export(built / "model.irpa", out_dir=built, options=before.options.replace(top_k=1))
    assert Manifest.load(built).compiled == ()


def test_a_second_writer_into_one_out_is_refused(tmp_path: Path) -> None:
    """Two runs into one OUT would mix their files (issue 14, item 4); a SIGKILLed holder's
    lock goes with it."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from irforge.formats.locks import output_lock\n"
            f"with output_lock(Path({str(out)!r})):\n"
            "    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        result = runner.invoke(app, ["export", "--preset", "tiny", "-o", str(out), "-q"])
        assert result.exit_code == 2, result.output
        assert f"another irforge (pid {holder.pid}) is writing it" in result.stderr
        assert not (out / "model.mlir").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    result = runner.invoke(app, ["export", "--preset", "tiny", "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert not (out / ".irforge.lock").exists()
    missing = tmp_path / "never-made"  # compile updates a folder: a missing one is not created
    result = runner.invoke(app, ["compile", str(missing), "--target", "tpu9"])
    assert result.exit_code == 2 and not missing.exists()


def test_a_killed_run_leaves_nothing_behind(llama_dir: Path, tmp_path: Path) -> None:
    """Issue 14, item 15: the next run removes a killed writer's temporaries, and a killed
    compile takes its iree-compile child along."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from irforge.stages.convert import convert

    out = tmp_path / "m.irpa"
    stale = tmp_path / ".m.irpa.k1ll3d00.tmp"
    stale.write_bytes(b"\0" * 4096)  # what a SIGKILLed convert leaves
    convert(llama_dir, out=out)
    assert not stale.exists() and out.is_file()

    art = tmp_path / "art"
    many = ["--bs-prefill", "1,2,4", "--bs-decode", "1,2,4"]  # a gfx942 compile of many seconds
    assert runner.invoke(app, ["export", str(out), "-o", str(art), *many, "-q"]).exit_code == 0
    parent = subprocess.Popen(
        [sys.executable, "-m", "irforge", "compile", str(art), "--target", "gfx942", "-q"]
    )

    def compilers() -> list[int]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"iree-compile" in cmd and str(art).encode() in cmd:
                found.append(int(pid))
        return found

    deadline = time.monotonic() + 60
    while not compilers() and parent.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    children = compilers()
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    assert children, "iree-compile never started"
    deadline = time.monotonic() + 3  # well before it could have finished on its own
    while compilers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not compilers()


def test_a_verify_skipped_for_memory_still_writes_its_record(
    built: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step's declared output exists either way (a build whose check was skipped for want
    of free memory failed in CI on the missing file)."""
    import irforge.stages.verify as verify_module

    monkeypatch.setattr(verify_module, "fits_in_memory", lambda folder: "not enough memory")
    figures = verify_module.verify_step(built)
    record = json.loads((built / verify_module.VERIFY_NAME).read_text())
    assert record == figures == {"summary": "not checked: not enough memory"}
    assert verify_module._available_bytes() > 0
