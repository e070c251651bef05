"""Benchmark `irforge export --preset` (no weights anywhere) for the seed models' shapes.

Prints wall time, peak RSS and MLIR size per preset, next to the bytes of weights the same
model would need, to show that export memory does not grow with the model:

    python bench/export.py [--presets llama-3.1-8b,llama-3.1-70b,llama-3.1-405b] [--tp 1]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from irforge.facts.presets import get_preset
from irforge.facts.tensor_kinds import expected_shapes

BIN = Path(sys.executable).parent


def weight_bytes(preset: str) -> int:
    config = get_preset(preset)
    itemsize = {"f32": 4, "f16": 2, "bf16": 2}[config.dtype]
    total = 0
    for shape in expected_shapes(config).values():
        n = 1
        for d in shape:
            n *= d
        total += n * itemsize
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="llama-3.1-8b,llama-3.1-70b,llama-3.1-405b")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--bs", default="4", help="batch sizes for prefill and decode")
    args = parser.parse_args()
    rows = []
    for preset in args.presets.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [
                str(BIN / "irforge"),
                "export",
                "--preset",
                preset,
                "-o",
                tmp,
                "-q",
                "--tp",
                str(args.tp),
                "--bs-prefill",
                args.bs,
                "--bs-decode",
                args.bs,
            ]
            done = subprocess.run(
                ["/usr/bin/time", "-f", "%e %M", *cmd], capture_output=True, text=True
            )
            if done.returncode != 0:
                raise SystemExit(f"{preset}: {done.stderr[-2000:]}")
            wall, rss_kb = done.stderr.strip().splitlines()[-1].split()
            mlir = (Path(tmp) / "model.mlir").stat().st_size
        rows.append((preset, float(wall), int(rss_kb) / 1024, mlir / 2**20, weight_bytes(preset)))
        print(f"{preset}: {wall} s, {int(rss_kb) / 1024:.0f} MiB", file=sys.stderr, flush=True)
    print(f"TP={args.tp}, batch sizes {args.bs}; weights are not read (shape-only export)")
    print(
        f"{'preset':<22} {'wall s':>7} {'peak RSS':>9} {'MLIR':>8} {'weights':>9} "
        f"{'RSS/weights':>11}"
    )
    for preset, wall, rss, mlir, weights in rows:
        print(
            f"{preset:<22} {wall:7.1f} {rss:8.0f}M {mlir:7.1f}M {weights / 2**30:8.1f}G "
            f"{rss * 2**20 / weights:11.4f}"
        )


if __name__ == "__main__":
    main()
