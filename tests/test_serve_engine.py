"""The serving engine without HTTP: batching arrays, stop strings, metrics, chat templates, and
continuous batching on the tiny compiled Llama against the static-batch `generate()`."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from irforge.engine import BadRequest, Engine, Overloaded, ShuttingDown, Status
from irforge.engine.metrics import Metrics
from irforge.engine.request import Request
from irforge.engine.text import TextCodec
from irforge.errors import InputError
from irforge.runtime import Sampling, Session, generate
from irforge.runtime.batching import decode_arrays, prefill_arrays, split
from irforge.runtime.pages import SCRATCH_PAGE

BASE = [5, 17, 3, 99, 42, 7, 250, 1, 8, 64, 33, 12, 2, 77, 190, 4, 23, 56, 9, 11]
PROMPTS = [BASE[:n] for n in (1, 3, 5, 16, 17, 20)] + [[7] * 33, BASE * 2]  # 1 to 3 pages


# -- pure parts -------------------------------------------------------------------------------


def test_split_picks_the_smallest_batch_that_fits() -> None:
    assert split((1, 4), 1) == [1]
    assert split((1, 4), 2) == [4]
    assert split((1, 4), 5) == [4, 1]
    assert split((4,), 9) == [4, 4, 4]
    assert split((1, 4), 0) == []


def test_padding_rows_and_blocks_point_at_the_scratch_page() -> None:
    tokens, start, seq_lens, ids = prefill_arrays(
        [[1, 2, 3], list(range(20))], [[7], [8, 9]], 4, 16
    )
    assert tokens.shape == (4, 32) and ids.shape == (4, 2) and not start.any()
    assert ids.tolist() == [[7, SCRATCH_PAGE], [8, 9], [SCRATCH_PAGE] * 2, [SCRATCH_PAGE] * 2]
    assert seq_lens.tolist() == [3, 20, 1, 1]
    assert tokens[0, :4].tolist() == [1, 2, 3, 0] and not tokens[2:].any()
    # a chunk after a cached page: its pages listed from position 0, the chunk's all covered
    tokens, start, seq_lens, ids = prefill_arrays(
        [[4] * 5, [1] * 17], [[7, 3], [8, 9]], 2, 16, [16, 0]
    )
    assert start.tolist() == [16, 0] and seq_lens.tolist() == [21, 17]
    assert tokens.shape == (2, 32) and ids.tolist() == [[7, 3, 0], [8, 9, 0]]
    tokens, seq_lens, starts, ids = decode_arrays([5, 6], [15, 16], [[7], [8, 9]], 4, 16)
    assert starts.tolist() == [15, 16, 0, 0] and seq_lens.tolist() == [16, 17, 1, 1]
    assert ids.tolist() == [[7, 0], [8, 9], [0, 0], [0, 0]]
    assert tokens[:, 0].tolist() == [5, 6, 0, 0]


class _Letters:
    """A streaming decoder whose token i is the character chr(i)."""

    def step(self, token: int) -> str:
        return chr(token)

    def flush(self) -> str:
        return ""


def _request(stop: tuple[str, ...] = (), max_tokens: int = 50) -> Request:
    letters = _Letters()
    return Request(
        id="r", prompt=[1], sampling=Sampling(), max_tokens=max_tokens, stop=stop, decoder=letters
    )


def test_stop_strings_are_cut_and_never_streamed() -> None:
    req = _request(stop=("cd",))
    for ch in "abcd":
        req.add_token(ord(ch))
    deltas = [d.text for d in req.stream(timeout=1)]
    assert deltas == ["a", "b", "", ""]  # "c" is held back: it may start "cd"
    assert req.text == "ab" and req.finish_reason == "stop" and req.status is Status.FINISHED


def test_held_back_text_is_released_when_it_is_not_a_stop() -> None:
    req = _request(stop=("xyz",), max_tokens=4)
    for ch in "axyw":
        req.add_token(ord(ch))
    assert "".join(d.text for d in req.stream(timeout=1)) == "axyw" == req.text
    assert req.finish_reason == "length"


def test_metrics_text_format() -> None:
    """prometheus_client's own parser reads the exposition the way Prometheus does."""
    from prometheus_client.parser import text_string_to_metric_families

    m = Metrics()
    m.requests_finished.labels(reason="stop").inc()
    m.time_to_first_token.observe(0.02)
    m.time_to_first_token.observe(100)
    text = m.render({"kv_pages_free": 3, "kv_pages_total": 4})
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("irforge_requests_finished_total", (("reason", "stop"),))] == 1
    assert families["irforge_time_to_first_token_seconds"].type == "histogram"
    bucket = "irforge_time_to_first_token_seconds_bucket"
    assert samples[(bucket, (("le", "0.01"),))] == 0
    assert samples[(bucket, (("le", "0.025"),))] == 1
    assert samples[(bucket, (("le", "+Inf"),))] == 2
    assert samples[("irforge_time_to_first_token_seconds_count", ())] == 2
    assert samples[("irforge_kv_pages_free", ())] == 3
    assert "irforge_queue_depth" not in families  # only the gauges given
    assert m.counter("requests_finished_total", reason="stop") == 1


