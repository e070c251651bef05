"""`irforge serve` as a real process on loopback, driven by real clients: the `openai` package,
shortfin's /generate client (tests/shortfin_server.py), raw HTTP for errors and disconnects."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import openai
import pytest
import shortfin_server
import uvicorn
from typer.testing import CliRunner

from irforge.cli.main import app as cli
from irforge.engine import Engine
from irforge.engine.text import TextCodec
from irforge.runtime import Session, generate
from irforge.serve.app import create_app

pytestmark = pytest.mark.iree
HOST = "127.0.0.1"
BASE = [5, 17, 3, 99, 42, 7, 250, 1, 8, 64, 33, 12, 2, 77, 190, 4, 23, 56, 9, 11]
TEXT = "the quick brown fox jumps over the lazy dog"
JSON = {"Content-Type": "application/json"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(
    folder: Path, *args: str, timeout_s: float = 60
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`python -m irforge serve FOLDER` on a free port; yields (base URL, process)."""
    port = _free_port()
    cmd = [sys.executable, "-m", "irforge", "serve", str(folder), "--port", str(port), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"server did not start: {proc.communicate()[0][-3000:]}")
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def post(url: str, body: object, *, raw: bytes | None = None) -> tuple[int, Message, object]:
    """(status, headers, parsed JSON body) of a POST; errors are returned, not raised."""
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=JSON)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read())


def metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    found = re.findall(r"^((?:irforge_|vllm:)\w+(?:\{[^}]*\})?) (\S+)$", text, re.M)
    return {name: float(value) for name, value in found}


def wait_all_pages_free(url: str, timeout_s: float = 15) -> dict[str, float]:
    """The metrics once the engine is idle (every page free, nothing running or queued), or
    at the deadline. A request cancelled in the queue leaves it at the scheduler's next turn,
    which a loaded machine can delay past the answer that cancelled it (CI saw it queued)."""
    deadline = time.monotonic() + timeout_s
    while True:
        m = metrics(url)
        free = m["irforge_kv_pages_free"] == m["irforge_kv_pages_total"]
        idle = not m["irforge_running_requests"] and not m["irforge_queue_depth"]
        if (free and idle) or time.monotonic() > deadline:
            return m
        time.sleep(0.05)


@pytest.fixture(scope="module")
def server(llama_artifacts: Path) -> Iterator[str]:
    with serving(llama_artifacts, "--model-name", "tiny") as (url, _):
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="none", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def session(llama_artifacts: Path) -> Session:
    return Session(llama_artifacts, page_count=64)


def solo(session: Session, prompt: list[int], max_tokens: int) -> list[int]:
    eos = session.config.eos_token_ids
    return generate(session, [prompt], max_tokens=max_tokens, eos_ids=eos).tokens[0]


