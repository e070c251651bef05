"""`make demo`: serve a built folder, ask it two questions, print the answers, stop it.

    python examples/demo.py out/demo   # a folder from `irforge build smollm2 -o out/demo`

Sends one shortfin-style POST /generate and one streamed OpenAI /v1/chat/completions to an
`irforge serve` started on 127.0.0.1 for the occasion, then stops the server.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"


MODEL = "smollm2"  # the name the demo serves it under


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"irforge serve exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    raise SystemExit(f"irforge serve did not answer {url}/health within {timeout_s:.0f} s")


def post(url: str, body: dict) -> urllib.request.Request:
    return urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "out/demo")
    port = free_port()
    url = f"http://{HOST}:{port}"
    irforge = Path(sys.executable).parent / "irforge"
    server = subprocess.Popen(
        [str(irforge), "serve", str(folder), "--host", HOST, "--port", str(port)]
        + ["--model-name", MODEL]
    )
    try:
        wait_healthy(url, server)
        request = {
            "text": "The capital of France is",
            "sampling_params": {"max_completion_tokens": 16, "temperature": 0},
        }
        with urllib.request.urlopen(post(f"{url}/generate", request), timeout=60) as r:
            answer = json.load(r)
        print("POST /generate ->", json.dumps(answer))
        chat = {
            "model": MODEL,
            "stream": True,
            "max_tokens": 48,
            "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
        }
        print("POST /v1/chat/completions (stream) -> ", end="", flush=True)
        with urllib.request.urlopen(post(f"{url}/v1/chat/completions", chat), timeout=60) as r:
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                delta = json.loads(line[6:])["choices"][0].get("delta", {})
                print(delta.get("content", ""), end="", flush=True)
        print()
        print(
            "\nnext: `source .venv/bin/activate` puts irforge on PATH (or call .venv/bin/irforge),"
            f"\n  irforge run {folder} --prompt 'The capital of France is' --max-tokens 16"
            f"\n  irforge serve {folder}            # then curl http://127.0.0.1:8000/health"
            "\n  irforge models                    # the seed models, and what they need per device"
            "\n  irforge build llama-3.1-8b -o out/8b --target gfx942 --dry-run"
        )
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
