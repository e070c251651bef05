"""Time to first token against transformers, and prefill memory, by prompt length (issue 13).

For one shape it exports prefill_bs1 (weights external), compiles it for the CPU, fills a
parameter index with random weights in memory, then for each prompt length runs prefill in a
fresh process (so each peak RSS is that length's own) and, in the same run, transformers'
forward with `logits_to_keep=1` on a model of the same shape and dtype (random weights; the
values do not change the time). Prints each TTFT, the ratio, and both peak RSS.

  .venv/bin/python bench/prefill.py --shape vocab --lengths 128,1024,4096
  .venv/bin/python bench/prefill.py --shape 1b --lengths 128,1024,4096
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import decode_steps  # noqa: E402  (its shapes)
import device_check  # noqa: E402  (random parameter index)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", choices=sorted(decode_steps.SHAPES), default="vocab")
    p.add_argument("--lengths", type=_ints, default=[128, 1024, 4096])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--work", type=Path, default=Path("/tmp/irforge-prefill"))
    p.add_argument("--json", type=Path)
    p.add_argument("--child", help=argparse.SUPPRESS)  # "irforge|transformers:LENGTH"
    return p.parse_args(argv)


def build(args: argparse.Namespace) -> Path:
    from irforge.artifacts.manifest import ExportOptions
    from irforge.stages.compile import compile_folder
    from irforge.stages.export import export

    folder = args.work / f"{args.shape}-{max(args.lengths)}"
    if (folder / "model.cpu.vmfb").is_file():
        return folder
    pages = -(-max(args.lengths) // 32) + 2
    options = ExportOptions(
        prefill_batch_sizes=(1,),
        decode_batch_sizes=(1,),
        device_block_count=pages,
        max_seq_len=max(args.lengths),
    )
    export(model_config=decode_steps.SHAPES[args.shape].config(), out_dir=folder, options=options)
    compile_folder(folder, target="cpu")
    return folder


def hf_config(cfg: Any, max_positions: int, **extra: Any) -> Any:
    """The transformers LlamaConfig of one of irforge's configs (a benchmark shape)."""
    import transformers

    return transformers.LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.embedding_length,
        intermediate_size=cfg.feed_forward_length,
        num_hidden_layers=cfg.block_count,
        num_attention_heads=cfg.attention_head_count,
        num_key_value_heads=cfg.attention_head_count_kv,
        head_dim=cfg.head_dim,
        max_position_embeddings=max_positions,
        tie_word_embeddings=cfg.tie_word_embeddings,
        **extra,
    )


def _best_s(repeat: int, fn: Any) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def child(args: argparse.Namespace, folder: Path) -> dict[str, float]:
    """One measurement in this process: TTFT (best of repeat) and this process's peak RSS."""
    import numpy as np

    who, length = args.child.split(":")
    n = int(length)
    rng = np.random.default_rng(0)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if who == "irforge":
        from irforge.runtime import Session

        index, _ = device_check.random_index(device_check.program_parameters(folder / "model.mlir"))
        session = Session(folder, parameters=index)
        stride = session.options.block_seq_stride
        blocks = -(-n // stride)
        tokens = np.zeros((1, blocks * stride), np.int64)
        tokens[0, :n] = rng.integers(0, session.config.vocab_size, n)
        ids = np.arange(1, 1 + blocks).reshape(1, blocks)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # weights in, cache zeroed
        seconds = _best_s(
            args.repeat, lambda: session.prefill(tokens, np.zeros(1, np.int64), np.array([n]), ids)
        )
    else:
        import torch
        import transformers

        cfg = decode_steps.SHAPES[args.shape].config()
        model = transformers.LlamaForCausalLM(hf_config(cfg, max(args.lengths))).eval()
        ids_t = torch.from_numpy(rng.integers(0, cfg.vocab_size, (1, n)))
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

        def forward() -> None:
            with torch.no_grad():
                model(ids_t, logits_to_keep=1)

        seconds = _best_s(args.repeat, forward)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "peak_mib": peak / 1024, "step_mib": (peak - base) / 1024}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = build(args)
    if args.child:
        print(json.dumps(child(args, folder)))
        return 0
    rows = []
    for n in args.lengths:
        row: dict[str, Any] = {"tokens": n}
        for who in ("irforge", "transformers"):
            cmd = [sys.executable, __file__, "--shape", args.shape, "--work", str(args.work)]
            cmd += ["--lengths", ",".join(map(str, args.lengths)), "--repeat", str(args.repeat)]
            done = subprocess.run([*cmd, "--child", f"{who}:{n}"], capture_output=True, text=True)
            if done.returncode != 0:
                row[who] = {"error": done.stderr.strip().splitlines()[-1][:200]}
            else:
                row[who] = json.loads(done.stdout.strip().splitlines()[-1])
            print(n, who, row[who], flush=True)
        rows.append(row)
    print(f"\n{decode_steps.SHAPES[args.shape].about}, prefill bs1, best of {args.repeat}\n")
    print(
        "| prompt tokens | irforge TTFT | transformers TTFT | ratio | irforge / transformers "
        "peak RSS growth during the call |"
    )
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        a, b = r["irforge"], r["transformers"]
        if "error" in a or "error" in b:
            print(f"| {r['tokens']} | {a.get('error', '')} | {b.get('error', '')} | | |")
            continue
        print(
            f"| {r['tokens']} | {a['seconds'] * 1e3:.0f} ms | {b['seconds'] * 1e3:.0f} ms "
            f"| {a['seconds'] / b['seconds']:.2f} | {a['step_mib']:.0f} / {b['step_mib']:.0f} MiB |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