def irforge_run(folder: Path, prompt: str | list[int], max_tokens: int) -> dict:
    given = (
        ["--prompt", prompt]
        if isinstance(prompt, str)
        else ["--prompt-ids", ",".join(map(str, prompt))]
    )
    args = ["run", str(folder), *given, "--max-tokens", str(max_tokens), "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# -- real clients ------------------------------------------------------------------------------


def test_openai_completions_equal_irforge_run(
    client: openai.OpenAI, server: str, llama_artifacts: Path
) -> None:
    want = irforge_run(llama_artifacts, TEXT, 12)
    done = client.completions.create(model="tiny", prompt=TEXT, max_tokens=12, temperature=0)
    assert done.choices[0].text == want["text"]
    assert done.usage.completion_tokens == len(want["tokens"])
    assert done.usage.prompt_tokens == len(want["prompt_ids"])
    chunks = client.completions.create(
        model="tiny", prompt=TEXT, max_tokens=12, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in chunks) == want["text"]
    # the same ids through shortfin's /generate
    body = {
        "text": TEXT,
        "sampling_params": {"max_completion_tokens": 12},
        "return_input_ids": True,
    }
    assert post(f"{server}/generate", body)[2] == [want["tokens"]]


def _hf_logprobs(llama_dir: Path, prompt: list[int], tokens: list[int]) -> Any:
    """transformers' f32 log-softmax at each generated position: [len(tokens), vocab]."""
    import torch
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    with torch.no_grad():
        logits = hf(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1]
    return torch.log_softmax(logits.float(), dim=-1)


def test_logprobs_are_transformers_log_softmax(
    client: openai.OpenAI, session: Session, llama_artifacts: Path, llama_dir: Path
) -> None:
    """/v1/completions logprobs (streamed too) and chat logprobs/top_logprobs: the chosen and
    the likeliest tokens' log-probabilities equal transformers' f32 log-softmax (1e-4)."""
    codec = TextCodec(llama_artifacts)
    prompt = codec.encode(TEXT)
    done = client.completions.create(
        model="tiny", prompt=TEXT, max_tokens=6, temperature=0, logprobs=3
    )
    lp = done.choices[0].logprobs
    tokens = solo(session, prompt, 6)
    want = _hf_logprobs(llama_dir, prompt, tokens)
    assert len(lp.token_logprobs) == len(tokens) and lp.text_offset[0] == 0
    for step, (got, top) in enumerate(zip(lp.token_logprobs, lp.top_logprobs, strict=True)):
        best = want[step].topk(3)
        assert abs(got - want[step].max().item()) < 1e-4  # greedy: the chosen is the likeliest
        expected = {
            codec.piece(int(i)): v.item() for v, i in zip(best.values, best.indices, strict=True)
        }
        assert set(top) == set(expected)
        assert all(abs(top[k] - v) < 1e-4 for k, v in expected.items())
    # (the pieces need not join to the text: the tiny vocabulary splits characters into bytes)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(tokens))]
    chunks = list(
        client.completions.create(
            model="tiny", prompt=TEXT, max_tokens=6, temperature=0, logprobs=3, stream=True
        )
    )
    streamed = [x for c in chunks if c.choices[0].logprobs for x in c.choices[0].logprobs.tokens]
    offsets = [
        o for c in chunks if c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset
    ]
    assert streamed == lp.tokens and offsets == lp.text_offset

    messages = [{"role": "user", "content": TEXT}]
    chat = client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = chat.choices[0].logprobs.content
    ids = codec.chat_ids(messages)
    tokens = solo(session, ids, 4)
    want = _hf_logprobs(llama_dir, ids, tokens)
    assert len(content) == len(tokens)
    for step, entry in enumerate(content):
        assert abs(entry.logprob - want[step].max().item()) < 1e-4
        assert [t.token for t in entry.top_logprobs] == [
            codec.piece(int(i)) for i in want[step].topk(2).indices
        ]
        assert entry.bytes == list(entry.token.encode())


def test_echo_scores_the_prompt_like_transformers(
    client: openai.OpenAI, llama_dir: Path, llama_artifacts: Path
) -> None:
    """echo with logprobs, as lm-evaluation-harness's local-completions asks for
    log-likelihoods (token ids in, max_tokens 1): the prompt's log-probabilities are
    transformers' f32 log-softmax (1e-4), its first token's None."""
    import torch
    import transformers

    prompt = [5, 17, 3, 99, 42, 7, 250, 1, 8, 64, 33, 12, 2, 77, 190, 4, 23, 56, 9, 11] * 2
    done = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=1, temperature=0, logprobs=2, echo=True
    )
    lp = done.choices[0].logprobs
    assert len(lp.token_logprobs) == len(prompt) + 1 and lp.token_logprobs[0] is None
    assert lp.top_logprobs[0] is None
    hf = transformers.AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    with torch.no_grad():
        want = torch.log_softmax(hf(torch.tensor([prompt])).logits[0].float(), dim=-1)
    codec = TextCodec(llama_artifacts)
    for i in range(1, len(prompt)):
        assert abs(lp.token_logprobs[i] - want[i - 1, prompt[i]].item()) < 1e-4
        best = {codec.piece(int(t)) for t in want[i - 1].topk(2).indices}
        assert best <= set(lp.top_logprobs[i])  # the 2 likeliest, plus the prompt's own
    assert done.choices[0].text.startswith(codec.decode(prompt))
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    # without logprobs, echo only prepends the prompt's text
    plain = client.completions.create(model="tiny", prompt=TEXT, max_tokens=3, echo=True, seed=0)
    assert plain.choices[0].text.startswith(TEXT) and plain.choices[0].logprobs is None
    # streamed, as vLLM streams it: the prompt (and its logprobs) first, then the tokens;
    # joined, the same text and logprobs as the whole answer
    args = dict(model="tiny", prompt=prompt, max_tokens=4, temperature=0, logprobs=2, echo=True)
    whole = client.completions.create(**args).choices[0]
    chunks = [c.choices[0] for c in client.completions.create(**args, stream=True)]
    assert chunks[0].text == codec.decode(prompt)
    assert len(chunks[0].logprobs.tokens) == len(prompt)
    assert "".join(c.text for c in chunks) == whole.text
    parts = [c.logprobs for c in chunks if c.logprobs]
    for field in ("tokens", "token_logprobs", "text_offset"):
        assert [x for p in parts for x in getattr(p, field)] == getattr(whole.logprobs, field)


