"""irforge serve --replicas: engines on Ray Serve (a local Ray cluster, loopback only) answer
as the one-process server does, route shared prefixes to one replica, survive a replica's
death, scale with load, and stopping leaves no Ray process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_serve import JSON, serving

pytest.importorskip("ray.serve")
pytestmark = pytest.mark.iree
RAY_PROCESSES = "raylet|gcs_server|ray::"
ENGINE_REPLICA = "ServeReplica:irforge:engine"  # an engine replica's process title
SHARED = [3 + (7 * j) % 50 for j in range(40)]  # 40 token ids: over 64 characters of prefix


def complete(url: str, body: dict) -> tuple[str, str]:
    """(text, the replica that answered), the text joined from the chunks when streamed."""
    req = urllib.request.Request(
        f"{url}/v1/completions", data=json.dumps(body).encode(), headers=JSON
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        replica = r.headers["x-irforge-replica"]
        if not body.get("stream"):
            return json.loads(r.read())["choices"][0]["text"], replica
        text = []
        for raw in r:
            line = raw.decode().strip()
            if line.startswith("data: {"):
                text += [c["text"] for c in json.loads(line[6:])["choices"]]
        return "".join(text), replica


def ray_processes() -> list[str]:
    return _pgrep(RAY_PROCESSES)


def engine_replicas() -> list[int]:
    return [int(line.split()[0]) for line in _pgrep(ENGINE_REPLICA)]


def _pgrep(pattern: str) -> list[str]:
    found = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True)
    return [line for line in found.stdout.splitlines() if "pgrep" not in line]


@contextmanager
def replicas(folder: Path, *args: str) -> Iterator[str]:
    """A `serve --replicas` server; afterwards it has exited 0 and no Ray process is left."""
    assert not ray_processes(), "a Ray cluster is already running here"
    with serving(folder, *args, timeout_s=240) as (url, proc):
        yield url
    assert proc.returncode == 0, proc.stdout.read() if proc.stdout else ""
    deadline = time.monotonic() + 30
    while ray_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_processes()


def body(prompt: list[int], i: int, **more: Any) -> dict[str, Any]:
    return {"prompt": prompt, "max_tokens": 6, "temperature": 0, "ignore_eos": True,
            "stream": i % 2 == 0, **more}  # fmt: skip


def test_two_replicas_answer_as_one_process_and_keep_prefixes_together(
    llama_artifacts: Path,
) -> None:
    plain = [body([5 + i % 11, 6, 7 + i % 5, 9], i) for i in range(48)]
    shared = [body([*SHARED, 60 + i], i) for i in range(16)]
    with serving(llama_artifacts) as (url, _):
        want = [complete(url, b)[0] for b in plain + shared]
    with replicas(llama_artifacts, "--replicas", "2") as url:
        sent = wait_until_both_replicas_answer(url)
        with ThreadPoolExecutor(32) as pool:
            got = list(pool.map(lambda b: complete(url, b), plain + shared))
        assert [text for text, _ in got] == want
        assert len({replica for _, replica in got}) == 2  # both replicas served
        # a prefix's first request picks a replica; the ones after follow it while the
        # load stays within a decode batch of the least-loaded (4 here)
        _, owner = complete(url, body([*SHARED, 1], 1))
        with ThreadPoolExecutor(4) as pool:
            after = list(pool.map(lambda b: complete(url, b)[1], shared))
        assert set(after) == {owner}
        sent += len(plain + shared) + 1 + len(shared)
        # one scrape holds every replica's series, told apart by a `replica` label
        families = {f.name: f for f in text_string_to_metric_families(get_text(f"{url}/metrics"))}
        received = families["irforge_requests_received"].samples
        assert {s.labels["replica"] for s in received} == {replica for _, replica in got}
        assert sum(s.value for s in received) == sent
        running = families["vllm:num_requests_running"].samples
        assert len({s.labels["replica"] for s in running}) == 2


def test_load_routing_spreads_a_shared_prefix(llama_artifacts: Path) -> None:
    """`--routing load`: the router without its prefix table sends requests that share a
    prefix to both replicas by load, and a scrape still covers both."""
    shared = [body([*SHARED, 60 + i], i) for i in range(16)]
    with serving(llama_artifacts) as (url, _):
        want = [complete(url, b)[0] for b in shared]
    with replicas(llama_artifacts, "--replicas", "2", "--routing", "load") as url:
        sent = wait_until_both_replicas_answer(url)
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda b: complete(url, b), shared))
        assert [text for text, _ in got] == want
        assert len({replica for _, replica in got}) == 2
        families = {f.name: f for f in text_string_to_metric_families(get_text(f"{url}/metrics"))}
        received = families["irforge_requests_received"].samples
        assert len(received) == 2 and sum(s.value for s in received) == sent + len(shared)


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read().decode()


def wait_until_both_replicas_answer(url: str, timeout_s: float = 60) -> int:
    """Serve is up once its controller runs both replicas; the front's router learns of the
    second one by Ray's long poll, which a loaded 2-core machine delays by seconds (CI once
    sent the whole batch to one replica). Idle single requests tie on load and spread."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while len(set(seen)) < 2:
        assert time.monotonic() < deadline, f"only {set(seen)} answered in {timeout_s} s"
        seen.append(complete(url, body([5, 6, 7, 9], 1, max_tokens=1))[1])
    return len(seen)  # requests sent


