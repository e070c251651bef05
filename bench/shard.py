"""Benchmark `irforge shard --tp 8` against `cp` of the same bytes, in the same run.

Uses the Llama-shaped f16 model bench/convert.py generates (~1.3 GB), converted once to an
irforge archive; then times `cp` of that archive, `cp` + `sync` (the durability shard gives
its outputs), and `irforge shard --tp 8`, with peak RSS:

    python bench/shard.py [--layers 12] [--tp 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from convert import BIN, best_of, write_safetensors  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--tp", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path(__file__).parent / "data")
    args = parser.parse_args()
    st_dir = args.data / f"llama-{args.layers}l"
    st_dir.mkdir(parents=True, exist_ok=True)
    if not (st_dir / "model.safetensors").exists():
        write_safetensors(st_dir, args.layers)
    archive = args.data / f"llama-{args.layers}l.irpa"
    if not archive.exists():
        subprocess.run(
            [str(BIN / "irforge"), "convert", str(st_dir), "-o", str(archive), "-q"], check=True
        )
    subprocess.run(["cat", str(archive)], stdout=subprocess.DEVNULL, check=True)  # warm cache
    out = args.data / "sharded" / "out.irpa"
    out.parent.mkdir(exist_ok=True)
    cp = best_of(["cp", str(archive), str(out)], out, args.repeat)
    cp_sync = best_of(["sh", "-c", f"cp {archive} {out} && sync {out}"], out, args.repeat)
    ours = best_of(
        [str(BIN / "irforge"), "shard", str(archive), "--tp", str(args.tp), "-o", str(out), "-q"],
        out.with_suffix(""),
        args.repeat,
    )
    size = archive.stat().st_size
    print(
        f"best of {args.repeat} runs, warm page cache; {size / 1e9:.2f} GB archive -> TP={args.tp}"
    )
    print(f"{'cp':>8} {'cp+sync':>8} {'shard':>8} {'/cp':>6} {'/cp+sync':>9} {'RSS shard':>10}")
    print(
        f"{cp[0]:7.2f}s {cp_sync[0]:7.2f}s {ours[0]:7.2f}s {ours[0] / cp[0]:6.2f} "
        f"{ours[0] / cp_sync[0]:9.2f} {ours[1]:9.0f}M"
    )


if __name__ == "__main__":
    main()
