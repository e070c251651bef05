"""The one-shot GPU check: numerics against transformers, then prefill and decode latency at scale.

A GPU machine is lent rarely and for minutes, and the one here has no package registry and no
IREE compiler (its wheel is larger than what may travel). So the check has two halves:

  prepare  (any machine with irforge's venv; minutes of CPU, no GPU):
           the tiny model converted, exported and compiled for TARGET, with transformers'
           greedy tokens and first-step logits saved beside it; a seed-shaped program (the
           Llama-3.1-8B preset by default, weights external) exported and compiled for TARGET;
           the iree-base-runtime wheel for the GPU machine's Python. All under WORK.
  run      (the GPU machine; under 8 minutes): opens the device, measures its copy bandwidth,
           runs the tiny model and compares with the saved reference, fills a parameter index
           in memory with random weights of the seed shape (nothing written to disk), then
           times prefill (batch 1 and 4 x PROMPT tokens) and decode (batch 1/4/8/32 at
           CONTEXT tokens of cache) and reports decode as a fraction of the bandwidth bound:
           (weights + KV bytes read per step) / step time / bandwidth. Writes device_check.json
           and device_check.md to OUT.

Typical use, from the repository root:

  .venv/bin/python bench/device_check.py prepare --target sm_90        # here, once
  # then one device call, carrying .devcheck and .whl:
  python3 bench/device_check.py run --device cuda --out $OUT

`--dry-run` prints the plan of either half and exits. A run checks its own time and skips
what would not fit in --budget-s, saying what it skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the GPU machine runs irforge from the checkout

DEFAULT_WORK = ROOT / ".devcheck"
DEFAULT_WHEELS = ROOT / ".whl"
SITE = Path("/tmp/irforge-site")  # where run installs the carried wheels
PROMPT = [1, 5, 17, 3, 99, 42, 7, 250, 8, 64, 33, 12, 77, 190, 4, 23, 56, 9, 11, 120]
STEPS = 16


@dataclass(frozen=True)
class Shape:
    """A seed-scale program to time: a preset, or the 8B preset with some fields replaced."""

    name: str
    about: str
    changes: tuple[tuple[str, Any], ...] = ()
    dtype: str = "bf16"

    def config(self) -> Any:
        from irforge.facts.presets import get_preset

        return get_preset("llama-3.1-8b").replace(dtype=self.dtype, **dict(self.changes))


SHAPES = {
    "8b": Shape("8b", "Llama-3.1-8B (vocab 128256, hidden 4096, 32 layers, GQA 32/8), bf16"),
    "1b": Shape(
        "1b",
        "Llama-3.2-1B-shaped (vocab 128256, hidden 2048, 16 layers, GQA 32/8, tied), bf16",
        (
            ("embedding_length", 2048),
            ("block_count", 16),
            ("feed_forward_length", 8192),
            ("head_dim", 64),
            ("tie_word_embeddings", True),
        ),
    ),
    # Real vocabulary and context, narrow and shallow: the CPU smoke test of this script.
    "small": Shape(
        "small",
        "vocab 128256, hidden 64, 2 layers, GQA 4/2, f32 (a smoke test, CPU-sized)",
        (
            ("embedding_length", 64),
            ("block_count", 2),
            ("feed_forward_length", 128),
            ("attention_head_count", 4),
            ("attention_head_count_kv", 2),
            ("head_dim", 16),
        ),
        dtype="f32",
    ),
}
# Datasheet peak memory bandwidths (bytes/s), used only where no copy can be measured.
DATASHEET_BW = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12, "MI300X": 5.3e12}
# AMD shark-ai CI, MI300X, Llama-3.1-8B fp16: the figures issue 16 asks to compare with.
SHARK_MI300X = {"prefill_bs4_2048_ms": 320.0, "decode_bs4_ms": 9.9}


def _parse_ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a comma list of integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="device_check.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("phase", choices=["prepare", "run"], help="which half (see above)")
    p.add_argument("--target", default="sm_90", help="compile target for prepare (sm_90, gfx942…)")
    p.add_argument("--device", default="cuda", help="IREE driver for run: cuda, hip, local-task")
    p.add_argument("--shape", choices=sorted(SHAPES), default="8b", help="the program to time")
    p.add_argument(
        "--work", type=Path, default=DEFAULT_WORK, help="prepared files (default .devcheck)"
    )
    p.add_argument("--wheels", type=Path, default=DEFAULT_WHEELS, help="wheels for the GPU machine")
    p.add_argument(
        "--out", type=Path, default=Path("."), help="where run writes its JSON and Markdown"
    )
    p.add_argument("--prefill-batches", type=_parse_ints, default=[1, 4], metavar="1,4")
    p.add_argument("--decode-batches", type=_parse_ints, default=[1, 4, 8, 32], metavar="1,4,8,32")
    p.add_argument("--prompt", type=int, default=2048, help="prefill tokens per row (2048)")
    p.add_argument("--context", type=int, default=2048, help="cache tokens each decode row reads")
    p.add_argument("--repeat", type=int, default=10, help="timed calls per measurement (median)")
    p.add_argument("--budget-s", type=float, default=420.0, help="run skips what would not fit")
    p.add_argument("--python-version", default="3.12", help="the GPU machine's Python, for wheels")
    p.add_argument("--no-wheels", action="store_true", help="prepare: skip the wheel download")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    args = p.parse_args(argv)
    for name in ("prompt", "context", "repeat"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


def stride_pages(tokens: int, stride: int) -> int:
    return -(-tokens // stride)


def page_budget(args: argparse.Namespace, stride: int = 32) -> int:
    """Cache pages for the largest measurement (+1 scratch page that padding rows write)."""
    prefill = max(args.prefill_batches) * stride_pages(args.prompt, stride)
    decode = max(args.decode_batches) * stride_pages(args.context + 1, stride)
    return max(prefill, decode) + 1


def plan(args: argparse.Namespace) -> list[str]:
    shape = SHAPES[args.shape]
    work = args.work
    if args.phase == "prepare":
        return [
            f"prepare into {work} for target {args.target}:",
            f"  1. tiny model (f32, vocab 288) -> {work}/tiny: convert, export bs 1, compile "
            f"{args.target}; transformers' {STEPS} greedy tokens and first-step logits for a "
            f"{len(PROMPT)}-token prompt -> {work}/tiny/reference.npz",
            f"  2. {shape.about} -> {work}/{shape.name}: export --bs-prefill "
            f"{','.join(map(str, args.prefill_batches))} --bs-decode "
            f"{','.join(map(str, args.decode_batches))} (config only, no weights), compile "
            f"{args.target}",
            f"  3. iree-base-runtime wheel for Python {args.python_version} -> {args.wheels}",
            "then, on the GPU machine: python3 bench/device_check.py run --device cuda "
            "--out $OUT (carry .devcheck and .whl)",
        ]
    pages = page_budget(args)
    return [
        f"run on device {args.device} from {work}, results to {args.out}:",
        f"  0. iree.runtime (installed from {args.wheels} into {SITE} if not importable)",
        "  1. device name and copy bandwidth (torch device-to-device copy where torch sees it)",
        f"  2. tiny model: {STEPS} greedy tokens and first-step logits vs the saved transformers "
        "reference",
        f"  3. {shape.about}: random weights in a memory parameter index, {pages} cache pages",
        f"  4. prefill batch {args.prefill_batches} x {args.prompt} tokens, decode batch "
        f"{args.decode_batches} at {args.context} cached tokens, median of {args.repeat}",
        f"  5. device_check.json and device_check.md (budget {args.budget_s:.0f} s)",
    ]


# -- prepare ---------------------------------------------------------------------------------


def prepare(args: argparse.Namespace) -> None:
    from irforge.artifacts.manifest import ExportOptions
    from irforge.stages.compile import compile_folder, get_target
    from irforge.stages.convert import convert
    from irforge.stages.export import export
    from irforge.stages.tiny import create_tiny

    target = get_target(args.target).name
    work = args.work
    started = time.perf_counter()
    tiny = work / "tiny"
    source = create_tiny(work / "tiny-source")
    archive = convert(source, out=work / "tiny-source" / "model.irpa").out
    one = ExportOptions(prefill_batch_sizes=(1,), decode_batch_sizes=(1,), block_seq_stride=16)
    export(archive, out_dir=tiny, options=one)
    compile_folder(tiny, target=target)
    _save_reference(source, tiny / "reference.npz")
    print(f"tiny: {tiny} ({time.perf_counter() - started:.0f} s)", flush=True)

    shape = SHAPES[args.shape]
    scale = work / shape.name
    scale.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    export(
        model_config=shape.config(),
        out_dir=scale,
        options=ExportOptions(
            prefill_batch_sizes=tuple(args.prefill_batches),
            decode_batch_sizes=tuple(args.decode_batches),
            device_block_count=page_budget(args),
        ),
    )
    print(f"{shape.name}: exported in {time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    compile_folder(scale, target=target)
    print(f"{shape.name}: compiled for {target} in {time.perf_counter() - t0:.0f} s", flush=True)
    if not args.no_wheels:
        _download_runtime_wheel(args)
    print(f"prepared {work} in {time.perf_counter() - started:.0f} s")


def _save_reference(source: Path, out: Path) -> None:
    import numpy as np
    import torch
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(source).eval()
    hf.generation_config.eos_token_id = None
    with torch.no_grad():
        seq = hf.generate(
            torch.tensor([PROMPT]), max_new_tokens=STEPS, do_sample=False, pad_token_id=0
        )
        first = hf(torch.tensor([PROMPT])).logits[0, -1].numpy()
    np.savez(out, prompt=np.array(PROMPT), tokens=seq[0, len(PROMPT) :].numpy(), logits=first)


def _download_runtime_wheel(args: argparse.Namespace) -> None:
    from importlib.metadata import version

    want = f"iree-base-runtime=={version('iree-base-runtime')}"
    plat = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64"]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    cmd += ["--only-binary=:all:", "--python-version", args.python_version, "--implementation"]
    cmd += ["cp", "-d", str(args.wheels), want]
    for p in plat:
        cmd += ["--platform", p]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"warning: could not fetch {want}: {done.stderr.strip().splitlines()[-1:]}")
    else:
        print(f"wheel: {want} -> {args.wheels}")


# -- run ---------------------------------------------------------------------------------------


def ensure_runtime(wheels: Path) -> None:
    """iree.runtime importable: as installed, or from the carried wheels (no registry needed)."""
    try:
        import iree.runtime  # noqa: F401

        return
    except ImportError:
        pass
    found = sorted(wheels.glob("iree_base_runtime-*.whl"))
    if not found:
        raise SystemExit(f"iree.runtime is not installed and {wheels} holds no runtime wheel")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
    cmd += ["--no-compile", "--target", str(SITE), *map(str, found)]
    subprocess.run(cmd, check=True)
    sys.path.insert(0, str(SITE))
    import iree.runtime  # noqa: F401


def device_name(driver: str) -> str:
    if driver == "cuda":
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        )
        if done.returncode == 0:
            return done.stdout.strip().splitlines()[0]
    if driver == "hip":
        done = subprocess.run(["rocm-smi", "--showproductname"], capture_output=True, text=True)
        if done.returncode == 0:
            names = re.findall(r"Card (?:series|SKU):\s*(.+)", done.stdout)
            if names:
                return names[0].strip()
    return {"local-task": f"CPU ({os.cpu_count()} cores)"}.get(driver, driver)


def copy_bandwidth(driver: str, name: str) -> tuple[float, str]:
    """Bytes/s read+written by a large device-to-device copy, or the datasheet figure."""
    try:
        import torch

        on = "cuda" if driver in ("cuda", "hip") and torch.cuda.is_available() else None
        if driver == "local-task":
            on = "cpu"
        if on is not None:
            n = 2**30 if on != "cpu" else 2**28
            a = torch.empty(n, dtype=torch.uint8, device=on).random_()
            b = torch.empty_like(a)
            for _ in range(3):
                b.copy_(a)
            times = []
            for _ in range(10):
                if on != "cpu":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                b.copy_(a)
                if on != "cpu":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            times.sort()
            return 2 * n / times[len(times) // 2], f"measured: torch copy of {n >> 20} MiB on {on}"
    except Exception as e:  # torch missing or unable to see the device: fall back, say so
        note = f"torch copy failed ({type(e).__name__})"
    else:
        note = "no torch device"
    for key, bw in DATASHEET_BW.items():
        if key in name:
            return bw, f"datasheet ({note})"
    return float("nan"), f"unknown ({note})"


def check_numerics(work: Path, driver: str) -> dict[str, Any]:
    import numpy as np

    from irforge.runtime import Session, generate

    ref = np.load(work / "tiny" / "reference.npz")
    session = Session(work / "tiny", device=driver)
    out = generate(
        session,
        [ref["prompt"].tolist()],
        max_tokens=STEPS,
        eos_ids=(),
        keep_logits=True,
    )
    first = out.logits[0][0]
    rel = float(np.abs(first - ref["logits"]).max() / np.abs(ref["logits"]).max())
    want = ref["tokens"].tolist()
    same = sum(a == b for a, b in zip(out.tokens[0], want, strict=False))
    return {
        "first_step_rel_err": rel,
        "greedy_equal": same,
        "greedy_total": len(want),
        "ok": rel < 1e-3 and same == len(want),
    }


_GLOBAL = re.compile(r'parameter\.named<"model"::"([^"]+)"> : tensor<([0-9x]+)x(bf16|f16|f32)>')
_NUMPY = {"bf16": "uint16", "f16": "float16", "f32": "float32"}  # bf16 bits need no ml_dtypes


def program_parameters(mlir: Path) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of every external parameter the program reads, from its globals."""
    found = {}
    with open(mlir) as f:
        for line in f:
            if "parameter.named" in line:
                m = _GLOBAL.search(line)
                if m:
                    found[m[1]] = (tuple(int(d) for d in m[2].split("x")), m[3])
    if not found:
        raise SystemExit(f"{mlir}: no external parameters found")
    return [(name, shape, dtype) for name, (shape, dtype) in found.items()]


