"""Text in and out of the engine: tokenizer.json, tokenizer_config.json and its chat template."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from ..artifacts import TOKENIZER_CONFIG, TOKENIZER_JSON
from ..errors import InputError
from .errors import BadRequest

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

    tokenizers' DecodeStream keeps a few ids of state, so each token costs O(1), not a
    re-decode of everything generated so far. A token that ends inside a UTF-8 character
    yields "" until the one that completes it; `flush()` at the end gives what is left (as
    U+FFFD, the way decoding the whole list would).
    """

    def __init__(self, tokenizer: Any) -> None:
        from tokenizers.decoders import DecodeStream

        self._tok, self._stream = tokenizer, DecodeStream(skip_special_tokens=True)
        self._pending: list[int] = []  # ids since the last text, still inside a character

    def step(self, token: int) -> str:
        text = self._stream.step(self._tok, token)
        if text is None:
            self._pending.append(token)
            return ""
        self._pending.clear()
        return text

    def flush(self) -> str:
        rest = self._tok.decode(self._pending, skip_special_tokens=True)
        self._pending.clear()
        return rest


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
        template = config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
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
        return TextStream(self._tok)

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