def test_generate_return_logprob_is_transformers_log_softmax(
    server: str, llama_dir: Path, llama_artifacts: Path
) -> None:
    """shortfin's /generate with return_logprob (SGLang's fields, which shortfin declares):
    [logprob, id, text] per generated and per prompt token from logprob_start_len, equal to
    transformers' f32 log-softmax (1e-4); the prompt's first token has None."""
    import torch
    import transformers

    prompt = [5, 17, 3, 99, 42, 7, 250, 1, 8, 64, 33, 12]
    body = {
        "input_ids": prompt,
        "sampling_params": {"max_completion_tokens": 3},
        "return_logprob": True,
        "logprob_start_len": 0,
        "top_logprobs_num": 2,
        "return_text_in_logprobs": True,
    }
    status, _, answer = post(f"{server}/generate", body)
    assert status == 200
    meta = answer["responses"][0]["responses"][0]["meta_info"]
    out = meta["output_token_logprobs"]
    tokens = [t for _, t, _ in out]
    hf = transformers.AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    with torch.no_grad():
        logits = hf(torch.tensor([prompt + tokens])).logits[0].float()
    want = torch.log_softmax(logits, dim=-1)
    codec = TextCodec(llama_artifacts)
    assert len(out) == 3 and meta["completion_tokens"] == 3
    for step, (lp, token, piece) in enumerate(out):
        row = want[len(prompt) - 1 + step]
        assert token == int(row.argmax()) and abs(lp - row[token].item()) < 1e-4
        assert piece == codec.piece(token)
        top = meta["output_top_logprobs"][step]
        assert [t for _, t, _ in top] == [int(i) for i in row.topk(2).indices]
    given = meta["input_token_logprobs"]
    assert [t for _, t, _ in given] == prompt and given[0][0] is None
    assert meta["input_top_logprobs"][0] is None
    for j in range(1, len(prompt)):
        assert abs(given[j][0] - want[j - 1, prompt[j]].item()) < 1e-4
    later = post(f"{server}/generate", {**body, "logprob_start_len": 5})[2]
    later_meta = later["responses"][0]["responses"][0]["meta_info"]
    assert [t for _, t, _ in later_meta["input_token_logprobs"]] == prompt[5:]
    # no return_logprob: shortfin's plain answer
    plain = post(f"{server}/generate", {"input_ids": prompt})[2]
    assert "meta_info" not in plain["responses"][0]["responses"][0]
    clash = post(f"{server}/generate", {**body, "return_input_ids": True})
    assert clash[0] == 400 and "return_input_ids" in json.dumps(clash[2])
    assert post(f"{server}/generate", {**body, "top_logprobs_num": 21})[0] == 422


def test_n_choices_and_best_of(client: openai.OpenAI) -> None:
    """n seeded choices are the n single requests seeded seed, seed + 1, ...; best_of returns
    the candidate with the highest cumulative logprob (OpenAI's and vLLM's ranking)."""
    args = dict(model="tiny", prompt=TEXT, max_tokens=8, temperature=1.0, seed=11)
    many = client.completions.create(n=3, logprobs=0, **args)
    assert [c.index for c in many.choices] == [0, 1, 2]
    for j, choice in enumerate(many.choices):
        one = client.completions.create(**{**args, "seed": 11 + j})
        assert choice.text == one.choices[0].text
    assert len({c.text for c in many.choices}) > 1  # sampled apart
    best = client.completions.create(n=1, best_of=3, **args)
    assert len(best.choices) == 1 and best.choices[0].logprobs is None  # not asked for
    score = [sum(c.logprobs.token_logprobs) for c in many.choices]
    assert best.choices[0].text == many.choices[score.index(max(score))].text
    assert best.usage.completion_tokens == many.usage.completion_tokens  # every copy counted
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": TEXT}], max_tokens=4, n=2, seed=3
    )
    assert [c.index for c in chat.choices] == [0, 1]


SCHEMA = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "color": {"enum": ["red", "green", "blue"]},
        "size": {"type": "integer", "minimum": 0, "maximum": 9},
    },
    "required": ["ok", "color", "size"],
    "additionalProperties": False,
}


