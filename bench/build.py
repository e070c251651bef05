"""Benchmark `irforge build` end to end: wall time and each step's seconds (build.json).

    python bench/build.py [--source smollm2] [--target cpu] [--bs 1,4] [--reps 1]

Every run builds into a fresh folder with --force, so nothing is reused but irforge's download
cache (the download step's seconds show a first fetch).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from irforge.stages.build_steps import RECORD_NAME

BIN = Path(sys.executable).parent


def build_once(source: str, target: str, bs: str, extra: list[str]) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        cmd = [str(BIN / "irforge"), "build", source, "-o", str(out), "-t", target]
        cmd += ["--bs", bs, "--force", "-q", *extra]
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)}: {done.stderr[-2000:]}")
        steps = json.loads((out / RECORD_NAME).read_text())["steps"]
        return wall, {name: rec.get("seconds", 0.0) for name, rec in steps.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="smollm2")
    parser.add_argument("--target", default="cpu")
    parser.add_argument("--bs", default="1,4")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("extra", nargs="*", help="more `irforge build` options (after --)")
    args = parser.parse_args()
    for rep in range(args.reps):
        wall, steps = build_once(args.source, args.target, args.bs, args.extra)
        parts = ", ".join(f"{name} {s:.1f} s" for name, s in steps.items())
        print(
            f"{args.source} -t {args.target} --bs {args.bs} (run {rep + 1}): "
            f"{wall:.1f} s wall; {parts}"
        )


if __name__ == "__main__":
    main()