def test_a_killed_replica_ends_its_requests_cleanly_and_is_restarted(
    llama_artifacts: Path,
) -> None:
    outcomes: list[str] = []
    stop = threading.Event()

    def client(k: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            outcomes.append(one_request(url, body([5 + k, 6, 7 + i % 5], i, max_tokens=40)))

    with replicas(llama_artifacts, "--replicas", "2") as url:
        with ThreadPoolExecutor(8) as pool:
            running = [pool.submit(client, k) for k in range(8)]
            time.sleep(3)
            victim = engine_replicas()[0]
            os.kill(victim, signal.SIGKILL)
            time.sleep(5)
            stop.set()
            for f in running:
                f.result(timeout=120)  # a hang fails here
        assert set(outcomes) <= {"answer", "error"}, set(outcomes)
        assert outcomes.count("answer") > 20
        deadline = time.monotonic() + 120
        while len(engine_replicas()) < 2 or victim in engine_replicas():
            assert time.monotonic() < deadline, "the killed replica was not restarted"
            time.sleep(1)
        after = [one_request(url, body([5, 6, 7], i)) for i in range(8)]
        assert after == ["answer"] * 8


def one_request(url: str, b: dict[str, Any]) -> str:
    """ "answer" (a whole answer), "error" (a JSON error, or a stream that ends in an error
    event), or what went wrong."""
    req = urllib.request.Request(f"{url}/v1/completions", data=json.dumps(b).encode(), headers=JSON)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            if not b["stream"]:
                return "answer" if json.loads(r.read())["choices"] else "empty"
            lines = [raw.decode().strip() for raw in r]
    except urllib.error.HTTPError as e:
        error = json.loads(e.read())["error"]
        return "error" if e.code == 503 and error["code"] == "REPLICA_STOPPED" else f"{e.code}"
    events = [line[6:] for line in lines if line.startswith("data: ")]
    if events and events[-1] == "[DONE]":
        return "answer"
    if events and "error" in json.loads(events[-1]):
        return "error"
    return f"cut: {events[-1:]}"


def test_replicas_scale_with_the_queue(llama_artifacts: Path) -> None:
    stop = threading.Event()

    def client(k: int) -> None:
        while not stop.is_set():
            complete(url, body([5 + k, 6, 7], 0, max_tokens=60))

    with replicas(llama_artifacts, "--min-replicas", "1", "--max-replicas", "2") as url:
        assert len(engine_replicas()) == 1
        # 12 streams against a target of 4 (the largest decode batch) per replica
        with ThreadPoolExecutor(12) as pool:
            running = [pool.submit(client, k) for k in range(12)]
            deadline = time.monotonic() + 90
            while len(engine_replicas()) < 2 and time.monotonic() < deadline:
                time.sleep(1)
            stop.set()
            for f in running:
                f.result(timeout=120)
        assert len(engine_replicas()) == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--replicas", "2", "--routing", "random"], "routing: Input should be 'prefix' or 'load'"),
        (["--min-replicas", "2"], "give both min_replicas and max_replicas"),
        (["--replicas", "2", "--min-replicas", "1", "--max-replicas", "2"], "not both"),
        (["--min-replicas", "3", "--max-replicas", "2"], "min_replicas 3 > max_replicas 2"),
    ],
)
def test_bad_replica_options_are_one_line_errors_before_ray_starts(
    llama_artifacts: Path, options: list[str], message: str
) -> None:
    from typer.testing import CliRunner

    from irforge.cli.main import app

    result = CliRunner().invoke(app, ["serve", str(llama_artifacts), *options])
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not ray_processes()


def test_a_scrape_no_replica_answers_is_a_503_json_error() -> None:
    """Not an empty 200, which a scraper would read as an application with no series."""
    import asyncio

    from starlette.requests import Request

    from irforge.serve.ray_app import Front

    async def no_answer(request: object, replica: str | None) -> None:
        return None

    front = SimpleNamespace(_metrics_text=no_answer)  # the scrape's logic alone, without Ray
    scope = {"type": "http", "method": "GET", "path": "/metrics", "headers": []}
    response = asyncio.run(Front.scrape(front, Request(scope)))  # type: ignore[arg-type]
    assert response.status_code == 503
    error = json.loads(bytes(response.body))["error"]
    assert error["code"] == "REPLICA_STOPPED" and "no engine replica answered" in error["message"]