def test_structured_output_parses_and_validates(client: openai.OpenAI) -> None:
    """The tiny model's random weights would never write JSON; masked by the grammar, what
    it writes parses and validates against the schema (jsonschema), sampled or greedy."""
    import jsonschema

    for seed in range(3):
        done = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": TEXT}],
            max_tokens=200,
            seed=seed,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": SCHEMA},
            },
        )
        assert done.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(done.choices[0].message.content), SCHEMA)
    # vLLM's spellings on completions
    done = client.completions.create(
        model="tiny", prompt=TEXT, max_tokens=200, temperature=0, extra_body={"guided_json": SCHEMA}
    )
    assert done.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(done.choices[0].text), SCHEMA)
    choices = ["yes", "no", "maybe so"]
    done = client.completions.create(
        model="tiny", prompt=TEXT, max_tokens=20, seed=1, extra_body={"guided_choice": choices}
    )
    assert done.choices[0].text in choices
    done = client.completions.create(
        model="tiny",
        prompt=TEXT,
        max_tokens=20,
        seed=2,
        extra_body={"guided_regex": "[a-c]{3}-[0-9]{2}"},
    )
    assert re.fullmatch("[a-c]{3}-[0-9]{2}", done.choices[0].text)
    obj = client.completions.create(
        model="tiny",
        prompt=TEXT,
        max_tokens=8,
        seed=0,
        extra_body={"response_format": {"type": "json_object"}},  # chat's field, here too
    )
    assert obj.choices[0].text.startswith("{")


WEATHER = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Oslo"]}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {
        "type": "function",
        "function": {
            "name": "noop",
            "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
        },
    },
]


