"""Where a step's time goes: IREE's own per-dispatch profile of one entry point (issue 37).

Runs FOLDER's CPU program once under IREE's HAL profiling (`iree-run-module
--device_profiling_mode=host-execution`), reads it back with `iree-profile statistics`, and
prints the dispatches by total time grouped by kind (matmul, attention, elementwise, copies),
their count, the step's wall time from `iree-benchmark-module` and the weights' bytes over
this machine's copy bandwidth (torch's copy, measured in the same run): the bound a
memory-bound step cannot beat.

    .venv/bin/python bench/step_profile.py FOLDER [--function decode_bs1] [--context 40]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import device_check  # noqa: E402  (copy bandwidth)

BIN = Path(sys.executable).parent
UNITS = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}
KINDS = (  # first match wins: a dispatch's name says what its root op is
    ("matmul (mmt4d)", re.compile(r"_mmt4d_")),
    ("attention pieces", re.compile(r"batch_mmt4d|reduction_\d+xD|pack")),
    ("copies", re.compile(r"memcpy|broadcast_\d+xDx")),
    ("norms, casts, other", re.compile(r".")),
)


def inputs(folder: Path, function: str, context: int) -> list[str]:
    """iree-run-module inputs of decode_bs{N} / prefill_bs{N} at `context` cached tokens."""
    config = json.loads((folder / "config.json").read_text())
    cache = config["paged_kv_cache"]
    bs = int(function.rsplit("bs", 1)[1])
    pages = -(-(context + 1) // cache["block_seq_stride"])
    width = cache["paged_kv_block_size_elements_per_device"][0]
    dtype = {"float16": "f16", "bfloat16": "bf16", "float32": "f32"}[cache["kv_cache_dtype"]]
    tokens = 1 if function.startswith("decode") else context
    ids = f"{bs}x{pages}xi64=1"
    if function.startswith("decode"):
        args = [f"{bs}x1xi64=5", f"{bs}xi64={context + 1}", f"{bs}xi64={context}", ids]
    else:
        args = [f"{bs}x{tokens}xi64=5", f"{bs}xi64=0", f"{bs}xi64={tokens}", ids]
    return [*args, f"{1 + bs * pages}x{width}x{dtype}=0"]


def common(folder: Path, function: str, context: int) -> list[str]:
    args = [f"--module={folder / 'model.cpu.vmfb'}", f"--parameters=model={folder / 'model.irpa'}"]
    args += ["--device=local-task", f"--function={function}"]
    return args + [f"--input={x}" for x in inputs(folder, function, context)]


def profile(folder: Path, function: str, context: int) -> list[tuple[float, int, str]]:
    """(total µs, calls, dispatch name) of one call, largest first."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "step.ireeprof"
        run = [str(BIN / "iree-run-module"), *common(folder, function, context)]
        run += ["--device_profiling_mode=host-execution", f"--device_profiling_output={out}"]
        subprocess.run(run, check=True, capture_output=True)
        stats = subprocess.run(
            [str(BIN / "iree-profile"), "statistics", str(out)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    rows = []
    for m in re.finditer(r"host_execute (\S+)\s+count=(\d+) total=([\d.]+) (\w+)", stats):
        rows.append((float(m.group(3)) * UNITS[m.group(4)], int(m.group(2)), m.group(1)))
    return sorted(rows, reverse=True)


def wall_ms(
    folder: Path, function: str, context: int, repetitions: int = 5, min_time_s: float = 1.0
) -> float:
    """The call's median wall time over `repetitions` runs of iree-benchmark-module."""
    run = [str(BIN / "iree-benchmark-module"), *common(folder, function, context)]
    run += [f"--benchmark_repetitions={repetitions}", f"--benchmark_min_time={min_time_s}s"]
    out = subprocess.run(run, check=True, capture_output=True, text=True).stdout
    m = re.search(r"real_time_median\s+([\d.]+) ms", out)
    if m is None:
        raise SystemExit(f"no median in iree-benchmark-module's output:\n{out[-2000:]}")
    return float(m.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--function", default="decode_bs1")
    parser.add_argument("--context", type=int, default=40, help="cached tokens per row")
    args = parser.parse_args()
    rows = profile(args.folder, args.function, args.context)
    wall = wall_ms(args.folder, args.function, args.context)
    weights = (args.folder / "model.irpa").stat().st_size
    bandwidth, how = device_check.copy_bandwidth("local-task", "CPU")
    bound = weights / bandwidth * 1e3
    total = sum(r[0] for r in rows)
    print(
        f"{args.folder} {args.function}, {args.context} cached tokens: step {wall:.1f} ms "
        f"(iree-benchmark-module median), dispatches {sum(r[1] for r in rows)} "
        f"running {total / 1e3:.1f} ms, weights {weights / 1e6:.0f} MB over "
        f"{bandwidth / 1e9:.1f} GB/s ({how}) = {bound:.1f} ms bound, step at "
        f"{bound / wall:.0%} of it"
    )
    groups: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for us, calls, name in rows:
        kind = next(k for k, pattern in KINDS if pattern.search(name))
        groups[kind][0] += us
        groups[kind][1] += calls
    print("| kind | dispatches | ms | share of dispatch time |")
    print("| --- | --- | --- | --- |")
    for kind, (us, calls) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
        print(f"| {kind} | {int(calls)} | {us / 1e3:.2f} | {us / total:.0%} |")
    print("largest:")
    for us, calls, name in rows[:6]:
        print(f"  {us / 1e3:7.2f} ms {calls:5d}x  {name}")


if __name__ == "__main__":
    main()
