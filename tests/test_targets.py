"""Every advertised compile target compiles, with the executable format IREE gives that GPU
family; run on a device this machine lacks fails in one line; the cache lives on the device."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from irforge.cli.main import app
from irforge.facts.targets import CPU_DATA_TILING
from irforge.stages.compile import TARGETS, compile_folder

pytestmark = pytest.mark.iree
runner = CliRunner()
README = Path(__file__).parents[1] / "README.md"

# IREE's executable format per HAL device kind, as iree-dump-module prints it.
FORMATS = {"local": re.compile(r"embedded-elf-x86_64|embedded-elf-arm_64"), "hip": "rocm-hsaco-fb"}
FORMATS["cuda"] = "cuda-nvptx-fb"


@pytest.fixture(scope="module")
def compiled(gguf_artifacts: Path, tmp_path_factory: pytest.TempPathFactory):
    """A copy of the GGUF model's folder and a function that compiles it for a target into
    the folder (once per target: the driver tests reuse the GPU programs)."""
    folder = tmp_path_factory.mktemp("targets") / "art"
    shutil.copytree(gguf_artifacts, folder)
    done: dict[str, Path] = {}

    def compile_for(name: str) -> Path:
        if name not in done:
            done[name] = compile_folder(folder, target=name).vmfb
        return done[name]

    return folder, compile_for


def test_cpu_data_tiling_only_for_the_releases_it_was_verified_on() -> None:
    """IREE 3.13's data tiling is the CPU preset's; 3.9 (shortfin's compiler) goes without."""
    tiling = set(CPU_DATA_TILING)
    assert tiling <= set(TARGETS["cpu"].flags(1, (3, 13)))
    assert not tiling & set(TARGETS["cpu"].flags(1, (3, 9)))
    assert not tiling & set(TARGETS["gfx942"].flags(1, (3, 13)))


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_target_compiles_with_its_executable_format(name: str, compiled) -> None:
    from test_export_run import dump_module

    target = TARGETS[name]
    out = compiled[1](name)
    listing = dump_module(out)
    want = FORMATS[target.device]
    found = want.search(listing) if isinstance(want, re.Pattern) else want in listing
    assert found, f"{name}: no {want} executable in {out}"


def test_readme_advertises_exactly_the_targets() -> None:
    """The README's compile line and the target table stay one fact."""
    text = README.read_text()
    sentence = text[text.index("Targets: `cpu`") :].split(". ")[0]
    names = re.sub(r"\([^)]*\)", "", sentence)  # drop the aliases in parentheses
    advertised = set(re.findall(r"`([a-z0-9_]+)`", names))
    assert advertised == set(TARGETS)


def _driver_starts(driver: str) -> bool:
    import iree.runtime as rt

    try:
        rt.get_driver(driver)
    except (RuntimeError, ValueError):
        return False
    return True


@pytest.mark.parametrize("device", ["cuda", "hip"])
def test_gpu_device_without_its_driver_is_one_line(device: str, compiled) -> None:
    if _driver_starts(device):
        pytest.skip(f"this machine has a {device} driver")
    # A program for the device must exist, so the error is about the device, not the folder.
    folder, compile_for = compiled
    compile_for({"cuda": "sm_80", "hip": "gfx942"}[device])
    for args in (
        ["run", str(folder), "--prompt-ids", "1,2"],
        ["serve", str(folder), "--port", "0"],
    ):
        result = runner.invoke(app, [*args, "--device", device])
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert f"the {device} driver cannot start on this machine" in lines[0]


def test_unknown_device_and_bad_device_ids_are_refused(llama_artifacts: Path) -> None:
    result = runner.invoke(
        app, ["run", str(llama_artifacts), "--prompt-ids", "1", "--device", "tpu"]
    )
    assert result.exit_code == 2 and "unknown device 'tpu'" in result.stderr
    result = runner.invoke(
        app, ["run", str(llama_artifacts), "--prompt-ids", "1", "--device-ids", "0,1"]
    )
    assert result.exit_code == 2 and "spans 1 device(s); got 2 device ids" in result.stderr


def test_cache_is_zeroed_on_the_device_and_updated_in_place(llama_artifacts: Path) -> None:
    """The slab is a device buffer (no host copy kept), zero at start, written by prefill."""
    import iree.runtime as rt

    from irforge.runtime import Session

    session = Session(llama_artifacts, page_count=8)
    (cache,) = session.caches
    assert isinstance(cache, rt.DeviceArray) and cache.shape[0] == 8
    assert not np.any(cache.to_host())
    stride = session.options.block_seq_stride
    tokens = np.zeros((1, stride), np.int64)
    tokens[0, :5] = [1, 5, 9, 20, 7]
    session.prefill(tokens, np.array([0]), np.array([5]), np.array([[3]]))
    after = session.caches[0].to_host()
    assert np.any(after[3]) and not np.any(np.delete(after, 3, axis=0))


def test_bf16_kv_cache_runs_and_matches_transformers(
    llama_artifacts: Path, llama_dir: Path, tmp_path: Path
) -> None:
    """A bf16 cache, allocated on the device, serves an f32 model within bf16's rounding."""
    from test_export_run import PROMPT, assert_close_rel, reference, run_cli

    from irforge.artifacts.manifest import ExportOptions
    from irforge.stages.export import export

    archive = llama_artifacts.parent / "src" / "model.irpa"
    art = tmp_path / "art"
    export(archive, out_dir=art, options=ExportOptions(block_seq_stride=16, kv_cache_dtype="bf16"))
    compile_folder(art, target="cpu")
    want_tokens, want_logits = reference(llama_dir, PROMPT, 8)
    doc = run_cli(art, PROMPT, 8, tmp_path / "logits.npy")
    assert_close_rel(np.load(tmp_path / "logits.npy"), want_logits, rel=2e-2)
    assert sum(a == b for a, b in zip(doc["tokens"], want_tokens, strict=True)) >= 6


def test_run_refuses_a_vmfb_of_another_iree_release(llama_artifacts: Path, tmp_path: Path) -> None:
    """Each IREE runtime loads only its own release's VMFBs: run says which it needs, in a line."""
    from irforge.artifacts.manifest import Manifest

    art = tmp_path / "art"
    art.mkdir()
    for f in llama_artifacts.iterdir():
        if f.is_file() and f.name != "manifest.json":
            (art / f.name).symlink_to(f)
    manifest = Manifest.load(llama_artifacts)
    old = tuple(dataclasses.replace(c, compiler="3.9") for c in manifest.compiled)
    manifest.replace(compiled=old).save(art)
    result = runner.invoke(app, ["run", str(art), "--prompt-ids", "1,2"])
    ours = ".".join(version("iree-base-runtime").split(".")[:2])
    assert result.exit_code == 2 and f"by IREE {ours}, the runtime installed" in result.stderr
    assert "IREE 3.9)" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_iree_compile_option_checks_the_binary(llama_artifacts: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-iree-compile"
    result = runner.invoke(app, ["compile", str(llama_artifacts), "--iree-compile", str(missing)])
    assert result.exit_code == 2 and "not an executable file" in result.stderr
    fake = tmp_path / "fake-compile"
    fake.write_text("#!/bin/sh\necho hello\n")
    fake.chmod(0o755)
    result = runner.invoke(app, ["compile", str(llama_artifacts), "--iree-compile", str(fake)])
    assert result.exit_code == 2 and "does not print an IREE compiler version" in result.stderr
    assert not list(llama_artifacts.glob("*.iree*.vmfb.tmp*"))


def test_default_cache_takes_a_share_of_free_gpu_memory() -> None:
    """On a GPU the cache takes CACHE_SHARE of the least free device; where the driver cannot
    say (this machine: no NVML, no HIP), the export's page count stays."""
    from irforge.runtime.device_memory import CACHE_SHARE, default_pages, free_bytes

    gib = 2**30
    assert default_pages([80 * gib, 60 * gib], 2**21) == int(CACHE_SHARE * 60 * gib) // 2**21
    assert default_pages([gib, None], 2**21) is None
    assert default_pages([100], 2**21) == 2  # never below the scratch page and one more
    assert free_bytes("local-task", 0) is None
    for driver in ("cuda", "hip"):
        got = free_bytes(driver, 0)
        assert got is None or got > 0  # None here; a number on a machine with the GPU


def test_opening_a_device_fixes_the_futex_hash() -> None:
    """IREE's io_uring futex waits lose wake-ups when the process's private futex hash is
    installed or resized under them (runtime/devices.py): once a device is open, the hash does
    not move again, however many threads start after it. The probe starts from a hash of 4
    slots (the kernel's own is at least 16, and on 2 CPUs never grows) so that the setting
    shows on any machine."""
    probe = (
        "import ctypes, os, threading, time\n"
        "libc = ctypes.CDLL(None)\n"
        "slots = lambda: libc.prctl(78, 2, 0, 0, 0)  # PR_FUTEX_HASH, GET_SLOTS\n"
        "libc.prctl(78, 1, 4, 0, 0)  # SET_SLOTS\n"
        "from irforge.runtime.devices import open_devices\n"
        "open_devices('cpu', None, 1)\n"
        "opened = slots()\n"
        "many = [threading.Thread(target=time.sleep, args=(0.5,)) for _ in range(64)]\n"
        "[t.start() for t in many]\n"
        "print(opened, slots(), os.cpu_count())\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    opened, later, cpus = map(int, out.stdout.split())
    if opened < 0:
        pytest.skip("this kernel has no per-process futex hashes (PR_FUTEX_HASH)")
    # the kernel's sizing for the CPUs, never left for the global hash
    assert opened >= max(16, 4 * cpus) and later == opened