def test_chat_template_from_tokenizer_config(llama_dir: Path, tmp_path: Path) -> None:
    shutil.copy(llama_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    template = (
        "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}"
        "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    config = {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "chat_template": template}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    codec = TextCodec(tmp_path)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    prompt = codec.chat_prompt(messages)
    assert prompt == "<s><system>be brief</s><user>hello</s><assistant>"
    assert codec.chat_ids(messages) == codec.encode(prompt, special=False)
    assert codec.eos_id == 2


def test_tools_reach_the_chat_template_and_calls_parse(llama_dir: Path, tmp_path: Path) -> None:
    from irforge.serve.tools import parse_tools, tool_calls

    shutil.copy(llama_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    template = (
        "{% if tools %}[{% for t in tools %}{{ t['function']['name'] }};{% endfor %}]{% endif %}"
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    codec = TextCodec(tmp_path)
    tools = [{"type": "function", "function": {"name": n}} for n in ("a", "b")]
    assert codec.chat_prompt([{"role": "user", "content": "hi"}], tools) == "[a;b;]hi"
    assert codec.chat_prompt([{"role": "user", "content": "hi"}]) == "hi"
    offered = parse_tools(tools)
    (call,) = tool_calls('<|python_tag|>{"name": "b", "parameters": {"x": 1}}', offered) or []
    assert call["function"] == {"name": "b", "arguments": '{"x": 1}'}
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert tool_calls('{"name": "b", "arguments": {}}', offered) is not None  # either spelling
    assert tool_calls('{"name": "c", "parameters": {}}', offered) is None  # not offered
    assert tool_calls("sunny, 21 degrees", offered) is None


@pytest.mark.parametrize(
    ("template", "message"),
    [  # 300 messages: 27 million passes of the innermost loop, minutes unbounded
        (
            "{% for a in messages %}{% for b in messages[1:] %}{% for c in messages|reverse %}"
            "{% endfor %}{% endfor %}{% endfor %}",
            "ran over 2 s",
        ),
        (
            "{% for a in messages %}{% for b in messages %}{{ 'x' * 1000 }}"
            "{% endfor %}{% endfor %}",
            "over 16777216 characters",
        ),
    ],
)
def test_a_runaway_chat_template_is_bounded(
    llama_dir: Path, tmp_path: Path, template: str, message: str
) -> None:
    """Issue 14, item 9: a template is code from the folder; it gets seconds, not the server."""
    shutil.copy(llama_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    started = time.monotonic()
    with pytest.raises(BadRequest, match=message):
        TextCodec(tmp_path).chat_prompt([{"role": "user", "content": "hi"}] * 300)
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    "template",
    [
        "{{ raise_exception('only user messages') }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",  # the sandbox refuses this
    ],
)
def test_chat_template_errors_are_bad_requests(
    llama_dir: Path, tmp_path: Path, template: str
) -> None:
    shutil.copy(llama_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    with pytest.raises(BadRequest):
        TextCodec(tmp_path).chat_prompt([{"role": "user", "content": "hi"}])


def test_fallback_chat_template(llama_dir: Path, tmp_path: Path) -> None:
    shutil.copy(llama_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    codec = TextCodec(tmp_path)
    assert not codec.has_chat_template
    messages = [{"role": "user", "content": "hello world"}]
    assert codec.chat_prompt(messages) == "user: hello world\nassistant:"


# -- on the compiled model --------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(llama_artifacts: Path) -> Iterator[Engine]:
    with Engine(llama_artifacts) as e:
        yield e


def _solo(folder: Path, prompt: list[int], max_tokens: int, eos: bool = True) -> list[int]:
    session = Session(folder, page_count=16)
    eos_ids = session.config.eos_token_ids if eos else ()
    return generate(session, [prompt], max_tokens=max_tokens, eos_ids=eos_ids).tokens[0]


def _all_free(engine: Engine) -> bool:
    g = engine.gauges()
    return g["kv_pages_free"] == g["kv_pages_total"] and not g["running_requests"]


@pytest.mark.iree
def test_continuous_batching_equals_each_prompt_alone(engine: Engine, llama_artifacts: Path):
    want = [_solo(llama_artifacts, p, 12) for p in PROMPTS]
    reqs = [engine.submit(p, max_tokens=12) for p in PROMPTS * 3]  # 24: several calls per step
    late = [engine.submit(p, max_tokens=12) for p in PROMPTS]  # joins between decode steps
    for req, tokens in zip(reqs + late, want * 4, strict=True):
        assert req.wait(60).tokens == tokens
        assert req.status is Status.FINISHED
        assert req.finish_reason == ("stop" if tokens[-1] in engine.eos_ids else "length")
    assert _all_free(engine)


@pytest.mark.iree
def test_stream_statuses_and_text(engine: Engine, llama_artifacts: Path) -> None:
    req = engine.submit("the quick brown fox", max_tokens=6, ignore_eos=True)
    deltas = list(req.stream(timeout=60))
    assert [d.token for d in deltas] == req.tokens and len(req.tokens) == 6
    assert "".join(d.text for d in deltas) == req.text == engine.text.decode(req.tokens)
    assert req.first_token_at and req.first_token_at >= req.submitted_at


@pytest.mark.iree
def test_cancel_frees_pages_at_once(engine: Engine) -> None:
    req = engine.submit([5, 6, 7], max_tokens=250, ignore_eos=True)
    next(iter(req.stream(timeout=60)))
    req.cancel()
    req.wait(10)
    assert req.status is Status.INTERRUPTED and req.finish_reason == "cancelled"
    assert len(req.tokens) < 250
    deadline = time.monotonic() + 10
    while not _all_free(engine) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _all_free(engine)


@pytest.mark.iree
def test_seeded_sampling_is_reproducible(engine: Engine) -> None:
    def run(seed: int) -> list[int]:
        sampling = Sampling(temperature=1.0, top_k=50, top_p=0.9, seed=seed)
        return engine.submit(BASE, sampling, max_tokens=16, ignore_eos=True).wait(60).tokens

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_a_failing_sampler_fails_its_request_alone(llama_artifacts: Path) -> None:
    """One request whose sampling raises ends with an error; the batch beside it goes on."""

    def broken(logits: object, ids: object = None) -> int:
        raise ValueError("probabilities contain NaN")

    with Engine(llama_artifacts, start=False) as engine:
        bad = engine.submit(BASE, max_tokens=8, ignore_eos=True)
        bad.sampler = broken  # type: ignore[assignment]  # before the engine sees it
        good = engine.submit(BASE[:5], max_tokens=8, ignore_eos=True)
        engine.start()
        assert good.wait(60).finish_reason == "length" and len(good.tokens) == 8
        assert bad.wait(60).finish_reason == "error" and "sampling failed" in (bad.error or "")
        later = engine.submit(BASE, max_tokens=4, ignore_eos=True).wait(60)
        assert later.finish_reason == "length"  # the engine's loop is still serving


@pytest.mark.iree
@pytest.mark.parametrize(
    ("prompt", "options", "message"),
    [
        ([], {}, "empty"),
        ("", {}, "empty"),
        ([300], {}, "outside the vocabulary"),
        ([1] * 256, {}, "at most 255"),
        ([1] * 10, {"max_tokens": 247}, "over the limit"),
        ([1], {"max_tokens": 0}, "at least 1"),
    ],
)
def test_requests_that_cannot_be_served(
    engine: Engine, prompt: object, options: dict, message: str
) -> None:
    with pytest.raises(BadRequest, match=message):
        engine.submit(prompt, **options)  # type: ignore[arg-type]


@pytest.mark.iree
def test_full_queue_overloads_and_shutdown_drains(llama_artifacts: Path) -> None:
    engine = Engine(llama_artifacts, max_queue=2, page_count=3, start=False)  # 2 usable pages
    queued = [engine.submit(p, max_tokens=4) for p in PROMPTS[:2]]
    with pytest.raises(Overloaded, match="queue is full"):
        engine.submit([1, 2], max_tokens=4)
    assert all(r.status is Status.QUEUED for r in queued)
    engine.start()
    engine.shutdown(drain=True, timeout=60)
    assert [r.status for r in queued] == [Status.FINISHED] * 2
    with pytest.raises(ShuttingDown):
        engine.submit([1, 2], max_tokens=4)


@pytest.mark.iree
def test_the_queue_limit_yields_to_a_cache_with_room(llama_artifacts: Path) -> None:
    """Issue 14, item 11: while the free pages hold everything queued, the count does not
    refuse anyone (here 6 one-page prompts with a queue limit of 2 and 63 free pages)."""
    engine = Engine(llama_artifacts, max_queue=2, page_count=64, start=False)
    queued = [engine.submit([1, 2, 3], max_tokens=2) for _ in range(6)]
    assert all(r.status is Status.QUEUED for r in queued)
    engine.start()
    engine.shutdown(drain=True, timeout=60)
    assert [r.status for r in queued] == [Status.FINISHED] * 6


@pytest.mark.iree
def test_shutdown_without_drain_interrupts(llama_artifacts: Path) -> None:
    engine = Engine(llama_artifacts, start=False)
    req = engine.submit([1, 2, 3], max_tokens=4)
    engine.shutdown(drain=False)
    assert req.wait(5).status is Status.INTERRUPTED and req.finish_reason == "shutdown"


@pytest.mark.iree
def test_pages_too_few_for_everyone_make_requests_wait(llama_artifacts: Path) -> None:
    """8 usable pages, 3 per request: at most two run at once, the rest wait their turn."""
    # the reference first: a second IREE instance made while the engine's thread invokes its
    # program failed once in CI ("ref type mismatch" in hal.command_buffer.dispatch)
    want = _solo(llama_artifacts, BASE, 28, eos=False)
    with Engine(llama_artifacts, page_count=9) as engine:
        reqs = [engine.submit(BASE, max_tokens=28, ignore_eos=True) for _ in range(5)]
        assert all(r.wait(60).tokens == want for r in reqs)
        assert _all_free(engine)
    assert np.isclose(engine.metrics.counter("generation_tokens_total"), 5 * 28)


def _vllm_series(text: str) -> dict[str, tuple[dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        s.name: (s.labels, s.value)
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name.startswith("vllm:")
    }


@pytest.mark.iree
def test_vllm_series_an_endpoint_picker_reads(llama_artifacts: Path) -> None:
    """Under a held load (8 usable pages for 5 requests that each grow to 3: some run, the
    rest wait) /metrics has vLLM's series with vLLM's meanings, read with Prometheus's own
    parser."""
    with Engine(llama_artifacts, page_count=9) as engine:
        reqs = [engine.submit(BASE, max_tokens=28, ignore_eos=True) for _ in range(5)]
        deadline, held = time.monotonic() + 60, None
        while held is None and time.monotonic() < deadline:
            g = engine.gauges()
            if g["queue_depth"] and g["running_requests"]:
                held = g, _vllm_series(engine.metrics.render(g, "tiny"))
        assert held is not None, "never saw requests waiting and running at once"
        g, series = held
        assert series["vllm:num_requests_waiting"] == ({"model_name": "tiny"}, g["queue_depth"])
        running = g["running_requests"]
        assert series["vllm:num_requests_running"] == ({"model_name": "tiny"}, running)
        assert running + g["queue_depth"] <= 5
        labels, usage = series["vllm:kv_cache_usage_perc"]
        assert labels == {"model_name": "tiny"} and 0 < usage <= 1
        assert usage == pytest.approx(1 - g["kv_pages_free"] / 8)
        info = {"block_size": str(engine.scheduler.stride), "num_gpu_blocks": "8"}
        assert series["vllm:cache_config_info"] == (info, 1)
        assert all(r.wait(60).finish_reason == "length" for r in reqs)
        assert _all_free(engine)
        idle = _vllm_series(engine.metrics.render(engine.gauges(), "tiny"))
    assert idle["vllm:num_requests_waiting"][1] == idle["vllm:num_requests_running"][1] == 0
    assert idle["vllm:kv_cache_usage_perc"][1] == 0  # cached pages no request holds are free


@pytest.mark.iree
def test_an_oversubscribed_cache_preempts_and_everyone_gets_solo_tokens(
    llama_artifacts: Path,
) -> None:
    """8 usable pages; 5 requests that each grow to 5 pages. Pages are taken as they grow, so
    four start at once; when they run out the newest is preempted and later recomputed."""
    want = _solo(llama_artifacts, BASE, 60, eos=False)
    with Engine(llama_artifacts, page_count=9) as engine:
        reqs = [engine.submit(BASE, max_tokens=60, ignore_eos=True) for _ in range(5)]
        assert all(r.wait(120).tokens == want for r in reqs)
        assert all(r.finish_reason == "length" for r in reqs)
        assert _all_free(engine)
    assert engine.metrics.counter("preemptions_total") > 0
    assert "irforge_preemptions_total" in engine.metrics.render(engine.gauges())  # /metrics
    assert np.isclose(engine.metrics.counter("generation_tokens_total"), 5 * 60)
    assert engine.metrics.counter("decode_calls_total", bs="4") > 0  # four ran side by side


@pytest.mark.iree
def test_no_max_tokens_means_up_to_the_context_or_the_cache(
    engine: Engine, llama_artifacts: Path
) -> None:
    """OpenAI's default: generate until eos or the context is full; a small cache caps it."""
    context = engine.max_seq_len
    req = engine.submit(BASE, ignore_eos=True)
    assert len(req.wait(120).tokens) == context - len(BASE) and req.finish_reason == "length"
    with Engine(llama_artifacts, page_count=9) as small:
        req = small.submit(BASE, ignore_eos=True)
        assert len(req.wait(120).tokens) == 8 * small.scheduler.stride - len(BASE)
        with pytest.raises(BadRequest, match="even alone, the cache has 8"):
            small.submit(BASE, max_tokens=200)
        with pytest.raises(BadRequest, match="the KV cache holds 128"):
            small.submit([1] * 130, max_tokens=1)


@pytest.mark.iree
def test_cache_size_in_gib(llama_artifacts: Path) -> None:
    from irforge.formats.dtypes import BY_NAME

    session = Session(llama_artifacts, cache_gib=0.001)
    c, o = session.config, session.options
    page_bytes = c.page_elements(o.block_seq_stride, 1) * BY_NAME[o.kv_cache_dtype].itemsize
    assert session.page_count == 2**30 // 1000 // page_bytes
    with pytest.raises(InputError, match="at least 2 are needed"):
        Session(llama_artifacts, cache_gib=1e-9)


def test_streaming_detokenizer_equals_decoding_everything(llama_dir: Path) -> None:
    """tokenizers' DecodeStream, one id at a time, against decoding the whole list at once."""
    codec = TextCodec(llama_dir)
    text = "héllo wörld — naïve café, 日本語 and 🙂 emoji; tabs\tand\nnewlines  twice"
    ids = codec.encode(text, special=False)
    stream = codec.stream()
    pieces = [stream.step(i) for i in ids]
    assert "".join(pieces) + stream.flush() == codec.decode(ids) and len(ids) > 20
    assert sum(p == "" for p in pieces) > 0  # bytes of a character wait for the rest
    cut = codec.stream()  # ending inside a character: the rest comes out as U+FFFD
    first = next(i for i in range(1, len(ids)) if codec.decode(ids[:i]).endswith("\ufffd"))
    text = "".join(cut.step(t) for t in ids[:first]) + cut.flush()
    assert text == codec.decode(ids[:first])


# -- prefix caching and chunked prefill ---------------------------------------------------------


def test_prefix_cache_pages_are_shared_counted_and_freed_by_their_last_user() -> None:
    from irforge.runtime.pages import PageAllocator
    from irforge.runtime.prefix_cache import PrefixCache

    cache = PrefixCache(PageAllocator(6), stride=4)  # 5 usable pages
    prompt = list(range(10))  # 2 full pages and a partial one
    first = cache.allocate(3)
    cache.register(prompt, first)
    assert cache.cached_count == 2  # the partial page is not offered
    second = cache.lookup(prompt + [99])
    assert second == first[:2]  # both full pages, shared
    assert cache.lookup(prompt[:8]) == first[:1]  # the last token is always computed
    assert cache.lookup([1] + prompt[1:]) == []  # a page is keyed by every token before it
    cache.free(first[:1])  # the third lookup's hold
    cache.free(first)
    assert cache.free_count == 3  # the partial page; the shared ones are held by `second`
    cache.free(second)
    assert cache.free_count == 5 and cache.cached_count == 2  # idle but cached, and free
    assert cache.lookup(prompt) == first[:2]  # found again while idle
    cache.free(first[:2])
    assert len(cache.allocate(4)) == 4 and cache.cached_count == 1  # one idle page evicted:
    assert cache.lookup(prompt) == first[:1]  # the deeper one, so the first still leads


def _engine_tokens(folder: Path, prompts: list[list[int]], n: int, **options: object) -> tuple:
    with Engine(folder, **options) as engine:
        first = engine.submit(prompts[0], max_tokens=n, ignore_eos=True).wait(60)
        rest = [engine.submit(p, max_tokens=n, ignore_eos=True) for p in prompts[1:]]
        tokens = [first.tokens] + [r.wait(60).tokens for r in rest]
        cached = [r.cached_tokens for r in [first, *rest]]
        assert _all_free(engine)
        return tokens, cached, engine.metrics, engine.pages.cached_count


@pytest.mark.iree
def test_prefix_caching_and_chunked_prefill_keep_transformers_greedy_tokens(
    llama_artifacts: Path, llama_dir: Path
) -> None:
    """Prompts sharing a 3-page prefix (stride 16) give the same greedy tokens with the cache on
    or off, in whole or one-page chunks, and those are transformers' own; the later prompts
    find the shared pages instead of computing them."""
    from test_export_run import reference

    system = (BASE * 3)[:48]
    prompts = [system + BASE[:k] for k in (5, 1, 9, 20, 13)]
    want = [reference(llama_dir, p, 6)[0] for p in prompts]
    off, cached_off, _, _ = _engine_tokens(llama_artifacts, prompts, 6, prefix_caching=False)
    assert off == want and not any(cached_off)
    on, cached, metrics, held = _engine_tokens(llama_artifacts, prompts, 6)
    assert on == want
    assert cached == [0, 48, 48, 48, 48] and held >= 3
    assert metrics.counter("prefix_cache_hit_tokens_total") == 4 * 48
    assert metrics.counter("prefix_cache_lookups_total") == 5
    chunked, _, metrics, _ = _engine_tokens(llama_artifacts, prompts, 6, prefill_chunk=16)
    assert chunked == want
    computed = sum(len(p) for p in prompts) - 4 * 48
    assert metrics.counter("prompt_tokens_total") == computed
    assert sum(metrics.counter("prefill_calls_total", bs=b) for b in ("1", "4")) >= 5


def test_a_folder_without_a_chat_template_is_said_once_at_start(
    llama_artifacts: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "no-template"
    shutil.copytree(llama_artifacts, folder, copy_function=os.link)
    (folder / "tokenizer_config.json").unlink()  # a hard link: write a new file, not into it
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    with caplog.at_level("WARNING", logger="irforge.serve"):
        Engine(folder, start=False).close()
    said = [r.getMessage() for r in caplog.records if "chat template" in r.getMessage()]
    assert len(said) == 1 and "plain 'role: content' lines" in said[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="irforge.serve"):
        Engine(llama_artifacts, start=False).close()  # it has one: nothing said
    assert not [r for r in caplog.records if "chat template" in r.getMessage()]
