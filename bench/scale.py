"""The seed models' scale on the CPU, in one run (issue 13).

A Llama-3.2-1B-shaped model (vocab 128256, hidden 2048, 16 layers, GQA 32/8, tied embeddings,
131072 context, llama3 rope; random seeded weights saved by transformers as bf16 safetensors,
2.5 GB) goes through irforge as a user would take it, and each step is timed against a peer in
the same run:

- convert: `irforge convert` of the 2.5 GB safetensors and `irforge shard --tp 8` of the
  archive, against `cp` and `iree-convert-parameters`, all in tmpfs (/dev/shm, where fsync costs
  nothing, so the copy path itself shows); wall time and peak RSS (GNU time).
- serve: the checkpoint converted to f32, exported (prefill bs 1/4, decode bs 1/8/32) and
  compiled for the CPU, served by `irforge serve` at its defaults (chunked prefill, prefix
  cache on; every prompt is distinct, so nothing is found cached):
  - TTFT of 128, 1024 and 4096-token prompts (1-token requests), against transformers' forward
    with `logits_to_keep=1` on the same weights in f32. Target <= 1.2x.
  - output tokens/s with 1, 8 and 32 concurrent clients, against transformers' `generate` (one
    static batch per level) and llama.cpp's server (llama-cpp-python, its own venv; the same
    weights as an f32 GGUF). Target: ahead of both at 8 and 32.
  - one client's decode step as a fraction of the memory-bandwidth bound: (weights + KV bytes
    read per step) / step time / the copy bandwidth measured in this run. Target >= 50%.
  - the server's peak RSS (VmHWM).

    .venv/bin/python bench/scale.py [--llama-python /tmp/llama/bin/python] [--json out.json]

llama.cpp is skipped when `--llama-python` (a Python with `llama-cpp-python[server]`, which
builds from source in about 12 minutes: `python -m venv /tmp/llama && /tmp/llama/bin/pip install
'llama-cpp-python[server]'`) is not given.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

import convert as convert_bench  # noqa: E402  (GNU-time measurement)
import decode_steps  # noqa: E402  (the 1B shape)
import device_check  # noqa: E402  (copy bandwidth)
import prefill  # noqa: E402  (the shape's transformers config)
import serve as serve_bench  # noqa: E402  (server start/stop, client load, generate)
import shortfin_server  # noqa: E402  (the /generate client)

import tiny  # noqa: E402  (seeded model, GGUF writer)

SHAPE = decode_steps.SHAPES["1b"]
CONTEXT = 131072
ROPE = dict(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=8192,
)
CLIENTS = (1, 8, 32)
REQUEST_S = 1800  # a 1B model on 2 cores: 32 clients' prefills alone take a minute
EXPORT = dict(
    prefill_batch_sizes=(1, 4),
    decode_batch_sizes=(1, 8, 32),
    device_block_count=512,
    max_seq_len=8192,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", choices=sorted(decode_steps.SHAPES), default="1b")
    p.add_argument("--lengths", type=prefill._ints, default=[128, 1024, 4096])
    p.add_argument("--max-tokens", type=int, default=32, help="tokens per decode request")
    p.add_argument("--repeat", type=int, default=2, help="TTFT: best of this many prompts")
    p.add_argument("--tmpfs", type=Path, default=Path("/dev/shm/irforge-scale"))
    p.add_argument("--work", type=Path, default=Path("/tmp/irforge-scale"))
    p.add_argument("--llama-python", type=Path, help="a Python with llama-cpp-python[server]")
    p.add_argument("--skip", default="", help="comma list of parts to skip: convert,llama")
    p.add_argument("--convert-only", action="store_true", help="only the convert/shard table")
    p.add_argument("--convert-repeat", type=int, default=5, help="convert: best of this many")
    p.add_argument("--json", type=Path, help="also write the report here")
    return p.parse_args(argv)


def write_weights(hf: Path) -> None:
    """The seeded random checkpoint, as transformers saves it (bf16, one safetensors file)."""
    if (hf / "model.safetensors").is_file():
        return
    import torch

    t0 = time.perf_counter()
    cfg = prefill.hf_config(SHAPE.config(), CONTEXT, rope_theta=500000.0, rope_scaling=ROPE)
    tiny.build_model(cfg, seed=0).to(torch.bfloat16).save_pretrained(hf)
    print(f"wrote {hf} in {time.perf_counter() - t0:.0f} s", flush=True)


def convert_part(hf: Path, tmpfs: Path, repeat: int) -> dict[str, Any]:
    """Wall seconds and peak RSS MiB of each tool, best of `repeat`, warm page cache, in tmpfs.

    The tools take turns, round by round: this machine's copy speed drifts by 1.5x within a
    minute (cp 0.93-1.58 s), and a tool timed in a slow stretch would carry it alone.
    """
    bin_ = convert_bench.BIN
    src, out = hf / "model.safetensors", tmpfs / "out.irpa"
    archive = tmpfs / "bf16.irpa"
    tp = min(8, SHAPE.config().attention_head_count_kv)
    irforge = str(bin_ / "irforge")
    subprocess.run([irforge, "convert", str(hf), "-o", str(archive), "-q"], check=True)
    subprocess.run(["cat", str(src), str(archive)], stdout=subprocess.DEVNULL, check=True)
    commands = {
        "cp": ["cp", str(src), str(out)],
        "iree-convert-parameters": [
            str(bin_ / "iree-convert-parameters"),
            f"--parameters={src}",
            f"--output={out}",
        ],
        "irforge convert": [irforge, "convert", str(hf), "-o", str(out), "-q"],
        "cp archive": ["cp", str(archive), str(out)],
        f"irforge shard --tp {tp}": [
            irforge,
            "shard",
            str(archive),
            "--tp",
            str(tp),
            "-o",
            str(out),
            "-q",
        ],
    }
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, cmd in commands.items():
            target = out.with_suffix("") if "shard" in name else out
            runs[name].append(convert_bench.measure(cmd, target))
    rows = {}
    for name, got in runs.items():
        wall, rss = min(w for w, _ in got), max(m for _, m in got)
        rows[name] = {"seconds": wall, "peak_mib": rss}
        print(f"  {name}: {wall:.2f} s, {rss:.0f} MiB", flush=True)
    archive.unlink()
    return {"bytes": src.stat().st_size, "repeat": repeat, "tools": rows}


def source_digest() -> str:
    """A short digest of the irforge package's source, which makes the archive and program."""
    import irforge

    h = hashlib.sha256()
    root = Path(irforge.__file__).parent
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:10]


