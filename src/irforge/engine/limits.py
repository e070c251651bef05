"""What a request may ask of this model and program: the checks that need the engine's facts.

Each refusal is a BadRequest naming the field at fault, raised before the request is queued.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from irforge.engine.errors import BadRequest
from irforge.engine.guided import Grammars, Guide, GuidedSpec
from irforge.engine.options import GenerationOptions
from irforge.engine.text import TextCodec
from irforge.runtime.batching import blocks

# A prompt longer than context x this cannot fit: refused before it is tokenized.
MAX_CHARS_PER_TOKEN = 64


@dataclass(frozen=True)
class Checked:
    """A request that can be served: its prompt ids and text, its token budget, its grammar."""

    ids: list[int]
    text: str | None
    max_tokens: int
    guide: Guide | None
    options: GenerationOptions


@dataclass(frozen=True)
class Limits:
    folder: Path  # named in messages
    max_seq_len: int
    stride: int
    page_count: int  # the cache's, scratch page included
    vocab_size: int
    top_k: int | None  # the program returns only its top k logits
    can_score: bool
    text: TextCodec | None
    grammars: Grammars | None

    @property
    def cache_tokens(self) -> int:
        return (self.page_count - 1) * self.stride  # page 0 is scratch

    def check(self, prompt: str | Sequence[int], options: GenerationOptions) -> Checked:
        ids, text = self.prompt(prompt)
        room = self.max_seq_len - len(ids)
        if len(ids) >= self.cache_tokens:
            raise BadRequest(
                f"the prompt has {len(ids)} tokens; the KV cache holds {self.cache_tokens} "
                "(serve --kv-cache-pages / --kv-cache-gib)",
                "prompt",
            )
        max_tokens = options.max_tokens
        if max_tokens is None:  # OpenAI's: up to the context, here as far as the cache holds
            max_tokens = min(room, self.cache_tokens - len(ids))
        if max_tokens > room:
            raise BadRequest(
                f"max_tokens {max_tokens} is over the limit: {room} new tokens fit after the "
                f"prompt's {len(ids)} in the context of {self.max_seq_len}",
                "max_tokens",
            )
        if len(ids) + max_tokens > self.cache_tokens:
            raise BadRequest(
                f"the request needs {blocks(len(ids) + max_tokens, self.stride)} cache pages "
                f"even alone, the cache has {self.page_count - 1}; lower max_tokens",
                "max_tokens",
            )
        if options.min_tokens > max_tokens:
            raise BadRequest(
                f"min_tokens must be between 0 and max_tokens ({max_tokens}), "
                f"got {options.min_tokens}",
                "min_tokens",
            )
        self._tokens(options.stop_token_ids, "stop token id", "stop_token_ids")
        self._tokens(
            [t for t, _ in options.sampling.logit_bias], "logit_bias token id", "logit_bias"
        )
        if options.logprobs is not None:
            self._full_logits("logprobs need the full logits", "logprobs")
        guide = self._guide(options.guided) if options.guided is not None else None
        if options.echo and options.logprobs is not None and not self.can_score:
            raise BadRequest(
                f"{self.folder}: scoring the prompt needs a single-device folder exported by "
                "this irforge (its program has score_bs1)",
                "echo",
            )
        if self.top_k and options.sampling.top_k > self.top_k:
            raise BadRequest(
                f"top_k {options.sampling.top_k} is over the program's exported top_k {self.top_k}",
                "top_k",
            )
        return Checked(ids, text, max_tokens, guide, options)

    def prompt(self, prompt: str | Sequence[int]) -> tuple[list[int], str | None]:
        """The prompt's token ids (and its text, if it came as text)."""
        text = None
        if isinstance(prompt, str):
            if not prompt:
                raise BadRequest("the prompt is empty", "prompt")
            if self.text is None:
                raise BadRequest(f"{self.folder} has no tokenizer.json: send token ids", "prompt")
            if len(prompt) > self.max_seq_len * MAX_CHARS_PER_TOKEN:  # refused untokenized
                raise BadRequest(
                    f"the prompt has {len(prompt)} characters; no {self.max_seq_len}-token "
                    "context holds that many",
                    "prompt",
                )
            ids, text = self.text.encode(prompt), prompt
            if not ids:
                raise BadRequest("the prompt encodes to no tokens", "prompt")
        else:
            if len(prompt) >= self.max_seq_len:  # before converting a huge list
                self._too_long(len(prompt))
            ids = [int(t) for t in prompt]
            if not ids:
                raise BadRequest("the prompt is empty", "prompt")
            self._tokens(ids, "token id", "prompt")
        if len(ids) >= self.max_seq_len:
            self._too_long(len(ids))
        return ids, text

    def _too_long(self, n: int) -> None:
        raise BadRequest(
            f"the prompt has {n} tokens; the context is {self.max_seq_len} tokens, "
            f"so a prompt may have at most {self.max_seq_len - 1}",
            "prompt",
        )

    def _tokens(self, ids: Sequence[int], what: str, param: str) -> None:
        bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise BadRequest(
                f"{what} {bad} is outside the vocabulary (0..{self.vocab_size - 1})", param
            )

    def _full_logits(self, what: str, param: str) -> None:
        if self.top_k:
            raise BadRequest(
                f"{what}; this program returns only its top {self.top_k} (exported with --top-k)",
                param,
            )

    def _guide(self, spec: GuidedSpec) -> Guide:
        if self.grammars is None:
            raise BadRequest(
                f"{self.folder} has no tokenizer.json: structured output needs one",
                "response_format",
            )
        self._full_logits("structured output needs the full logits", "response_format")
        return self.grammars.guide(spec)
