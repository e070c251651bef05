"""Benchmark `irforge serve` against shortfin (`shortfin[apps]==3.9.0`) and transformers' generate.

Builds one Llama-shaped model (random f32 weights, seeded), exports and compiles it for the CPU
once, then in the same run serves those same artifacts with irforge and with shortfin, driving
both through shortfin's /generate API with the same client (tests/shortfin_server.py):

- output tokens/s with 1, 8, 16 and 32 concurrent clients (each sends requests back to back);
- TTFT p50/p99: the latency of 1-token requests at the same concurrency (shortfin 3.9 does not
  stream, so its first token is only seen as a whole 1-token response; irforge is measured the
  same way);
- cold start: process start to the first generated token, for both servers;
- transformers' `generate` on the CPU with the same weights, one static batch per concurrency.

    python bench/serve.py [--size tiny|small] [--reps 3] [--requests 64] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import transformers

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

import shortfin_server  # noqa: E402  (tests/: the shortfin launcher and /generate client)

import tiny  # noqa: E402

CONCURRENCY = (1, 8, 16, 32)
REQUEST_TIMEOUT_S = 60  # shortfin 3.9 can stop answering (see bench/RESULTS.md)
# "tiny" is the test suite's model (serving overhead dominates); "small" is ~25M parameters
SIZES = {
    "tiny": dict(max_position_embeddings=512),
    "small": dict(
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
        rope_scaling=None,
    ),
}
EXPORT = dict(
    block_seq_stride=16,
    prefill_batch_sizes=(1, 4, 8),
    decode_batch_sizes=(1, 4, 8, 16, 32),
    device_block_count=1024,
)


def build(data: Path, size: str) -> tuple[Path, Path]:
    """(HF folder, artifact folder), made once and reused."""
    hf, art = data / size / "hf", data / size / "art"
    if not (art / "model.cpu.vmfb").is_file():
        from irforge.stages.compile import compile_folder
        from irforge.stages.convert import convert
        from irforge.stages.export import export

        if not (hf / "config.json").is_file():
            tiny.save_hf(hf, tiny.llama_config(**SIZES[size]))
        archive = convert(hf, out=data / size / "src" / "model.irpa").out
        from irforge.artifacts.manifest import ExportOptions

        export(archive, out_dir=art, options=ExportOptions(**EXPORT))
        compile_folder(art, target="cpu")
    return hf, art


def prompts(n: int, vocab: int) -> list[list[int]]:
    """n prompts of 16 to 63 tokens, special ids (0-2) left out."""
    rng = np.random.default_rng(0)
    return [rng.integers(3, vocab, 16 + (13 * i) % 48).tolist() for i in range(n)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def irforge_command(art: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "irforge", "serve", str(art), "--port", str(port)]


def shortfin_command(art: Path, port: int) -> list[str]:
    vmfb, params = art / "model.cpu.vmfb", [art / "model.irpa"]
    return shortfin_server.server_command(art, vmfb=vmfb, parameters=params, port=port)


def start(command: list[str], url: str, timeout_s: float = 180) -> tuple[subprocess.Popen, float]:
    """Start a server; (process, seconds from spawn to the first generated token)."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = started + timeout_s
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{command[:4]} exited with {proc.returncode}")
        try:
            shortfin_server.generate(url, [5, 6, 7], 1, timeout_s=30)
            return proc, time.perf_counter() - started
        except (OSError, RuntimeError):
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"{command[:4]} gave no token within {timeout_s} s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def load(
    url: str,
    work: list[list[int]],
    max_tokens: int,
    clients: int,
    generate: Callable[[str, list[int], int, float], list] = shortfin_server.generate,
    timeout_s: float = REQUEST_TIMEOUT_S,
) -> tuple[float, list]:
    """`clients` threads take prompts from `work` until none is left: (tokens/s, latencies).

    `generate(url, prompt, max_tokens, timeout_s)` returns the generated ids (shortfin's
    /generate by default; bench/scale.py passes llama.cpp's API)."""
    lock, latencies, tokens, errors = threading.Lock(), [], [0], []
    queue = list(reversed(work))

    def client() -> None:
        while True:
            with lock:
                if not queue:
                    return
                prompt = queue.pop()
            t0 = time.perf_counter()
            try:
                out = generate(url, prompt, max_tokens, timeout_s)
            except RuntimeError as e:
                errors.append(e)
                return
            with lock:
                latencies.append(time.perf_counter() - t0)
                tokens[0] += len(out)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(work)} requests failed: {errors[0]}")
    return tokens[0] / (time.perf_counter() - t0), latencies