def build(
    hf: Path,
    work: Path,
    *,
    dtype: str = "f32",
    quantize: str | None = None,
    options: dict[str, Any] = EXPORT,
) -> tuple[Path, float]:
    """The served artifact folder of the checkpoint (made once) and the convert seconds."""
    from irforge.artifacts.manifest import ExportOptions, Manifest
    from irforge.stages.compile import compile_folder
    from irforge.stages.convert import convert
    from irforge.stages.export import export

    # keyed on the code too: a program made by an older irforge must not be measured as this one
    name = f"{dtype}{'-' + quantize if quantize else ''}-{source_digest()}"
    art = work / f"art-{name}-iree{version('iree-base-compiler')}"
    done = work / f"convert-{name}.seconds"
    if (art / "model.cpu.vmfb").is_file() and Manifest.load(art).compiled and done.is_file():
        return art, float(done.read_text())
    t0 = time.perf_counter()
    archive = convert(hf, out=work / f"model-{name}.irpa", dtype=dtype, quantize=quantize).out
    t1 = time.perf_counter()
    export(archive, out_dir=art, options=ExportOptions(**options))
    t2 = time.perf_counter()
    compile_folder(art, target="cpu")
    t3 = time.perf_counter()
    print(f"{name}: convert {t1 - t0:.0f} s, export {t2 - t1:.0f} s, compile {t3 - t2:.0f} s")
    done.write_text(f"{t1 - t0:.3f}")
    return art, t1 - t0


def _prompt(rng: np.random.Generator, n: int) -> list[int]:
    return rng.integers(3, SHAPE.config().vocab_size, n).tolist()  # no special ids


def _client_work(clients: tuple[int, ...] = CLIENTS) -> list[tuple[int, list[list[int]]]]:
    """(clients, their prompts) per level: disjoint prompts, so no level finds another's
    pages in the prefix cache; at least 2 requests per level."""
    work = serve_bench.prompts(sum(max(2, c) for c in clients), SHAPE.config().vocab_size)
    out, at = [], 0
    for c in clients:
        out.append((c, work[at : at + max(2, c)]))
        at += max(2, c)
    return out


def _rss_peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _one_request_s(url: str, prompt: list[int], max_tokens: int) -> float:
    t0 = time.perf_counter()
    shortfin_server.generate(url, prompt, max_tokens, timeout_s=REQUEST_S)
    return time.perf_counter() - t0


def ttft_s(url: str, rng: np.random.Generator, n: int, repeat: int) -> float:
    """Time to the first token of an n-token random prompt: the best of `repeat` requests."""
    return min(_one_request_s(url, _prompt(rng, n), 1) for _ in range(repeat))


