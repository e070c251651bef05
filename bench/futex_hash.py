"""What the futex hash costs a decode step (runtime/devices.py).

`open_devices` gives the process a private futex hash of its own size before IREE starts
(`fix_futex_hash`), against a lost-wake-up hang of IREE's io_uring futex waits when the
kernel's hash moves. IREE's CPU workers sleep and wake on futexes every dispatch, so this
times decode_bs{N} of a built folder with: `fixed` (open_devices as it is), `kernel` (the fix
left out: the kernel's own private hash, resized as threads start) and `global` (the kernel's
global hash, PR_FUTEX_HASH slots 0, the other hash that never moves). Each figure is its own
process (a process cannot leave the global hash); kinds alternate for --rounds rounds of
--steps calls each. It prints each kind's median and its median ratio to `kernel` over the
paired rounds.

    .venv/bin/python bench/futex_hash.py OUT [--bs 1] [--rounds 6] [--steps 30]
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import sys
import time
from pathlib import Path

KINDS = ("fixed", "kernel", "global")
CONTEXT = 40  # cached tokens a row, as step_profile.py


def child(args: argparse.Namespace) -> None:
    """One process's median decode step, in seconds, on stdout."""
    from irforge.runtime import devices
    from irforge.runtime.batching import blocks, decode_arrays
    from irforge.runtime.devices import FUTEX_GET_SLOTS, FUTEX_SET_SLOTS, PR_FUTEX_HASH
    from irforge.runtime.session import Session

    libc = ctypes.CDLL(None)
    if args.child != "fixed":
        devices.fix_futex_hash = lambda: None
    if args.child == "global" and libc.prctl(PR_FUTEX_HASH, FUTEX_SET_SLOTS, 0, 0, 0) != 0:
        sys.exit("this kernel does not take PR_FUTEX_HASH")
    session = Session(args.folder)
    slots = libc.prctl(PR_FUTEX_HASH, FUTEX_GET_SLOTS, 0, 0, 0)
    if (slots == 0) != (args.child == "global"):
        sys.exit(f"{args.child}: the process's futex hash has {slots} slots")
    stride = session.options.block_seq_stride
    per_row = blocks(CONTEXT + 1, stride)
    pages = [list(range(1 + i * per_row, 1 + (i + 1) * per_row)) for i in range(args.bs)]
    tokens, seq_lens, starts, block_ids = decode_arrays(
        [5] * args.bs, [CONTEXT] * args.bs, pages, args.bs, stride
    )

    def steps() -> float:
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            session.decode(tokens, seq_lens, starts, block_ids)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    steps()  # warm
    print(steps())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--bs", type=int, default=1)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    figures: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for _ in range(args.rounds):
        for kind in KINDS:
            cmd = [sys.executable, __file__, str(args.folder), "--bs", str(args.bs),
                   "--steps", str(args.steps), "--child", kind]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            figures[kind].append(float(out.split()[-1]))
    for kind, xs in figures.items():
        print(f"{kind:8s} decode_bs{args.bs} median {statistics.median(xs) * 1e3:.2f} ms "
              f"(rounds: {', '.join(f'{x * 1e3:.2f}' for x in xs)})")  # fmt: skip
    for kind in KINDS[::2]:
        ratio = statistics.median(
            x / k for x, k in zip(figures[kind], figures["kernel"], strict=True)
        )
        print(f"{kind} / kernel: {ratio:.3f}x")


if __name__ == "__main__":
    main()
