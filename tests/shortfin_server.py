"""Run AMD's shortfin LLM server (`shortfin[apps]==3.9.0`) on irforge's artifacts, for tests.

`shortfin_server(...)` starts `python -m shortfin_apps.llm.server` on 127.0.0.1 and a free port,
waits for GET /health, yields the base URL and stops the process on exit. `generate(...)` asks
it for greedy tokens. HTTP is plain urllib, so this module needs nothing beyond the stdlib.

What shortfin 3.9 needs in the artifact folder (read from its source and checked by running it):

- `config.json`: exactly `ModelParams`' keys (unknown top-level keys raise); the
  `paged_kv_cache` block ignores unknown keys; `kv_cache_dtype` is a `shortfin.array` dtype
  name ("float32", "float16", ...).
- `tokenizer_config.json`: only `eos_token` is read, a string (or `{"content": ...}`) that is
  looked up with `tokenizer.json`'s `token_to_id`; a missing key is a KeyError at startup.
- Greedy decoding: with one beam shortfin always takes the argmax of the (log-softmaxed,
  temperature-scaled) logits on the host; `top_k`/`top_p` of the request are only used by
  the native (`--use_native_impls`) path. Temperature 1.0 is the only value a model exported
  with softmax/log_softmax accepts, and it does not change an argmax.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return text[-limit:]


def _health(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout_s) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _show(cmd: list[str]) -> str:
    return " ".join("<bootstrap>" if a == _BOOTSTRAP else a for a in cmd)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# shortfin 3.9.0 bug: with `return_input_ids: true` it hands a Python list to
# `FastAPIResponder.send_response`, whose `starlette.Response(list)` raises
# "AttributeError: 'list' object has no attribute 'encode'" after marking the request as
# answered, so the client waits forever. This bootstrap runs the unmodified server module
# with one fix: a non-bytes, non-Response payload is sent as JSON. Nothing else changes.
_BOOTSTRAP = """
import json, runpy
from shortfin.interop import fastapi as _sf_fastapi
_send = _sf_fastapi.FastAPIResponder.send_response
def _send_json(self, response):
    if not isinstance(response, (bytes, str, _sf_fastapi.Response)):
        body = json.dumps(response, default=int)  # token ids are numpy int64
        response = _sf_fastapi.Response(body, media_type="application/json")
    return _send(self, response)
_sf_fastapi.FastAPIResponder.send_response = _send_json
runpy.run_module("shortfin_apps.llm.server", run_name="__main__", alter_sys=True)
"""


def server_command(
    artifact_dir: Path, *, vmfb: Path, parameters: list[Path], port: int
) -> list[str]:
    """The command line `shortfin_server` runs: `python -m shortfin_apps.llm.server ...`
    behind a small bootstrap (see `_BOOTSTRAP`)."""
    artifact_dir = Path(artifact_dir)
    return [
        sys.executable,
        "-c",
        _BOOTSTRAP,
        f"--tokenizer_json={artifact_dir / 'tokenizer.json'}",
        f"--tokenizer_config_json={artifact_dir / 'tokenizer_config.json'}",
        f"--model_config={artifact_dir / 'config.json'}",
        f"--vmfb={vmfb}",
        "--parameters",
        *[str(p) for p in parameters],
        "--device=local-task",
        f"--host={HOST}",
        f"--port={port}",
    ]


@contextlib.contextmanager
def shortfin_server(
    artifact_dir: Path, *, vmfb: Path, parameters: list[Path], timeout_s: float = 120
) -> Iterator[str]:
    """Serve `artifact_dir` with shortfin on CPU; yields the base URL ("http://127.0.0.1:PORT").

    Raises RuntimeError with the tail of the server's log if it exits or does not answer
    GET /health with 200 within `timeout_s` seconds. The log (stdout and stderr) goes to a
    temporary file that is removed on exit; on a failure inside the block its tail is
    printed to stderr, so pytest shows it.
    """
    if not parameters:
        raise ValueError("shortfin_server needs at least one parameter file")
    port = _free_port()
    url = f"http://{HOST}:{port}"
    cmd = server_command(artifact_dir, vmfb=vmfb, parameters=parameters, port=port)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    fd, log_name = tempfile.mkstemp(prefix="shortfin-", suffix=".log")
    log_path = Path(log_name)
    with os.fdopen(fd, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"shortfin server exited with code {proc.returncode} before answering "
                    f"/health.\ncommand: {_show(cmd)}\nlog tail:\n{_tail(log_path)}"
                )
            if _health(url):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"shortfin server did not answer {url}/health within {timeout_s:.0f} s."
                    f"\ncommand: {_show(cmd)}\nlog tail:\n{_tail(log_path)}"
                )
            time.sleep(0.25)
        try:
            yield url
        except BaseException:
            print(f"--- shortfin server log tail ({log_path}) ---", file=sys.stderr)
            print(_tail(log_path), file=sys.stderr)
            raise
    finally:
        _stop(proc)
        with contextlib.suppress(OSError):
            log_path.unlink()


def generate(url: str, input_ids: list[int], max_tokens: int, timeout_s: float = 120) -> list[int]:
    """Greedy completion of one pre-tokenized prompt; returns only the generated ids.

    With `return_input_ids: true` (and the bootstrap's fix) shortfin replies with a JSON list
    holding one list of ids per beam (one here); the prompt is not included. It returns
    `max_tokens` ids, or fewer when the model emits the eos token of `tokenizer_config.json`:
    then generation stops and the eos id is the last element. A failed prefill/decode
    invocation is only logged by the server and answered with an empty list; that raises.
    """
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    body = {
        "input_ids": list(map(int, input_ids)),
        "sampling_params": {
            "max_completion_tokens": int(max_tokens),
            # One beam => shortfin takes the argmax; temperature 1.0 leaves logits as they are.
            "temperature": 1.0,
            "num_beams": 1,
        },
        "return_input_ids": True,
    }
    req = urllib.request.Request(
        f"{url}/generate",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            payload = r.read()
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")
        raise RuntimeError(f"shortfin /generate answered {e.code}: {detail}") from e
    except TimeoutError as e:
        # shortfin 3.9 never answers a request whose prefill/decode invocation raised: its
        # failure handler itself fails ("... no attribute 'free_cache_pages'").
        raise RuntimeError(
            f"shortfin /generate did not answer within {timeout_s:.0f} s; an invocation "
            "error in the server log is the usual cause"
        ) from e
    result = json.loads(payload) if payload else []
    if isinstance(result, dict):
        raise RuntimeError(f"shortfin /generate answered an error: {result}")
    # [[ids of beam 0]] for one prompt and one beam.
    if result and isinstance(result[0], list):
        if len(result) != 1:
            raise RuntimeError(f"expected one beam from shortfin, got {len(result)}")
        result = result[0]
    if not result:
        raise RuntimeError(
            "shortfin /generate returned no tokens: its prefill/decode invocation failed "
            "(see the server log)"
        )
    return [int(t) for t in result]
