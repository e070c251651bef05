"""Structured output: each step's logits masked to what a grammar allows, with xgrammar.

xgrammar (Apache-2.0, mlc-ai; vLLM's and SGLang's default) was picked over outlines-core and
llguidance for its JSON-schema coverage and because it needs no Rust toolchain or network at
run time: its CPU wheel compiles a grammar against the vocabulary in milliseconds and fills a
128k-entry bitmask per token in microseconds. Its package declares triton (1 GB, for its GPU
kernel only); irforge masks on the CPU, so `make setup` installs it without its dependencies
and this module needs only xgrammar, its tvm-ffi runtime, torch and pydantic.

The vocabulary comes from tokenizer.json through the `tokenizers` library (no transformers at
serve time): byte-level BPE (Llama 3, GPT-2) or sentencepiece-style byte fallback (Llama 2,
Mistral).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from irforge.engine.errors import BadRequest

# The versions irforge is tested with; `make setup` installs these (without xgrammar's triton).
PINS = ("xgrammar==0.2.9", "apache-tvm-ffi==0.1.15.post2")
INSTALL = f"pip install --no-deps {' '.join(PINS)}"
# Whitespace runs a JSON grammar allows: enough for indented output, not an endless run.
MAX_JSON_WHITESPACE = 16
CACHED_GRAMMARS = 64


@dataclass(frozen=True)
class GuidedSpec:
    """What a request's output must match: one of json_object, json_schema, regex, choice."""

    kind: str
    value: str = ""  # the schema as JSON text, the regex, or the choices as a JSON list

    @classmethod
    def of(cls, kind: str, value: Any = "") -> GuidedSpec:
        if kind == "json_schema":
            return cls(kind, value if isinstance(value, str) else json.dumps(value, sort_keys=True))
        if kind == "choice":
            if not value or not all(isinstance(c, str) and c for c in value):
                raise BadRequest(
                    "guided_choice must be a list of non-empty strings", "guided_choice"
                )
            return cls(kind, json.dumps(list(value)))
        return cls(kind, value)


def _vocab_type(doc: dict[str, Any], xgr: Any) -> tuple[Any, bool]:
    """(xgrammar's VocabType, add_prefix_space) of a tokenizer.json."""

    def kinds(part: Any) -> set[str]:
        if not isinstance(part, dict):
            return set()
        found = {str(part.get("type"))}
        for child in part.get("decoders") or part.get("pretokenizers") or []:
            found |= kinds(child)
        return found

    decoders = kinds(doc.get("decoder"))
    if "ByteLevel" in decoders:
        return xgr.VocabType.BYTE_LEVEL, False
    model = doc.get("model") or {}
    prefix = "Metaspace" in decoders | kinds(doc.get("pre_tokenizer")) or "Prepend" in kinds(
        doc.get("normalizer")
    )
    if model.get("byte_fallback"):
        return xgr.VocabType.BYTE_FALLBACK, prefix
    return xgr.VocabType.RAW, prefix


class Grammars:
    """One model's grammar compiler (built on first use) and its recently compiled grammars."""

    def __init__(self, tokenizer_json: Path, vocab_size: int, stop_ids: frozenset[int]) -> None:
        self.tokenizer_json, self.vocab_size, self.stop_ids = tokenizer_json, vocab_size, stop_ids
        self._compiler: Any = None
        self._compiled: OrderedDict[GuidedSpec, Any] = OrderedDict()
        self._lock = threading.Lock()  # submit() runs on the HTTP thread pool

    def _xgr(self) -> Any:
        try:
            import xgrammar
        except ImportError:
            raise BadRequest(
                f"structured output needs xgrammar, which is not installed ({INSTALL})",
                "response_format",
            ) from None
        return xgrammar

    def _compiler_for(self, xgr: Any) -> Any:
        if self._compiler is None:
            from tokenizers import Tokenizer

            doc = json.loads(self.tokenizer_json.read_text())
            tok = Tokenizer.from_file(str(self.tokenizer_json))
            vocab = [tok.id_to_token(i) or "" for i in range(tok.get_vocab_size())]
            kind, prefix = _vocab_type(doc, xgr)
            info = xgr.TokenizerInfo(
                vocab,
                kind,
                vocab_size=max(self.vocab_size, len(vocab)),
                stop_token_ids=sorted(self.stop_ids),
                add_prefix_space=prefix,
            )
            self._compiler = xgr.GrammarCompiler(info)
        return self._compiler

    def guide(self, spec: GuidedSpec) -> Guide:
        """A fresh matcher for one request; BadRequest if the spec does not compile."""
        xgr = self._xgr()
        with self._lock:
            compiled = self._compiled.get(spec)
            if compiled is None:
                compiled = self._compile(xgr, spec)
                self._compiled[spec] = compiled
                while len(self._compiled) > CACHED_GRAMMARS:
                    self._compiled.popitem(last=False)
            self._compiled.move_to_end(spec)
        return Guide(xgr, compiled, self.vocab_size)

    def _compile(self, xgr: Any, spec: GuidedSpec) -> Any:
        compiler = self._compiler_for(xgr)
        param = {"json_object": "response_format", "json_schema": "response_format"}
        try:
            if spec.kind == "json_object":  # an object, as OpenAI's is, not any JSON value
                return compiler.compile_json_schema(
                    '{"type": "object"}', max_whitespace_cnt=MAX_JSON_WHITESPACE
                )
            if spec.kind == "json_schema":
                return compiler.compile_json_schema(
                    spec.value, max_whitespace_cnt=MAX_JSON_WHITESPACE
                )
            if spec.kind == "regex":
                return compiler.compile_regex(spec.value)
            choices = " | ".join(json.dumps(c) for c in json.loads(spec.value))
            return compiler.compile_grammar(f"root ::= {choices}")
        except (RuntimeError, ValueError, TypeError) as e:
            name = param.get(spec.kind, f"guided_{spec.kind}")
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BadRequest(f"{name}: cannot be compiled ({first[:200]})", name) from None


class Guide:
    """One request's grammar state: mask a step's logits, then accept the token chosen."""

    def __init__(self, xgr: Any, compiled: Any, vocab_size: int) -> None:
        self._xgr, self.vocab_size = xgr, vocab_size
        self.matcher = xgr.GrammarMatcher(compiled)
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """A copy of a [vocab] logits row with every token the grammar forbids at -inf."""
        import torch

        out = torch.from_numpy(np.array(logits, np.float32, copy=True))
        self.matcher.fill_next_token_bitmask(self.bitmask)
        self._xgr.apply_token_bitmask_inplace(out, self.bitmask, vocab_size=self.vocab_size)
        return out.numpy()

    def accept(self, token: int) -> None:
        if not self.matcher.accept_token(token):
            raise ValueError(f"token {token} does not continue the grammar")

    @property
    def finished(self) -> bool:
        """The output is complete: the grammar allows only a stop token now."""
        return bool(self.matcher.is_terminated())