def test_forced_tool_calls_parse_in_the_openai_client(client: openai.OpenAI) -> None:
    """A named or required tool_choice gives tool_calls whose arguments follow the tool's
    schema (jsonschema), as the openai client parses them."""
    import jsonschema

    messages = [{"role": "user", "content": "weather in Paris?"}]
    named = {"type": "function", "function": {"name": "get_weather"}}
    for choice in (named, "required"):
        done = client.chat.completions.create(
            model="tiny", messages=messages, tools=TOOLS, tool_choice=choice, max_tokens=200, seed=0
        )
        first = done.choices[0]
        assert first.finish_reason == "tool_calls" and first.message.content is None
        (call,) = first.message.tool_calls
        assert call.type == "function" and call.id.startswith("call_")
        args = json.loads(call.function.arguments)
        if call.function.name == "get_weather":
            jsonschema.validate(args, WEATHER)
        else:
            assert choice == "required" and call.function.name == "noop"
    # streamed: the call arrives as one tool_calls delta with the same name and arguments
    args = dict(model="tiny", messages=messages, tools=TOOLS, tool_choice=named, seed=0)
    whole = client.chat.completions.create(**args, max_tokens=200).choices[0].message
    chunks = list(client.chat.completions.create(**args, max_tokens=200, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert not "".join(d.content or "" for d in deltas)  # nothing leaks out as text
    (streamed,) = [call for d in deltas for call in d.tool_calls or []]
    assert streamed.index == 0 and streamed.id.startswith("call_")
    assert streamed.function.name == whole.tool_calls[0].function.name
    assert streamed.function.arguments == whole.tool_calls[0].function.arguments
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    # "auto" with an answer that is not a call: streamed as text, as without tools
    plain = dict(model="tiny", messages=messages, tools=TOOLS, max_tokens=6, temperature=0)
    want = client.chat.completions.create(**plain).choices[0].message
    assert want.tool_calls is None and want.content
    got = client.chat.completions.create(**plain, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in got if c.choices) == want.content
    # "none": no tools offered, a plain answer
    done = client.chat.completions.create(
        model="tiny", messages=messages, tools=TOOLS, tool_choice="none", max_tokens=4
    )
    assert done.choices[0].message.tool_calls is None
    # a tool result goes back in as a message
    back = messages + [
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    done = client.chat.completions.create(model="tiny", messages=back, max_tokens=4)
    assert done.choices[0].finish_reason in ("stop", "length")


def test_stop_strings_and_seeds(client: openai.OpenAI, llama_artifacts: Path) -> None:
    want = irforge_run(llama_artifacts, TEXT, 12)["text"]
    stop = want[len(want) // 2 :][:2]
    assert stop, "the greedy continuation is too short to pick a stop string from"
    done = client.completions.create(
        model="tiny", prompt=TEXT, max_tokens=12, temperature=0, stop=[stop]
    )
    assert done.choices[0].text == want[: want.find(stop)]
    assert done.choices[0].finish_reason == "stop"

    def sample(seed: int) -> str:
        kwargs = dict(temperature=1.0, top_p=0.9, seed=seed, max_tokens=12)
        messages = [{"role": "user", "content": "hi"}]
        done = client.chat.completions.create(model="tiny", messages=messages, **kwargs)
        return done.choices[0].message.content or ""

    assert sample(7) == sample(7)


def test_openai_chat_completions_equal_irforge_run(
    client: openai.OpenAI, llama_artifacts: Path
) -> None:
    messages = [{"role": "user", "content": "hello world"}]
    # the prompt the server renders: tokenizer_config.json's chat template (or the fallback)
    codec = TextCodec(llama_artifacts)
    ids = codec.chat_ids(messages)
    assert codec.decode(ids).endswith(
        "hello world\n<|assistant|>\n" if codec.has_chat_template else "assistant:"
    )
    want = irforge_run(llama_artifacts, ids, 10)
    done = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=10, temperature=0
    )
    assert done.choices[0].message.content == want["text"]
    assert done.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_completion_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want["text"]
    assert chunks[-1].usage.completion_tokens == len(want["tokens"])
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")


def test_models_and_shortfin_client(client: openai.OpenAI, server: str, session: Session) -> None:
    assert [m.id for m in client.models.list()] == ["tiny"]
    # tests/shortfin_server.generate is a shortfin client; it works unchanged here
    assert shortfin_server.generate(server, BASE, 8) == solo(session, BASE, 8)
    body = {"text": ["hello world", TEXT], "sampling_params": {"max_completion_tokens": 3}}
    status, _, doc = post(f"{server}/generate", body)
    assert status == 200 and [r["prompt"] for r in doc["responses"]] == ["hello world", TEXT]
    assert all(len(r["responses"]) == 1 and "text" in r["responses"][0] for r in doc["responses"])


def test_unknown_model_is_404_and_health_says_ok(client: openai.OpenAI, server: str) -> None:
    """OpenAI and vLLM answer a model they do not serve with 404 model_not_found."""
    for call in (
        lambda: client.completions.create(model="gpt-4", prompt="hi", max_tokens=2),
        lambda: client.chat.completions.create(
            model="gpt-4", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        ),
    ):
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        assert caught.value.status_code == 404
        assert caught.value.body["code"] == "model_not_found", caught.value.body
    with urllib.request.urlopen(f"{server}/health", timeout=5) as r:
        assert r.status == 200 and json.loads(r.read()) == {"status": "ok"}


def test_32_concurrent_clients_get_their_solo_tokens(server: str, session: Session) -> None:
    prompts = [(BASE * 4)[i : i + 1 + (7 * i) % 60] for i in range(32)]  # 1 to 60 tokens
    lengths = [6 + (5 * i) % 19 for i in range(32)]
    want = [solo(session, p, n) for p, n in zip(prompts, lengths, strict=True)]
    got: list[object] = [None] * 32
    start = threading.Barrier(32, timeout=30)

    def client(i: int) -> None:
        start.wait()
        got[i] = shortfin_server.generate(server, prompts[i], lengths[i], timeout_s=120)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert got == want
    m = wait_all_pages_free(server)
    assert m["irforge_kv_pages_free"] == m["irforge_kv_pages_total"] > 0
    assert m["irforge_running_requests"] == 0 and m["irforge_queue_depth"] == 0
    # vLLM's series, labelled with the served name (tests/test_serve_engine.py checks them
    # under load)
    assert m['vllm:num_requests_running{model_name="tiny"}'] == 0
    assert m['vllm:kv_cache_usage_perc{model_name="tiny"}'] == 0


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_disconnect_cancels_and_frees_pages(server: str, stream: bool) -> None:
    body = {"prompt": [5, 6, 7], "max_tokens": 253, "ignore_eos": True, "stream": stream}
    key = 'irforge_requests_finished_total{reason="cancelled"}'
    for _ in range(3):  # the tiny model may finish 253 tokens before the server notices
        before = metrics(server).get(key, 0)
        conn = http.client.HTTPConnection(HOST, int(server.rsplit(":", 1)[1]), timeout=30)
        conn.request("POST", "/v1/completions", json.dumps(body), JSON)
        if stream:
            response = conn.getresponse()
            assert response.status == 200 and response.readline().startswith(b"data: ")
        else:
            deadline = time.monotonic() + 10
            while not metrics(server)["irforge_running_requests"] and time.monotonic() < deadline:
                time.sleep(0.005)
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        m = wait_all_pages_free(server)
        assert m["irforge_kv_pages_free"] == m["irforge_kv_pages_total"]
        if m.get(key, 0) > before:
            return
    pytest.fail("no request was cancelled by its client's disconnect")


# -- errors ------------------------------------------------------------------------------------

BAD = [
    ("/v1/completions", b'{"prompt": "x",', 400, "not valid JSON"),
    ("/v1/completions", {"prompt": 3}, 422, "prompt: must be one of"),
    ("/v1/completions", {"prompt": "x", "temperature": "hot"}, 422, "temperature"),
    ("/v1/completions", {"prompt": "x", "temperature": 5}, 422, "less than or equal to 2"),
    ("/v1/completions", {"prompt": "x", "top_p": 0}, 422, "top_p"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 422, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 900}, 400, "over the limit"),
    ("/v1/completions", {"prompt": ""}, 400, "empty"),
    ("/v1/completions", {"prompt": []}, 400, "empty"),
    ("/v1/completions", {"prompt": [5] * 300}, 400, "at most 255"),
    ("/v1/completions", {"prompt": [999]}, 400, "outside the vocabulary"),
    ("/v1/completions", {"prompt": "x", "n": 2, "stream": True}, 400, "n = 1"),
    ("/v1/completions", {"prompt": "x", "n": 3, "best_of": 2}, 400, "at least n"),
    ("/v1/completions", {"prompt": "x", "best_of": 2, "stream": True}, 400, "cannot be streamed"),
    ("/v1/completions", {"prompt": ["x"] * 200, "n": 2}, 400, "over 256 sequences"),
    ("/v1/completions", {"prompt": "x", "seed": -1}, 400, "seed must be between 0"),
    ("/v1/completions", {}, 422, "prompt: Field required"),
    ("/v1/chat/completions", {"messages": []}, 422, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "bot", "content": "x"}]}, 422, "role"),
    ("/generate", {"sampling_params": {}}, 422, "exactly one of `text` and `input_ids`"),
    ("/generate", {"text": "x", "sampling_params": {"num_beams": 2}}, 400, "beam"),
    ("/generate", {"text": "x", "sampling_params": {"temperature": "a"}}, 422, "temperature"),
    ("/generate", b"[1, 2", 400, "not valid JSON"),
    # bounds (issue 14, items 5-6): each would otherwise slow every other request
    ("/v1/completions", {"prompt": "x", "stop": ["s"] * 17}, 422, "stop"),
    ("/v1/completions", {"prompt": "x", "stop": "s" * 257}, 422, "stop"),
    ("/v1/completions", {"prompt": ["x"] * 257}, 422, "prompt"),
    ("/v1/completions", {"prompt": "x" * 17000}, 400, "17000 characters"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}] * 4097},
        422,
        "messages",
    ),
    ("/generate", {"input_ids": [[1]] * 257}, 422, "input_ids"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 5, "min_tokens": 6}, 400, "min_tokens"),
    ("/v1/completions", {"prompt": "x", "stop_token_ids": [999]}, 400, "stop token id 999"),
    ("/v1/completions", {"prompt": "x", "logprobs": 21}, 400, "logprobs must be between 0"),
    ("/v1/completions", {"prompt": "x", "guided_regex": "(["}, 400, "cannot be compiled"),
    (
        "/v1/completions",
        {"prompt": "x", "guided_regex": "a", "guided_choice": ["b"]},
        400,
        "give one of",
    ),
    ("/v1/completions", {"prompt": "x", "guided_choice": []}, 400, "non-empty strings"),
    (
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "g"}},
        },
        400,
        "not among the tools",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web"}]},
        400,
        "tools[0] must be",
    ),
    (
        "/v1/completions",
        {"prompt": "x", "response_format": {"type": "json_schema"}},
        400,
        "needs json_schema.schema",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
        400,
        "top_logprobs needs logprobs",
    ),
    # JSON's "\ud800" is a lone surrogate: no tokenizer takes it (issue 14, item 7)
    ("/v1/completions", b'{"prompt": "\\ud800"}', 422, "not valid Unicode"),
    (
        "/v1/chat/completions",
        b'{"messages": [{"role": "user", "content": "a\\udfff"}]}',
        422,
        "not valid Unicode",
    ),
    ("/generate", b'{"text": "\\ud800"}', 422, "not valid Unicode"),
    ("/v1/completions", b'\xff\xfe{"prompt": 1}', 400, "error parsing the body"),
]


