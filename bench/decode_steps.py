"""Decode step time by batch size and cache size, on the compiled CPU program (issues 12 and 13).

For one shape it exports the program once (weights external), compiles it with the installed
iree-compile, fills a parameter index in memory with random weights (nothing on disk), then
for each cache size times decode_bs{N} (N in --batches) at --context tokens of cache per row,
and prints each step's time, its ratio to the batch-1 step, and the one-client decode as a
fraction of the copy-bandwidth bound (weights + KV read per step / torch's measured copy
bandwidth on this machine, measured in the same run).

Run it once per IREE release to compare releases: the version is in the report.

  .venv/bin/python bench/decode_steps.py --shape vocab --pages 64,512
  .venv/bin/python bench/decode_steps.py --shape 1b --pages 64,512 --batches 1,4,8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import device_check  # noqa: E402  (its shapes, random parameter index and copy bandwidth)

SHAPES = {
    # The real vocabulary, narrow and shallow: the output projection dominates a step.
    "vocab": dataclasses.replace(
        device_check.SHAPES["small"],
        name="vocab",
        about="vocab 128256, hidden 256, 2 layers, GQA 4/2, f32",
        changes=(
            ("embedding_length", 256),
            ("block_count", 2),
            ("feed_forward_length", 512),
            ("attention_head_count", 4),
            ("attention_head_count_kv", 2),
            ("head_dim", 64),
        ),
    ),
    "1b": dataclasses.replace(
        device_check.SHAPES["1b"],
        about=device_check.SHAPES["1b"].about.replace("bf16", "f32"),
        dtype="f32",
    ),
}
SLOW_STEP_S = 5.0  # a step slower than this is timed once: the figure is the point, not noise


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="vocab")
    p.add_argument("--batches", type=_ints, default=[1, 4, 8, 32], help="decode batch sizes")
    p.add_argument("--pages", type=_ints, default=[64, 512], help="cache sizes to compare")
    p.add_argument("--context", type=int, default=31, help="cached tokens per row")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--work", type=Path, default=Path("/tmp/irforge-decode-steps"))
    p.add_argument("--json", type=Path, help="also write the report here")
    return p.parse_args(argv)


def build(args: argparse.Namespace) -> Path:
    """The exported and compiled program of the shape, reused when already there."""
    from irforge.artifacts.manifest import ExportOptions, Manifest
    from irforge.stages.compile import compile_folder
    from irforge.stages.export import export

    iree = version("iree-base-compiler")
    folder = args.work / f"{args.shape}-iree{iree}-bs{'_'.join(map(str, args.batches))}"
    if (folder / "model.cpu.vmfb").is_file() and Manifest.load(folder).compiled:
        return folder
    t0 = time.perf_counter()
    options = ExportOptions(
        prefill_batch_sizes=(1,),
        decode_batch_sizes=tuple(args.batches),
        device_block_count=max(args.pages),
        max_seq_len=4096,
    )
    export(model_config=SHAPES[args.shape].config(), out_dir=folder, options=options)
    t1 = time.perf_counter()
    compile_folder(folder, target="cpu")
    print(f"exported in {t1 - t0:.0f} s, compiled in {time.perf_counter() - t1:.0f} s")
    return folder


def _step_ms(fn: Any, *args: Any, repeat: int) -> float:
    fn(*args)  # first call: allocation, page-ins
    t0 = time.perf_counter()
    fn(*args)
    first = time.perf_counter() - t0
    if first > SLOW_STEP_S:
        return 1e3 * first
    times = [first]
    for _ in range(repeat - 1):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    times.sort()
    return 1e3 * times[len(times) // 2]


def measure(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    import numpy as np

    from irforge.formats.dtypes import BY_NAME
    from irforge.runtime import Session

    params = device_check.program_parameters(folder / "model.mlir")
    index, weight_bytes = device_check.random_index(params)
    bandwidth, how = device_check.copy_bandwidth("local-task", "CPU")
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(0)
    for pages in args.pages:
        session = Session(folder, parameters=index, page_count=pages)
        cfg, opt = session.config, session.options
        stride = opt.block_seq_stride
        kv_token = 2 * cfg.block_count * cfg.attention_head_count_kv * cfg.head_dim
        kv_token *= BY_NAME[opt.kv_cache_dtype].itemsize
        for bs in args.batches:
            per_row = -(-(args.context + 1) // stride)
            if 1 + bs * per_row > pages:
                print(f"pages={pages} bs{bs}: does not fit, skipped")
                continue
            tokens = rng.integers(0, cfg.vocab_size, (bs, 1))
            ids = np.arange(1, 1 + bs * per_row).reshape(bs, per_row)
            lens = np.full(bs, args.context + 1)
            starts = np.full(bs, args.context)
            ms = _step_ms(session.decode, tokens, lens, starts, ids, repeat=args.repeat)
            step_bytes = weight_bytes + bs * (args.context + 1) * kv_token
            rows.append(
                {
                    "pages": pages,
                    "cache_mib": pages * stride * kv_token / 2**20,
                    "batch": bs,
                    "ms": ms,
                    "bandwidth_fraction": step_bytes / (ms / 1e3) / bandwidth,
                }
            )
            print(f"pages={pages} bs{bs}: {ms:.1f} ms", flush=True)
        del session
    return {
        "shape": SHAPES[args.shape].about,
        "iree": version("iree-base-runtime"),
        "context": args.context,
        "weights_gib": weight_bytes / 2**30,
        "copy_bandwidth_gbs": bandwidth / 1e9,
        "bandwidth_source": how,
        "rows": rows,
    }


def markdown(report: dict[str, Any]) -> str:
    out = [
        f"{report['shape']}, IREE {report['iree']}, {report['context']} cached tokens per row, "
        f"copy bandwidth {report['copy_bandwidth_gbs']:.1f} GB/s ({report['bandwidth_source']})",
        "",
        "| cache pages (MiB) | batch | step ms | / batch-1 step | bandwidth bound fraction |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        one = next(
            (x["ms"] for x in report["rows"] if x["pages"] == r["pages"] and x["batch"] == 1),
            float("nan"),
        )
        out.append(
            f"| {r['pages']} ({r['cache_mib']:.0f}) | {r['batch']} | {r['ms']:.1f} "
            f"| {r['ms'] / one:.2f} | {r['bandwidth_fraction']:.0%} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = build(args)
    report = measure(args, folder)
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
