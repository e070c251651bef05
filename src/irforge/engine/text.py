"""Text in and out of the engine: tokenizer.json, tokenizer_config.json and its chat template."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from irforge.artifacts.files import (
    CHAT_TEMPLATE_JINJA,
    CHAT_TEMPLATE_JSON,
    TOKENIZER_CONFIG,
    TOKENIZER_JSON,
)
from irforge.engine.errors import BadRequest
from irforge.errors import InputError

# Used when tokenizer_config.json has no chat_template: one "role: content" line per message,
# then the assistant's turn to speak.
FALLBACK_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def _token_text(value: Any) -> str | None:
    # tokenizer_config.json spells special tokens as strings or AddedToken dicts
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class TextStream:
    """One generation's text, a token at a time: `step(id)` returns the text it completes.

    Each step decodes a short window of ids twice, with and without the new one, and emits
    the difference (the incremental detokenizer of HF's TextStreamer and vLLM): constant
    work per token, and it cannot fail. tokenizers' DecodeStream raises "Invalid prefix
    encountered" when a byte-level sequence is not valid UTF-8 midway (a partial emoji or
    CJK character), which failed requests. A token that ends inside a character yields ""
    until the one that completes it; `flush()` gives what is left (as U+FFFD, as decoding
    the whole list would). The texts joined equal `decode(ids)` (tests/test_detokenize.py).
    """

    # ids kept before the new text: enough that a decoder's per-text rules (SentencePiece's
    # leading-space strip, byte fallback) see the new ids in context
    CONTEXT = 5

    def __init__(self, tokenizer: Any, byte_pieces: frozenset[int] = frozenset()) -> None:
        self._tok = tokenizer
        # SentencePiece byte fallback decodes a run of <0xNN> pieces as one: all U+FFFD if
        # the run is not valid UTF-8, so a run's text waits for the token after it
        self._bytes = byte_pieces
        self._ids: list[int] = []
        self._start = 0  # the window's first id
        self._read = 0  # ids before this one are emitted

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)  # type: ignore[no-any-return]

    def step(self, token: int) -> str:
        self._ids.append(token)
        before = self._decode(self._ids[self._start : self._read])
        text = self._decode(self._ids[self._start :])
        if (
            token in self._bytes
            or len(text) <= len(before)
            or text.endswith("\ufffd")
            or not text.startswith(before)
        ):
            return ""  # inside a character (or a decoder still rewriting its context)
        self._start = max(self._read, len(self._ids) - self.CONTEXT)
        self._read = len(self._ids)
        return text[len(before) :]

    def flush(self) -> str:
        before = self._decode(self._ids[self._start : self._read])
        text = self._decode(self._ids[self._start :])
        self._start = self._read = len(self._ids)
        return text[len(before) :] if text.startswith(before) else text


class TextOutput:
    """A request's visible text as its tokens arrive: each token's piece from a streaming
    detokenizer, cut at the first stop string, and any tail that may still begin one held
    back until it cannot.

    Only the held tail and the new piece are searched for stop strings: a stop string cannot
    start in text already released, since any tail that could begin one is held back.
    """

    def __init__(self, stop: tuple[str, ...], decoder: TextStream | None) -> None:
        self.stop, self.decoder = stop, decoder
        self._held = ""  # may still begin a stop string
        self._chunks: list[str] = []  # the released text, joined when read

    def step(self, token: int, stops_armed: bool) -> tuple[str, bool]:
        """(the pending text: held tail and this token's piece, cut before the first stop
        string when `stops_armed`; whether a stop string cut it)."""
        tail = self._held + (self.decoder.step(token) if self.decoder else "")
        cut = first_stop(tail, self.stop) if stops_armed else -1
        return (tail[:cut], True) if cut >= 0 else (tail, False)

    def release(self, tail: str, *, final: bool, cut: bool) -> str:
        """Release what of `tail` can no longer begin a stop string (all of it when `final`,
        with the bytes of an unfinished character unless a stop string cut it); the rest is
        held for the next step. Returns the released text."""
        if final and not cut and self.decoder:
            tail += self.decoder.flush()
        hold = 0 if final else held_back(tail, self.stop)
        delta, self._held = tail[: len(tail) - hold], tail[len(tail) - hold :]
        if delta:
            self._chunks.append(delta)
        return delta

    @property
    def text(self) -> str:
        if len(self._chunks) > 1:
            self._chunks[:] = ["".join(self._chunks)]
        return self._chunks[0] if self._chunks else ""


def first_stop(text: str, stops: tuple[str, ...]) -> int:
    """Where the first stop string in `text` begins, or -1."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else -1


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters may still become a stop string."""
    for n in range(min(max(map(len, stops), default=1) - 1, len(text)), 0, -1):
        if any(s.startswith(text[len(text) - n :]) for s in stops):
            return n
    return 0


def chat_template(folder: Path, config: dict[str, Any]) -> str | None:
    """The folder's chat template where transformers looks, first found first:
    chat_template.jinja, chat_template.json, tokenizer_config.json's `chat_template` (a
    string, or a list of named templates of which "default" is used)."""
    jinja, doc = folder / CHAT_TEMPLATE_JINJA, folder / CHAT_TEMPLATE_JSON
    if jinja.is_file():
        try:
            return jinja.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{jinja}: cannot read: {e}") from e
    template: Any = config.get("chat_template")
    if doc.is_file():
        try:
            loaded = json.loads(doc.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InputError(f"{doc}: not JSON: {e}") from e
        if not isinstance(loaded, dict) or not isinstance(loaded.get("chat_template"), str):
            raise InputError(f'{doc}: expected {{"chat_template": "..."}}')
        template = loaded["chat_template"]
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) else None


def byte_pieces(tokenizer: Any) -> frozenset[int]:
    """The ids of a byte-fallback BPE's <0xNN> pieces (none for byte-level BPE)."""
    model = json.loads(tokenizer.to_str()).get("model", {})
    if not model.get("byte_fallback"):
        return frozenset()
    vocab = tokenizer.get_vocab()
    return frozenset(vocab[p] for b in range(256) if (p := f"<0x{b:02X}>") in vocab)


