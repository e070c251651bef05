"""bench/device_check.py must work the first time it meets a GPU: its help, its plans, and both
halves end to end on the CPU (a real-vocabulary program, the tiny model against transformers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "bench" / "device_check.py"


def check(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def test_help_and_dry_runs_explain_the_plan() -> None:
    assert "prepare" in check("--help").stdout
    prepare = check("prepare", "--dry-run", "--target", "sm_90").stdout
    assert "compile sm_90" in prepare and "iree-base-runtime wheel" in prepare
    run = check("run", "--dry-run", "--device", "cuda").stdout
    assert "decode batch [1, 4, 8, 32]" in run and "device_check.json" in run


def test_bad_arguments_are_one_usage_line() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "run", "--decode-batches", "1,x"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "expected a comma list of integers" in done.stderr


@pytest.mark.iree
def test_prepare_then_run_on_the_cpu(tmp_path: Path) -> None:
    common = ["--shape", "small", "--prefill-batches", "1", "--decode-batches", "1,4"]
    common += ["--prompt", "40", "--context", "40", "--work", str(tmp_path / "work")]
    common += ["--wheels", str(tmp_path / "wheels")]
    check("prepare", "--target", "cpu", "--no-wheels", *common)
    out = tmp_path / "out"
    check("run", "--device", "local-task", "--repeat", "2", "--out", str(out), *common)
    report = json.loads((out / "device_check.json").read_text())
    assert report["errors"] == []
    numerics = report["numerics"]
    assert numerics["ok"] and numerics["greedy_equal"] == numerics["greedy_total"] == 16
    assert numerics["first_step_rel_err"] < 1e-4  # f32 on the CPU: float rounding only
    scale = report["scale"]
    assert [p["batch"] for p in scale["prefill"]] == [1]
    assert [d["batch"] for d in scale["decode"]] == [1, 4]
    assert all(d["ms"] > 0 and d["bandwidth_fraction"] > 0 for d in scale["decode"])
    assert "| decode | 4 |" in (out / "device_check.md").read_text()
