"""The project's trained model end to end: SmolLM2-135M-Instruct's Q4_1 GGUF alone -> build
(cpu, default dtype) -> serve -> chat, against transformers' own GGUF loader in f32.

Rule for greedy tokens: the served ids equal transformers' greedy ids up to the first
position where transformers' own top-2 log-probabilities are within NEAR_TIE nats; there an
f16 program may rightly pick the other token, and the sequences are incomparable after it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_serve import post, serving

from irforge.engine.text import TextCodec
from irforge.stages.build import build
from pypi_assets import smollm2_gguf

pytestmark = pytest.mark.iree
transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

NEAR_TIE = 0.1
STEPS = 24
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Name three colours of the rainbow."}],
    [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "How many legs does a spider have?"},
    ],
]


@pytest.fixture(scope="session")
def smollm2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smollm2") / "cpu"
    result = build("smollm2", out_dir=out, targets=["cpu"], bs=(1,))
    verify = next(s for s in result.steps if s.name == "verify cpu")
    assert verify.status == "ran" and "greedy" in verify.reason  # the build checked itself
    return out


@pytest.fixture(scope="module")
def reference() -> Iterator[tuple[object, object]]:
    gguf = smollm2_gguf()
    tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    yield tok, model


def _greedy(model: object, ids: list[int], eos: int) -> tuple[list[int], list[float]]:
    """transformers' greedy ids (through eos) and each step's top-2 log-probability gap."""
    tokens, margins = [], []
    seq = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(STEPS):
            logp = torch.log_softmax(model(seq).logits[0, -1].double(), -1)
            top = torch.topk(logp, 2).values
            token = int(logp.argmax())
            tokens.append(token)
            margins.append(float(top[0] - top[1]))
            if token == eos:
                break
            seq = torch.cat([seq, torch.tensor([[token]])], 1)
    return tokens, margins


def _agree(got: list[int], want: list[int], margins: list[float]) -> None:
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            assert margins[i] < NEAR_TIE, f"token {i}: {a} != {b}, margin {margins[i]:.3f}"
            return
    assert len(got) == len(want), (got, want)


def test_a_gguf_alone_serves_transformers_answers(smollm2_folder: Path, reference) -> None:  # noqa: ANN001
    tok, model = reference
    codec = TextCodec(smollm2_folder)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    assert codec.eos_id == eos
    with serving(smollm2_folder) as (url, _):
        for chat in CHATS:
            want_prompt = list(
                tok.apply_chat_template(chat, add_generation_prompt=True, return_dict=False)
            )
            assert codec.chat_ids(chat) == want_prompt
            want, margins = _greedy(model, want_prompt, eos)
            body = {
                "input_ids": want_prompt,
                "sampling_params": {"max_completion_tokens": STEPS, "temperature": 0},
                "return_input_ids": True,
            }
            status, _, ids = post(f"{url}/generate", body)
            assert status == 200, ids
            got = ids[0] if ids and isinstance(ids[0], list) else ids
            _agree(got, want, margins)
            status, _, answer = post(
                f"{url}/v1/chat/completions",
                {"messages": chat, "max_tokens": STEPS, "temperature": 0},
            )
            assert status == 200, answer
            assert answer["usage"]["prompt_tokens"] == len(want_prompt)
            text = answer["choices"][0]["message"]["content"]
            assert text == codec.decode([t for t in got if t != eos]), json.dumps(answer)
        paris = post(
            f"{url}/v1/chat/completions",
            {"messages": CHATS[0], "max_tokens": STEPS, "temperature": 0},
        )[2]
        assert "Paris" in paris["choices"][0]["message"]["content"]


def test_speculation_gives_the_same_answers(smollm2_folder: Path) -> None:
    """n-gram speculative decoding on the trained model (verify_bs1 of the default build): an
    input-grounded request and a chat give the tokens decoding alone gives; the grounded one
    keeps most of its proposals."""
    from irforge.engine import Engine
    from irforge.engine.speculative import SpeculativeConfig

    passage = (
        "The library opens at nine in the morning and closes at six in the evening, except "
        "on Sundays, when it stays closed all day."
    )
    chats = [
        [{"role": "user", "content": f"Repeat the following text exactly:\n\n{passage}"}],
        CHATS[1],
    ]
    answers = []
    for spec in (None, SpeculativeConfig()):
        with Engine(smollm2_folder, speculative=spec, start=False) as engine:
            if engine.speculator is not None:  # verify every proposal, whatever the timing
                engine.speculator.timed = lambda kind, bs, seconds: None  # type: ignore[method-assign]
                engine.speculator.step_time.update({("decode", 1): 1.0, ("verify", 1): 1.0})
            engine.start()
            assert engine.text is not None
            reqs = [
                engine.submit(engine.text.chat_ids(chat), max_tokens=40, ignore_eos=True)
                for chat in chats
            ]
            answers.append([r.wait(120).tokens for r in reqs])
            metrics = engine.metrics
    assert answers[1] == answers[0]
    kept = metrics.counter("spec_decode_accepted_tokens_total")
    assert kept / metrics.counter("spec_decode_draft_tokens_total") > 0.5
    # each kept token is a step saved: 39 steps a request after prefill's first token
    steps = metrics.counter("decode_calls_total", bs="1") + metrics.counter(
        "verify_calls_total", bs="1"
    )
    assert steps == 2 * 39 - kept


@pytest.fixture(scope="module")
def smollm2_hf_folder(tmp_path_factory: pytest.TempPathFactory, reference) -> Path:  # noqa: ANN001
    """SmolLM2 built from an HF source: transformers' own f32 model of the GGUF, written with
    save_pretrained (as bench/real_model.py's hf-f16 path), built in f16."""
    tok, model = reference
    source = tmp_path_factory.mktemp("smollm2-hf") / "source"
    config = copy.deepcopy(model.config)  # the fixture's model stays as it is
    config.quantization_config = None  # the GGUF-loaded model refuses save_pretrained
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(source)
    tok.save_pretrained(source)
    out = source.parent / "cpu"
    result = build(str(source), out_dir=out, targets=["cpu"], bs=(1,), dtype="f16")
    verify = next(s for s in result.steps if s.name == "verify cpu")
    assert verify.status == "ran" and "greedy" in verify.reason
    return out


@pytest.mark.slow  # a second SmolLM2 build: CI builds the GGUF source only
def test_speculation_from_an_hf_source_gives_the_same_answers(smollm2_hf_folder: Path) -> None:
    test_speculation_gives_the_same_answers(smollm2_hf_folder)