class TextCodec:
    """Encode prompts, decode generated ids, and render chat messages into a prompt."""

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        folder = Path(folder)
        path = folder / TOKENIZER_JSON
        if not path.is_file():
            raise InputError(f"{folder}: no {TOKENIZER_JSON}; send token ids instead of text")
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception subclasses
            raise InputError(f"{path}: cannot load tokenizer: {e}") from e
        config_path = folder / TOKENIZER_CONFIG
        config: dict[str, Any] = {}
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text())
            except (OSError, ValueError) as e:
                raise InputError(f"{config_path}: not a JSON object: {e}") from e
            if not isinstance(config, dict):
                raise InputError(f"{config_path}: not a JSON object")
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))
        template = chat_template(folder, config)
        self._byte_pieces = byte_pieces(self._tok)
        self.has_chat_template = isinstance(template, str)
        self._template = _compile(template if isinstance(template, str) else FALLBACK_TEMPLATE)

    @property
    def eos_id(self) -> int | None:
        return self._tok.token_to_id(self.eos_token) if self.eos_token else None

    def encode(self, text: str, *, special: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=special).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def piece(self, token: int) -> str:
        """One token's own text, special tokens included (for logprobs)."""
        return self._tok.decode([token], skip_special_tokens=False)

    def stream(self) -> TextStream:
        """A streaming decoder for one generation (see TextStream)."""
        return TextStream(self._tok, self._byte_pieces)

    def chat_prompt(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> str:
        """The prompt text for `messages` ([{role, content}]), ending with the assistant's turn.

        A template is code from the model's folder: rendering is bounded in time (every pass
        over `messages` checks the clock) and in output size, so a template of nested loops
        cannot hold the server (issue 14, item 9).
        """
        deadline = time.monotonic() + TEMPLATE_SECONDS
        parts, size = [], 0
        try:
            for part in self._template.generate(
                messages=_Timed(messages, deadline),
                add_generation_prompt=True,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
                tools=tools,  # OpenAI's list; templates that know tools (Llama 3.1) render it
            ):
                size += len(part)
                if size > TEMPLATE_CHARS:
                    raise BadRequest(
                        f"the chat template wrote over {TEMPLATE_CHARS} characters", "messages"
                    )
                if time.monotonic() > deadline:
                    raise _TemplateTimeout
                parts.append(part)
            return "".join(parts)
        except _TemplateTimeout:
            raise BadRequest(
                f"the chat template ran over {TEMPLATE_SECONDS:g} s on these messages", "messages"
            ) from None
        except BadRequest:
            raise
        except Exception as e:  # a template error is about these messages
            raise BadRequest(f"the chat template failed on these messages: {e}", "messages") from e

    def chat_ids(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        # templates write bos themselves; letting the tokenizer add one too would double it
        return self.encode(self.chat_prompt(messages, tools), special=not self.has_chat_template)


TEMPLATE_SECONDS = 2.0
TEMPLATE_CHARS = 16 * 2**20


class _TemplateTimeout(Exception):
    pass


class _Timed(list):  # type: ignore[type-arg]
    """The messages, as a list that checks a deadline on every item a template loop takes."""

    def __init__(self, items: list[Any], deadline: float) -> None:
        super().__init__(items)
        self._deadline = deadline

    def __iter__(self) -> Any:
        for item in super().__iter__():
            if time.monotonic() > self._deadline:
                raise _TemplateTimeout
            yield item

    def __getitem__(self, index: Any) -> Any:
        got = super().__getitem__(index)
        return _Timed(got, self._deadline) if isinstance(index, slice) else got

    def __reversed__(self) -> Any:
        return iter(_Timed(list(super().__reversed__()), self._deadline))


def _raise(message: str) -> None:
    raise BadRequest(message, "messages")


def _compile(source: str) -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # the options and helpers transformers' apply_chat_template gives templates
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except Exception as e:
        raise InputError(f"tokenizer_config.json: the chat_template does not parse: {e}") from e