@pytest.mark.parametrize(("path", "body", "status", "message"), BAD)
def test_bad_requests_say_what_is_wrong(
    server: str, path: str, body: object, status: int, message: str
) -> None:
    raw = body if isinstance(body, bytes) else None
    got, _, doc = post(f"{server}{path}", body, raw=raw)
    assert got == status
    text = doc["error"] if path == "/generate" else doc["error"]["message"]  # type: ignore[index]
    assert message in text


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nope", 404), ("DELETE", "/v1/completions", 405), ("GET", "/generate", 405)],
)
def test_routing_errors_use_the_error_shape(server: str, method: str, path: str, status: int):
    req = urllib.request.Request(f"{server}{path}", method=method)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=10)
    assert caught.value.code == status
    doc = json.loads(caught.value.read())
    text = doc["error"] if path == "/generate" else doc["error"]["message"]
    assert text in ("Not Found", "Method Not Allowed")


@pytest.mark.parametrize("path", ["/v1/completions", "/generate"])
def test_a_body_over_the_limit_is_413_before_parsing(server: str, path: str) -> None:
    from irforge.serve.limits import MAX_BODY_BYTES

    raw = b'{"prompt": "' + b"x" * MAX_BODY_BYTES + b'"}'
    got, _, doc = post(f"{server}{path}", None, raw=raw)
    assert got == 413
    text = doc["error"] if path == "/generate" else doc["error"]["message"]  # type: ignore[index]
    assert "over the limit" in text
    with urllib.request.urlopen(f"{server}/health", timeout=10) as r:
        assert r.status == 200