def measure(url: str, work: list[list[int]], max_tokens: int) -> dict[int, dict | None]:
    """Per concurrency: output tokens/s and the latencies of 1-token requests (TTFT); None
    for a level where requests failed (and every level after it: the server is stuck)."""
    load(url, work[:8], 8, 8)  # a first call of each program pays for its lookup
    out: dict[int, dict | None] = {c: None for c in CONCURRENCY}
    for c in CONCURRENCY:
        try:
            tokens_per_s, _ = load(url, work[: max(len(work) // 2, 2 * c)], max_tokens, c)
            _, ttft = load(url, work[: max(16, 2 * c)], 1, c)
        except RuntimeError as e:
            print(f"  c={c}: FAILED: {e}", flush=True)
            break
        out[c] = {"tokens_per_s": tokens_per_s, "ttft_s": ttft}
        print(f"  c={c}: {tokens_per_s:.0f} tokens/s, TTFT p50 {pct(ttft, 50) * 1e3:.0f} ms")
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def transformers_generate(
    model: Any, work: list[list[int]], max_tokens: int, levels: Iterable[int] = CONCURRENCY
) -> dict[int, float]:
    """Output tokens/s of one static batch of `c` prompts (left padded), greedy, no eos stop."""
    import torch

    out = {}
    for c in levels:
        batch = work[:c]
        width = max(map(len, batch))
        ids = torch.tensor([[0] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.no_grad():
            t0 = time.perf_counter()
            model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=0,
            )
            out[c] = c * max_tokens / (time.perf_counter() - t0)
        print(f"  transformers c={c}: {out[c]:.1f} tokens/s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).parent / "data" / "serve")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3, help="server starts per server")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()
    hf, art = build(args.data, args.size)
    work = prompts(args.requests, tiny.llama_config(**SIZES[args.size]).vocab_size)
    commands = {"irforge": irforge_command, "shortfin": shortfin_command}
    runs: dict[str, list] = {name: [] for name in commands}
    hf_runs = []
    model = transformers.AutoModelForCausalLM.from_pretrained(hf).eval()
    # shortfin busy-polls a core even when idle: one server at a time, and the three
    # contenders take turns in every repetition, so that all see the same drifting machine
    for rep in range(args.reps):
        for name, command in commands.items():
            port = _free_port()
            url = f"http://127.0.0.1:{port}"
            proc, cold = start(command(art, port), url)
            print(f"{name} #{rep + 1}: cold start {cold:.2f} s", flush=True)
            try:
                runs[name].append({"cold_start_s": cold, **measure(url, work, args.max_tokens)})
            finally:
                stop(proc)
        print(f"transformers #{rep + 1}", flush=True)
        hf_runs.append(transformers_generate(model, work, args.max_tokens))
    reference = {c: statistics.median(r[c] for r in hf_runs) for c in CONCURRENCY}
    print(report(runs, reference))
    if args.json:
        args.json.write_text(json.dumps({"servers": runs, "transformers": hf_runs}, indent=2))


def summary(runs: list[dict]) -> dict:
    """Median tokens/s over runs; TTFT percentiles over every run's latencies; None for a
    concurrency no run completed."""
    out: dict = {"cold_start_s": statistics.median(r["cold_start_s"] for r in runs)}
    for c in CONCURRENCY:
        done = [r[c] for r in runs if r[c] is not None]
        ttft = [x for d in done for x in d["ttft_s"]]
        out[c] = done and {
            "tokens_per_s": statistics.median(d["tokens_per_s"] for d in done),
            "p50": pct(ttft, 50),
            "p99": pct(ttft, 99),
            "runs": f"{len(done)}/{len(runs)}",
        }
    return out


def report(runs: dict[str, list], hf: dict[int, float]) -> str:
    a, b = summary(runs["irforge"]), summary(runs["shortfin"])
    lines = [
        "| clients | irforge tok/s | shortfin tok/s | ratio | transformers tok/s | ratio "
        "| irforge TTFT p50 / p99 ms | shortfin TTFT p50 / p99 ms | ratio p50 / p99 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in CONCURRENCY:
        x, y = a[c], b[c]
        if not x:
            lines.append(f"| {c} | failed | | | | | | | |")
            continue
        ours = f"| {c} | {x['tokens_per_s']:.0f} "
        hf_cells = f"| {hf[c]:.0f} | {x['tokens_per_s'] / hf[c]:.2f}x "
        ttft = f"| {x['p50'] * 1e3:.0f} / {x['p99'] * 1e3:.0f} "
        if not y:
            lines.append(ours + "| no answer | - " + hf_cells + ttft + "| no answer | - |")
            continue
        lines.append(
            ours
            + f"| {y['tokens_per_s']:.0f} | {x['tokens_per_s'] / y['tokens_per_s']:.2f}x "
            + hf_cells
            + ttft
            + f"| {y['p50'] * 1e3:.0f} / {y['p99'] * 1e3:.0f} "
            + f"| {y['p50'] / x['p50']:.2f}x / {y['p99'] / x['p99']:.2f}x |"
        )
    ca, cb = a["cold_start_s"], b["cold_start_s"]
    lines.append(
        f"\nCold start, process start to first token (median of {len(runs['irforge'])}): "
        f"irforge {ca:.2f} s, shortfin {cb:.2f} s ({cb / ca:.2f}x)."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