def serve_part(art: Path, args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    port = serve_bench._free_port()
    url = f"http://127.0.0.1:{port}"
    proc, cold = serve_bench.start(serve_bench.irforge_command(art, port), url, timeout_s=600)
    out: dict[str, Any] = {"cold_start_s": cold, "ttft_s": {}}
    try:
        for n in args.lengths:
            reps = args.repeat if n <= 1024 else 1
            out["ttft_s"][n] = ttft_s(url, rng, n, reps)
            print(f"  irforge TTFT {n}: {out['ttft_s'][n] * 1e3:.0f} ms", flush=True)
        out.update(decode_rates(url, args.max_tokens, CLIENTS, rng))
        out["peak_rss_mib"] = _rss_peak_mib(proc.pid)
    finally:
        serve_bench.stop(proc)
    return out


def decode_rates(
    url: str, max_tokens: int, clients: tuple[int, ...], rng: np.random.Generator
) -> dict[str, Any]:
    """One client's decode step (a long request less a 1-token one of the same prompt
    length) and output tokens/s at each number of concurrent clients."""
    long = min(_one_request_s(url, _prompt(rng, 32), 1 + max_tokens) for _ in range(2))
    short = min(_one_request_s(url, _prompt(rng, 32), 1) for _ in range(2))
    out: dict[str, Any] = {"step_s": (long - short) / max_tokens, "tokens_per_s": {}}
    for c, work in _client_work(clients):
        rate, _ = serve_bench.load(url, work, max_tokens, c, timeout_s=REQUEST_S)
        out["tokens_per_s"][c] = rate
        print(f"  c={c}: {rate:.1f} tokens/s", flush=True)
    return out


def transformers_part(hf: Path, args: argparse.Namespace, gguf_out: Path | None) -> dict:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    rng = np.random.default_rng(1)
    out: dict[str, Any] = {"ttft_s": {}}
    for n in args.lengths:
        times = []
        for _ in range(args.repeat if n <= 1024 else 1):
            ids = torch.tensor([_prompt(rng, n)])
            t0 = time.perf_counter()
            with torch.no_grad():
                model(ids, logits_to_keep=1)
            times.append(time.perf_counter() - t0)
        out["ttft_s"][n] = min(times)
        print(f"  transformers TTFT {n}: {out['ttft_s'][n] * 1e3:.0f} ms", flush=True)
    work = serve_bench.prompts(max(CLIENTS), SHAPE.config().vocab_size)
    out["tokens_per_s"] = serve_bench.transformers_generate(model, work, args.max_tokens, CLIENTS)
    if gguf_out is not None and not gguf_out.is_file():
        partial = gguf_out.with_suffix(".partial")
        tiny.write_gguf(partial, model, spm_vocab=True)
        partial.rename(gguf_out)
    return out


def _llama_generate(url: str, prompt: list[int], max_tokens: int, timeout_s: float) -> list:
    """llama-cpp-python's /v1/completions, greedy; as many placeholder ids as it generated.

    Its server takes text only: one letter per id, which the GGUF's sentencepiece-style
    vocabulary (no merges) tokenizes as one byte token each, so the prompt keeps its length."""
    text = "".join(chr(97 + t % 26) for t in prompt)
    body = {"prompt": text, "max_tokens": max_tokens, "temperature": 0.0}
    req = urllib.request.Request(
        f"{url}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        usage = json.loads(r.read())["usage"]
    return [0] * int(usage["completion_tokens"])


def llama_part(gguf_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    port = serve_bench._free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(args.llama_python), "-m", "llama_cpp.server", "--model", str(gguf_path)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "8192", "--n_threads", "2"]
    log = gguf_path.with_suffix(".server.log")  # a file: an unread pipe would fill and stall it
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.perf_counter() + 600
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"llama.cpp server exited: {log.read_text()[-800:]}")
        try:
            _llama_generate(url, [5, 6, 7], 1, 60)
            break
        except OSError:
            if time.perf_counter() > deadline:
                proc.kill()
                raise RuntimeError("llama.cpp server did not answer in 600 s") from None
            time.sleep(0.5)
    out: dict[str, Any] = {"tokens_per_s": {}}
    try:
        for c, work in _client_work():
            rate, _ = serve_bench.load(
                url, work, args.max_tokens, c, _llama_generate, timeout_s=REQUEST_S
            )
            out["tokens_per_s"][c] = rate
            print(f"  llama.cpp c={c}: {rate:.1f} tokens/s", flush=True)
        out["peak_rss_mib"] = _rss_peak_mib(proc.pid)
    finally:
        serve_bench.stop(proc)
    return out


def step_bytes(art: Path, context: int) -> int:
    """Bytes one decode step reads: every weight once (the tied table as the output
    projection), plus the K and V of `context` positions in every layer."""
    cfg = SHAPE.config()
    kv = 2 * cfg.block_count * cfg.attention_head_count_kv * cfg.head_dim * 4 * context
    return (art / "model.irpa").stat().st_size + kv


def markdown(r: dict[str, Any]) -> str:
    ours, hf, cpp = r["irforge"], r["transformers"], r.get("llama.cpp")
    lines = [f"{SHAPE.about.replace('bf16', 'f32 served')}, IREE {r['iree']}, CPU", ""]
    lines += [
        "| prompt tokens | irforge TTFT | transformers | ratio |",
        "| --- | --- | --- | --- |",
    ]
    for n in ours["ttft_s"]:
        a, b = ours["ttft_s"][n], hf["ttft_s"][n]
        lines.append(f"| {n} | {a * 1e3:.0f} ms | {b * 1e3:.0f} ms | {a / b:.2f} |")
    lines += ["", "| clients | irforge tokens/s | transformers | llama.cpp | irforge / best peer |"]
    lines.append("| --- | --- | --- | --- | --- |")
    for c in ours["tokens_per_s"]:  # int keys in this run, str ones read back from JSON
        a, b = ours["tokens_per_s"][c], hf["tokens_per_s"][c]
        d = {str(k): v for k, v in cpp["tokens_per_s"].items()}.get(str(c)) if cpp else None
        best = max(b, d or 0)
        dd = f"{d:.1f}" if d else "not run"
        lines.append(f"| {c} | {a:.1f} | {b:.1f} | {dd} | {a / best:.2f} |")
    lines += [
        "",
        f"- One client's decode step: {ours['step_s'] * 1e3:.0f} ms; it reads "
        f"{r['step_bytes'] / 2**30:.2f} GiB; copy bandwidth {r['bandwidth'] / 1e9:.1f} GB/s "
        f"-> {r['bandwidth_fraction'] * 100:.0f}% of the bound.",
        f"- Server peak RSS {ours['peak_rss_mib'] / 1024:.2f} GiB (weights "
        f"{r['weight_bytes'] / 2**30:.2f} GiB); cold start {ours['cold_start_s']:.0f} s"
        + (f"; llama.cpp server {cpp['peak_rss_mib'] / 1024:.2f} GiB" if cpp else ""),
    ]
    if "convert" in r:
        lines += ["", convert_markdown(r["convert"])]
    return "\n".join(lines)


def convert_markdown(c: dict[str, Any]) -> str:
    tools = c["tools"]
    lines = [f"convert/shard of {c['bytes'] / 1e9:.2f} GB in tmpfs, best of {c.get('repeat', 2)}:"]
    lines += ["", "| tool | seconds | peak RSS | / cp |", "| --- | --- | --- | --- |"]
    for name, t in tools.items():
        ref = tools["cp archive" if "shard" in name else "cp"]["seconds"]
        lines.append(
            f"| {name} | {t['seconds']:.2f} | {t['peak_mib']:.0f} MiB | {t['seconds'] / ref:.2f} |"
        )
    ratio = tools["irforge convert"]["seconds"] / tools["iree-convert-parameters"]["seconds"]
    lines.append(f"\n- irforge convert / iree-convert-parameters: {ratio:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    global SHAPE
    SHAPE = decode_steps.SHAPES[args.shape]  # "vocab": a quick run of the whole script
    args.tmpfs, args.work = args.tmpfs / args.shape, args.work / args.shape
    skip = set(filter(None, args.skip.split(",")))
    hf = args.tmpfs / "hf"
    args.work.mkdir(parents=True, exist_ok=True)
    write_weights(hf)
    report: dict[str, Any] = {"iree": version("iree-base-compiler")}
    if "convert" not in skip:
        report["convert"] = convert_part(hf, args.tmpfs, args.convert_repeat)
    if args.convert_only:
        print("\n" + convert_markdown(report["convert"]))
        return 0
    art, _ = build(hf, args.work)
    bandwidth, how = device_check.copy_bandwidth("local-task", "CPU")
    report["irforge"] = serve_part(art, args)
    gguf_path = args.work / "model-f32.gguf" if args.llama_python and "llama" not in skip else None
    report["transformers"] = transformers_part(hf, args, gguf_path)
    if gguf_path is not None:
        try:
            report["llama.cpp"] = llama_part(gguf_path, args)
        except (RuntimeError, OSError) as e:
            print(f"llama.cpp: {e}", flush=True)
    report["bandwidth"], report["bandwidth_how"] = bandwidth, how
    report["weight_bytes"] = (art / "model.irpa").stat().st_size
    report["step_bytes"] = step_bytes(art, 32 + args.max_tokens // 2)
    report["bandwidth_fraction"] = report["step_bytes"] / report["irforge"]["step_s"] / bandwidth
    print("\n" + markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    shutil.rmtree(args.tmpfs / "tmp", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