def random_index(params: list[tuple[str, tuple[int, ...], str]]) -> tuple[Any, int]:
    """A ParameterIndex of host buffers with random values (one random block, tiled): no disk."""
    import iree.runtime as rt
    import numpy as np

    rng = np.random.default_rng(0)
    block = (rng.standard_normal(1 << 22, dtype=np.float32) * 0.02).astype(np.float32)
    blocks = {
        "f32": block,
        "f16": block.astype(np.float16),
        "bf16": (block.view(np.uint32) >> 16).astype(np.uint16),  # bf16 = f32's top half
    }
    index = rt.ParameterIndex()
    total = 0
    for name, shape, dtype in params:
        n = int(np.prod(shape))
        src = blocks[dtype]
        data = np.resize(src, n) if n != src.size else src.copy()
        if name.endswith("norm.weight"):  # norms near 1, as trained models have them
            one = {"f32": np.float32(1), "f16": np.float16(1), "bf16": np.uint16(0x3F80)}[dtype]
            data = np.full(n, one, dtype=_NUMPY[dtype])
        index.add_buffer(name, data.reshape(shape))
        total += data.nbytes
    return index, total


def _median_ms(repeat: int, fn: Any, *args: Any) -> float:
    fn(*args)  # warm-up: first-call JIT (PTX) and allocation stay out of the figure
    fn(*args)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)  # Session returns host arrays: the call has finished on the device
        times.append(time.perf_counter() - t0)
    times.sort()
    return 1e3 * times[len(times) // 2]


def time_scale(args: argparse.Namespace, deadline: float, bandwidth: float) -> dict[str, Any]:
    import numpy as np

    from irforge.formats.dtypes import BY_NAME
    from irforge.runtime import Session

    folder = args.work / args.shape
    t0 = time.perf_counter()
    params = program_parameters(folder / "model.mlir")
    index, weight_bytes = random_index(params)
    pages = page_budget(args)
    session = Session(folder, device=args.device, parameters=index, page_count=pages)
    setup_s = time.perf_counter() - t0
    cfg, opt = session.config, session.options
    stride = opt.block_seq_stride
    kv_token_bytes = (
        cfg.block_count
        * 2
        * cfg.attention_head_count_kv
        * cfg.head_dim
        * BY_NAME[opt.kv_cache_dtype].itemsize
    )
    # Weights read per decode step: all but the embedding table, which is gathered (a tied
    # table is read whole by the output projection, so it counts).
    embed = next(np.prod(s) * BY_NAME[d].itemsize for n, s, d in params if n == "token_embd.weight")
    step_weights = weight_bytes - (0 if cfg.tie_word_embeddings else int(embed))
    results: dict[str, Any] = {
        "shape": SHAPES[args.shape].about,
        "weights_gib": weight_bytes / 2**30,
        "cache_pages": pages,
        "cache_gib": pages * stride * kv_token_bytes / 2**30,
        "setup_s": setup_s,
        "prefill": [],
        "decode": [],
        "skipped": [],
    }
    rng = np.random.default_rng(1)
    for bs in args.prefill_batches:
        if time.perf_counter() > deadline:
            results["skipped"].append(f"prefill bs{bs}")
            continue
        blocks_per_row = stride_pages(args.prompt, stride)
        tokens = rng.integers(0, cfg.vocab_size, (bs, blocks_per_row * stride))
        ids = np.arange(1, 1 + bs * blocks_per_row).reshape(bs, blocks_per_row)
        lens = np.full(bs, args.prompt)
        ms = _median_ms(args.repeat, session.prefill, tokens, np.zeros(bs, np.int64), lens, ids)
        results["prefill"].append(
            {
                "batch": bs,
                "tokens": args.prompt,
                "ms": ms,
                "tokens_per_s": bs * args.prompt / ms * 1e3,
            }
        )
        print(f"prefill bs{bs} x {args.prompt}: {ms:.1f} ms", flush=True)
    for bs in args.decode_batches:
        if time.perf_counter() > deadline:
            results["skipped"].append(f"decode bs{bs}")
            continue
        blocks_per_row = stride_pages(args.context + 1, stride)
        tokens = rng.integers(0, cfg.vocab_size, (bs, 1))
        ids = np.arange(1, 1 + bs * blocks_per_row).reshape(bs, blocks_per_row)
        lens = np.full(bs, args.context + 1)
        starts = np.full(bs, args.context)
        ms = _median_ms(args.repeat, session.decode, tokens, lens, starts, ids)
        step_bytes = step_weights + bs * (args.context + 1) * kv_token_bytes
        frac = step_bytes / (ms / 1e3) / bandwidth if bandwidth == bandwidth else float("nan")
        results["decode"].append(
            {
                "batch": bs,
                "context": args.context,
                "ms": ms,
                "tokens_per_s": bs / ms * 1e3,
                "bytes_per_step": step_bytes,
                "bandwidth_fraction": frac,
            }
        )
        print(f"decode bs{bs} @ {args.context}: {ms:.2f} ms ({frac:.0%} of bandwidth)", flush=True)
    return results


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"## device check: {report['device']} ({report['driver']})",
        "",
        f"- copy bandwidth: {report['bandwidth_gbs']:.0f} GB/s ({report['bandwidth_source']})",
    ]
    num = report.get("numerics")
    if num:
        lines.append(
            f"- tiny model vs transformers: first-step rel. error {num['first_step_rel_err']:.1e}, "
            f"greedy {num['greedy_equal']}/{num['greedy_total']} equal"
        )
    scale = report.get("scale")
    if scale:
        lines += [
            f"- {scale['shape']}: {scale['weights_gib']:.2f} GiB weights, {scale['cache_pages']} "
            f"cache pages ({scale['cache_gib']:.2f} GiB), set up in {scale['setup_s']:.1f} s",
            "",
            "| step | batch | tokens | ms | tokens/s | of bandwidth |",
            "|---|---|---|---|---|---|",
        ]
        for p in scale["prefill"]:
            lines.append(
                f"| prefill | {p['batch']} | {p['tokens']} | {p['ms']:.1f} | "
                f"{p['tokens_per_s']:.0f} | |"
            )
        for d in scale["decode"]:
            lines.append(
                f"| decode | {d['batch']} | {d['context']} cached | {d['ms']:.2f} | "
                f"{d['tokens_per_s']:.0f} | {d['bandwidth_fraction']:.0%} |"
            )
        if scale["skipped"]:
            lines.append(f"\nskipped (budget): {', '.join(scale['skipped'])}")
        lines.append(
            "\nshark-ai CI on MI300X, 8B fp16: prefill bs4 x 2048 "
            f"{SHARK_MI300X['prefill_bs4_2048_ms']} ms, "
            f"decode bs4 {SHARK_MI300X['decode_bs4_ms']} ms"
        )
    for e in report["errors"]:
        lines.append(f"- error: {e}")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    deadline = started + args.budget_s
    ensure_runtime(args.wheels)
    from irforge.runtime.devices import normalize_driver

    args.device = normalize_driver(args.device)
    name = device_name(args.device)
    bandwidth, source = copy_bandwidth(args.device, name)
    print(f"device: {name}; bandwidth {bandwidth / 1e9:.0f} GB/s ({source})", flush=True)
    from irforge.runtime.device_memory import free_bytes

    report: dict[str, Any] = {
        "device": name,
        "driver": args.device,
        "bandwidth_gbs": bandwidth / 1e9,
        "bandwidth_source": source,
        # what serve's default cache size reads (runtime/device_memory.py): None = unknown
        "free_bytes": free_bytes(args.device, 0),
        "errors": [],
    }
    # Each part reports its own failure and the next one still runs: one call must say it all.
    for key, part in (
        ("numerics", lambda: check_numerics(args.work, args.device)),
        ("scale", lambda: time_scale(args, deadline, bandwidth)),
    ):
        try:
            report[key] = part()
            print(f"{key}: {json.dumps(report[key])[:400]}", flush=True)
        except Exception as e:  # a report of every failure beats a traceback that stops the run
            report["errors"].append(f"{key}: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
            print(f"{key} failed: {report['errors'][-1]}", flush=True)
    report["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "device_check.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.out / "device_check.md").write_text(table)
    print(table)
    return 1 if report["errors"] or not report.get("numerics", {}).get("ok") else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        print("\n".join(plan(args)))
        return 0
    if args.phase == "prepare":
        prepare(args)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
