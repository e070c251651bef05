"""Quantized weights on the CPU, in one run (issue 17): f16 against int8, w8a8 and fp8.

The Llama-3.2-1B-shaped checkpoint of bench/scale.py (random seeded weights, bf16 safetensors,
made there if missing) is converted once per scheme: `--dtype f16`, then `--dtype f16
--quantize S` (activations, embeddings and norms f16 in all). Each is exported (prefill bs 1,
decode bs 1/8), compiled for the CPU and served by `irforge serve`; for each: archive size,
convert time, time to first token of a 1024-token prompt, one client's decode step, and output
tokens/s at 1 and 8 concurrent clients. Target: int8 decode >= 1.6x f16 at one client (it
reads half the bytes).

    .venv/bin/python bench/quant.py [--schemes none,int8,w8a8,fp8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale  # noqa: E402  (the checkpoint, build, server and client helpers)
import serve as serve_bench  # noqa: E402

CLIENTS = (1, 8)
EXPORT = dict(
    prefill_batch_sizes=(1,),
    decode_batch_sizes=(1, 8),
    device_block_count=256,
    max_seq_len=4096,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--schemes", default="none,int8,w8a8,fp8", help="none = plain f16")
    p.add_argument("--dtype", default="f16", help="activations, embeddings and norms")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--prompt-tokens", type=int, default=1024, help="the TTFT prompt's length")
    p.add_argument("--tmpfs", type=Path, default=Path("/dev/shm/irforge-scale/1b"))
    p.add_argument("--work", type=Path, default=Path("/tmp/irforge-quant"))
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


def measure(art: Path, max_tokens: int, prompt_tokens: int) -> dict[str, Any]:
    port = serve_bench._free_port()
    url = f"http://127.0.0.1:{port}"
    proc, _ = serve_bench.start(serve_bench.irforge_command(art, port), url, timeout_s=600)
    rng = np.random.default_rng(2)
    try:
        # prefill is compute-bound where decode reads bytes: the other half of a scheme's cost
        ttft = scale.ttft_s(url, rng, prompt_tokens, repeat=2)
        print(f"  TTFT {prompt_tokens}: {ttft * 1e3:.0f} ms", flush=True)
        return {"ttft_s": ttft, **scale.decode_rates(url, max_tokens, CLIENTS, rng)}
    finally:
        serve_bench.stop(proc)


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"{scale.SHAPE.about.replace('f32', r['dtype'] + ' activations')}, IREE {r['iree']}, CPU",
        "",
        f"| weights | archive | convert | TTFT ({r['prompt_tokens']} tokens) | decode step "
        "(1 client) | tokens/s, 1 client | 8 clients | 1-client speed-up over the float archive |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    base = r["runs"][0]
    for run in r["runs"]:
        t = run["tokens_per_s"]
        lines.append(
            f"| {run['scheme']} | {run['archive_bytes'] / 2**30:.2f} GiB "
            f"| {run['convert_s']:.0f} s "
            f"| {run['ttft_s'] * 1e3:.0f} ms ({base['ttft_s'] / run['ttft_s']:.2f}x) "
            f"| {run['step_s'] * 1e3:.0f} ms | {t['1']:.1f} | {t['8']:.1f} "
            f"| {base['step_s'] / run['step_s']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    hf = args.tmpfs / "hf"
    scale.write_weights(hf)
    report: dict[str, Any] = {
        "iree": version("iree-base-compiler"),
        "dtype": args.dtype,
        "prompt_tokens": args.prompt_tokens,
        "runs": [],
    }
    for name in args.schemes.split(","):
        quantize = None if name == "none" else name
        art, seconds = scale.build(
            hf, args.work, dtype=args.dtype, quantize=quantize, options=EXPORT
        )
        print(f"{name}: serving", flush=True)
        run = measure(art, args.max_tokens, args.prompt_tokens)
        run["tokens_per_s"] = {str(k): v for k, v in run["tokens_per_s"].items()}
        run.update(
            scheme=name if quantize else args.dtype,
            archive_bytes=(art / "model.irpa").stat().st_size,
            convert_s=seconds,
        )
        report["runs"].append(run)
    print("\n" + markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
