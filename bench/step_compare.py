"""Two CPU programs' entry points timed side by side (issue 37): the same calls, alternating
folders round by round, so that a machine whose speed drifts affects both alike.

Each call is `iree-benchmark-module` (median of 3) with step_profile.py's inputs: decode at
`context` cached tokens per row, prefill of `context` tokens. Prints each round's times and
the median ratio B / A per entry point (below 1: B is faster).

    .venv/bin/python bench/step_compare.py A B [--calls decode_bs1:40,prefill_bs1:256]
        [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import step_profile  # noqa: E402  (its inputs and tool paths)


def median_ms(folder: Path, call: tuple[str, int]) -> float:
    return step_profile.wall_ms(folder, *call, repetitions=3, min_time_s=0.5)


CALLS = "decode_bs1:40,decode_bs4:40,decode_bs8:40,decode_bs32:40,prefill_bs1:256,prefill_bs4:128"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--calls", default=CALLS, help="function:context, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    calls = [(f, int(c)) for f, c in (x.split(":") for x in args.calls.split(","))]
    times: dict[tuple[str, int], list[tuple[float, float]]] = {c: [] for c in calls}
    for r in range(args.rounds):
        for call in calls:
            pair = (median_ms(args.a, call), median_ms(args.b, call))
            times[call].append(pair)
            print(f"round {r}: {call[0]} at {call[1]}: A {pair[0]:.1f} ms, B {pair[1]:.1f} ms")
    print(f"\nA = {args.a}, B = {args.b}\n")
    print("| call | A ms (rounds) | B ms (rounds) | B / A (median) |")
    print("| --- | --- | --- | --- |")
    for (function, context), pairs in times.items():
        a = ", ".join(f"{x:.1f}" for x, _ in pairs)
        b = ", ".join(f"{y:.1f}" for _, y in pairs)
        ratio = statistics.median(y / x for x, y in pairs)
        print(f"| {function} ({context}) | {a} | {b} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
