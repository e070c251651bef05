"""Serving with prefix caching and chunked prefill, each on and off, in one run (issue 15).

On the compiled CPU program of one shape (random weights in a parameter index, nothing on
disk), through the engine (the scheduler the HTTP server runs; HTTP adds the same cost to both
sides of each comparison):

- shared prefix: 32 requests whose prompts share a 1,000-token system prompt (then 24 tokens of
  their own) arrive at once; time to first token p50/p99 with the prefix cache on and off.
  Target: p50 at least 3x lower with it on.
- chunked prefill: 16 streams decode; a 4,000-token prompt arrives; the streams' inter-token
  latencies from its arrival to its first token, p99, with `--prefill-chunk` at its default
  and 0 (whole prompts). Target: p99 at least 3x lower with chunks.

  .venv/bin/python bench/serve_cache.py --shape vocab

(bench/serve.py is the throughput benchmark against shortfin and transformers.)
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import decode_steps  # noqa: E402  (its shapes)
import device_check  # noqa: E402  (its random parameter index)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", choices=sorted(decode_steps.SHAPES), default="vocab")
    p.add_argument("--requests", type=int, default=32, help="shared-prefix requests")
    p.add_argument("--system", type=int, default=1000, help="shared system prompt tokens")
    p.add_argument("--streams", type=int, default=16, help="decoding streams")
    p.add_argument("--long", type=int, default=4000, help="the long prompt's tokens")
    p.add_argument("--work", type=Path, default=Path("/tmp/irforge-bench-serve"))
    p.add_argument("--json", type=Path, help="also write the report here")
    return p.parse_args(argv)


def build(args: argparse.Namespace) -> Path:
    from irforge.artifacts.manifest import ExportOptions, Manifest
    from irforge.stages.compile import compile_folder
    from irforge.stages.export import export

    folder = args.work / f"{args.shape}-iree{version('iree-base-compiler')}"
    if (folder / "model.cpu.vmfb").is_file() and Manifest.load(folder).compiled:
        return folder
    options = ExportOptions(
        prefill_batch_sizes=(1, 4),
        decode_batch_sizes=(1, 4, 8, 16),
        device_block_count=1024,
        max_seq_len=8192,
    )
    t0 = time.perf_counter()
    export(model_config=decode_steps.SHAPES[args.shape].config(), out_dir=folder, options=options)
    compile_folder(folder, target="cpu")
    print(f"built {folder.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return folder


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def shared_prefix(folder: Path, index: Any, args: argparse.Namespace, on: bool) -> dict:
    import numpy as np

    from irforge.engine import Engine

    rng = np.random.default_rng(0)
    with Engine(folder, parameters=index, prefix_caching=on) as engine:
        vocab = engine.vocab_size
        system = rng.integers(0, vocab, args.system).tolist()
        prompts = [system + rng.integers(0, vocab, 24).tolist() for _ in range(args.requests)]
        started = time.perf_counter()
        reqs = [engine.submit(p, max_tokens=4, ignore_eos=True) for p in prompts]
        for r in reqs:
            r.wait(600)
        wall = time.perf_counter() - started
        ttft = [r.first_token_at - r.submitted_at for r in reqs if r.first_token_at]
        hits = engine.metrics.counter("prefix_cache_hit_tokens_total")
    return {
        "prefix_cache": on,
        "ttft_p50_s": _pct(ttft, 0.5),
        "ttft_p99_s": _pct(ttft, 0.99),
        "wall_s": wall,
        "hit_tokens": hits,
    }


def _timestamps(req: Any, out: list[float]) -> None:
    for _ in req.stream(600):
        out.append(time.perf_counter())


def long_arrival(folder: Path, index: Any, args: argparse.Namespace, chunk: int) -> dict:
    import numpy as np

    from irforge.engine import Engine

    rng = np.random.default_rng(1)
    with Engine(folder, parameters=index, prefill_chunk=chunk, prefix_caching=False) as engine:
        vocab = engine.vocab_size
        streams = [
            engine.submit(rng.integers(0, vocab, 32).tolist(), max_tokens=400, ignore_eos=True)
            for _ in range(args.streams)
        ]
        times: list[list[float]] = [[] for _ in streams]
        readers = [
            threading.Thread(target=_timestamps, args=(r, t), daemon=True)
            for r, t in zip(streams, times, strict=True)
        ]
        for t in readers:
            t.start()
        while min(len(t) for t in times) < 5:  # all decoding
            time.sleep(0.01)
        arrived = time.perf_counter()
        long = engine.submit(rng.integers(0, vocab, args.long).tolist(), max_tokens=1)
        long.wait(600)
        first = long.first_token_at or time.perf_counter()
        deadline = time.perf_counter() + 60
        # each stream's first token after the long prompt's closes the gap that spans it
        while any(t[-1] <= first for t in times) and time.perf_counter() < deadline:
            time.sleep(0.01)
        gaps = [
            b - a
            for t in times
            for a, b in zip(t, t[1:], strict=False)
            if b > arrived and a < first  # gaps that overlap the long prompt's prefill
        ]
        for r in streams:
            r.cancel()
        for t in readers:
            t.join(60)
    return {
        "prefill_chunk": chunk,
        "long_ttft_s": first - arrived,
        "itl_p50_ms": 1e3 * _pct(gaps, 0.5),
        "itl_p99_ms": 1e3 * _pct(gaps, 0.99),
        "itl_max_ms": 1e3 * max(gaps),
        "gaps": len(gaps),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"{report['shape']}, IREE {report['iree']}, CPU, through the engine",
        "",
        "| prefix cache | TTFT p50 | TTFT p99 | all 32 done | prompt tokens found cached |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in report["shared_prefix"]:
        lines.append(
            f"| {'on' if r['prefix_cache'] else 'off'} | {r['ttft_p50_s'] * 1e3:.0f} ms "
            f"| {r['ttft_p99_s'] * 1e3:.0f} ms | {r['wall_s']:.1f} s | {r['hit_tokens']:.0f} |"
        )
    off, on = report["shared_prefix"][1], report["shared_prefix"][0]
    lines += [
        "",
        f"TTFT p50 off / on: {off['ttft_p50_s'] / on['ttft_p50_s']:.1f}x (target >= 3x)",
        "",
        "| prefill chunk | streams' ITL p50 | p99 | max | long prompt TTFT |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in report["long_arrival"]:
        lines.append(
            f"| {r['prefill_chunk'] or 'off (whole prompt)'} | {r['itl_p50_ms']:.0f} ms "
            f"| {r['itl_p99_ms']:.0f} ms | {r['itl_max_ms']:.0f} ms | {r['long_ttft_s']:.1f} s |"
        )
    chunked, whole = report["long_arrival"]
    lines += [
        "",
        f"ITL p99 whole / chunked: {whole['itl_p99_ms'] / chunked['itl_p99_ms']:.1f}x "
        "(target >= 3x)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from irforge.runtime.batching import DEFAULT_PREFILL_CHUNK

    args = parse_args(argv)
    folder = build(args)
    index, _ = device_check.random_index(device_check.program_parameters(folder / "model.mlir"))
    report: dict[str, Any] = {
        "shape": decode_steps.SHAPES[args.shape].about,
        "iree": version("iree-base-runtime"),
        "shared_prefix": [shared_prefix(folder, index, args, on) for on in (True, False)],
        "long_arrival": [long_arrival(folder, index, args, c) for c in (DEFAULT_PREFILL_CHUNK, 0)],
    }
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