def test_a_vanishing_temperature_is_greedy_not_nan(client: openai.OpenAI) -> None:
    """temperature 1e-320 made the sampler divide into inf/NaN; below 1e-5 it is greedy."""
    tiny_t = client.completions.create(model="tiny", prompt=TEXT, max_tokens=8, temperature=1e-320)
    greedy = client.completions.create(model="tiny", prompt=TEXT, max_tokens=8, temperature=0)
    assert tiny_t.choices[0].text == greedy.choices[0].text


def test_openai_client_sees_the_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="over the limit"):
        client.completions.create(model="tiny", prompt="hello", max_tokens=1000)


def test_overload_answers_503_with_retry_after(llama_artifacts: Path) -> None:
    # held, so the queue stays full; one usable page, so the cache cannot take a second either
    engine = Engine(llama_artifacts, max_queue=1, page_count=2, start=False)
    port = _free_port()
    config = uvicorn.Config(create_app(engine), host=HOST, port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        first: list[object] = []
        body = {"input_ids": [1, 2, 3], "sampling_params": {"max_completion_tokens": 4}}
        waiter = threading.Thread(target=lambda: first.append(post(f"{url}/generate", body)))
        waiter.start()
        while engine.gauges()["queue_depth"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        status, headers, doc = post(f"{url}/generate", body)
        assert status == 503 and doc["code"] == "QUEUE_FULL" and "queue is full" in doc["error"]
        assert int(headers["Retry-After"]) >= 1
        status, headers, doc = post(f"{url}/v1/completions", {"prompt": [1], "max_tokens": 2})
        assert status == 503 and doc["error"]["code"] == "QUEUE_FULL" and headers["Retry-After"]
        engine.start()
        waiter.join(60)
        assert first and first[0][0] == 200  # type: ignore[index]
    finally:
        engine.shutdown(drain=False)  # ends any request still waiting, so uvicorn can stop
        server.should_exit = True
        thread.join(30)


def test_half_sent_requests_time_out(llama_artifacts: Path, monkeypatch: pytest.MonkeyPatch):
    """Issue 14, item 8: a client that stops mid-head or mid-body loses its connection (the
    body case with a 408) instead of holding it forever; others are served meanwhile."""
    import socket

    from irforge.serve import limits

    monkeypatch.setattr(limits, "HEAD_SECONDS", 1.0)
    monkeypatch.setattr(limits, "BODY_SECONDS", 1.0)
    engine = Engine(llama_artifacts)
    port = _free_port()
    config = uvicorn.Config(
        create_app(engine), host=HOST, port=port, log_level="warning", http=limits.GuardedH11
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        head = socket.create_connection((HOST, port))
        head.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # no end of head
        body = socket.create_connection((HOST, port))
        body.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"prompt'
        )
        assert _healthy(f"http://{HOST}:{port}")  # the server answers others meanwhile
        started = time.monotonic()
        for conn in (head, body):
            conn.settimeout(10)
        assert head.recv(1000) == b""  # closed, no answer: nothing was asked yet
        answer = b""
        while chunk := body.recv(1000):  # the 408, then the close
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in answer
        assert time.monotonic() - started < 5
        head.close()
        body.close()
    finally:
        engine.shutdown(drain=False)
        server.should_exit = True
        thread.join(30)


def test_sigterm_drains_in_flight_requests(llama_artifacts: Path) -> None:
    body = {"prompt": [5, 6, 7], "max_tokens": 253, "ignore_eos": True, "stream": True}
    with serving(llama_artifacts) as (url, proc):
        port = int(url.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        conn.request("POST", "/v1/completions", json.dumps(body), JSON)
        response = conn.getresponse()
        assert response.readline().startswith(b"data: ")
        proc.send_signal(signal.SIGTERM)
        events = [line for line in response.read().decode().splitlines() if line]
        conn.close()
        # SIGTERM came after the first event: finishing all 253 tokens is the drain
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "length"
        assert proc.wait(60) == 0
        log = proc.stdout.read()  # type: ignore[union-attr]
        assert "Finished server process" in log


def test_a_drain_timeout_ends_streams_with_an_error_event(llama_artifacts: Path) -> None:
    """Issue 14, item 10: when --drain-timeout runs out, a cut stream says why and ends
    properly, and the log has one line for it, no traceback."""
    body = {"prompt": [5, 6, 7], "max_tokens": 253, "ignore_eos": True, "stream": True}
    with serving(llama_artifacts, "--drain-timeout", "1") as (url, proc):
        port = int(url.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        conn.request("POST", "/v1/completions", json.dumps(body), JSON)
        response = conn.getresponse()
        assert response.readline().startswith(b"data: ")
        proc.send_signal(signal.SIGTERM)  # the cut comes at once: 1 s minus a 1 s margin
        events = [line for line in response.read().decode().splitlines() if line]
        conn.close()
        assert events[-1] == "data: [DONE]"
        error = json.loads(events[-2][6:])["error"]
        assert error["code"] == "shutdown" and "shut down" in error["message"]
        assert proc.wait(60) == 0
        log = proc.stdout.read()  # type: ignore[union-attr]
        assert "Traceback" not in log and log.count("drain timeout: stopping") == 1


def test_a_batch_with_one_bad_prompt_runs_none_of_them(server: str) -> None:
    """Issue 14, item 7: the good siblings of a refused prompt are not left generating."""
    before = metrics(server)
    params = {"max_completion_tokens": 200, "ignore_eos": True}
    body = {"input_ids": [[5, 6, 7], [1, 999]], "sampling_params": params}
    status, _, doc = post(f"{server}/generate", body)
    assert status == 400 and "outside the vocabulary" in doc["error"]  # type: ignore[index]
    after = wait_all_pages_free(server)
    key = "irforge_generation_tokens_total"
    assert after[key] - before[key] < 200  # the first prompt did not run to its end
    assert after["irforge_running_requests"] == 0 and after["irforge_queue_depth"] == 0


def test_logit_bias_and_penalties_reach_the_sampler(
    client: openai.OpenAI, server: str, llama_artifacts: Path
) -> None:
    """OpenAI's logit_bias (+100 makes a token certain) and penalties are applied, not refused."""
    from irforge.engine.text import TextCodec

    got = client.completions.create(
        model="tiny", prompt=[5, 6, 7], max_tokens=4, temperature=0, logit_bias={"250": 100}
    )
    assert got.choices[0].text == TextCodec(llama_artifacts).decode([250] * 4)
    got = client.completions.create(
        model="tiny", prompt=[5, 6, 7], max_tokens=4, presence_penalty=1.0, frequency_penalty=0.5
    )
    assert got.choices[0].finish_reason in ("stop", "length")
    status, _, doc = post(f"{server}/v1/completions", {"prompt": "x", "logit_bias": {"999": 1}})
    assert status == 400 and "outside the vocabulary" in doc["error"]["message"]  # type: ignore[index]
