"""irforge serve --replicas: engines on Ray Serve (a local Ray cluster, loopback only) answer
as the one-process server does, and stopping leaves no Ray process behind."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_serve import JSON, serving

pytest.importorskip("ray.serve")
pytestmark = pytest.mark.iree
RAY_PROCESSES = "raylet|gcs_server|ray::"


def complete(url: str, body: dict) -> str:
    """The completion's text, joined from the stream's chunks when streamed."""
    req = urllib.request.Request(
        f"{url}/v1/completions", data=json.dumps(body).encode(), headers=JSON
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        if not body.get("stream"):
            return json.loads(r.read())["choices"][0]["text"]
        text = []
        for raw in r:
            line = raw.decode().strip()
            if line.startswith("data: {"):
                text += [c["text"] for c in json.loads(line[6:])["choices"]]
        return "".join(text)


def ray_processes() -> list[str]:
    found = subprocess.run(["pgrep", "-af", RAY_PROCESSES], capture_output=True, text=True)
    return [line for line in found.stdout.splitlines() if "pgrep" not in line]


def test_two_replicas_answer_as_one_process_and_stop_clean(llama_artifacts: Path) -> None:
    assert not ray_processes(), "a Ray cluster is already running here"
    bodies = [
        {
            "prompt": [5 + i % 11, 6, 7 + i % 5, 9],
            "max_tokens": 6,
            "temperature": 0,
            "ignore_eos": True,
            "stream": i % 2 == 0,
        }  # fmt: skip
        for i in range(64)
    ]
    with serving(llama_artifacts) as (url, _):
        want = [complete(url, b) for b in bodies]
    with serving(llama_artifacts, "--replicas", "2", timeout_s=240) as (url, proc):
        with ThreadPoolExecutor(32) as pool:
            got = list(pool.map(lambda b: complete(url, b), bodies))
        assert got == want
    assert proc.returncode == 0, proc.stdout.read() if proc.stdout else ""
    deadline = time.monotonic() + 30
    while ray_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_processes()
