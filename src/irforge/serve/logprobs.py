"""Per-token log-probabilities in OpenAI's two shapes: legacy completions and chat."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from irforge.engine.text import TextCodec

Row = tuple[float, tuple[tuple[int, float], ...]]


def _piece(text: TextCodec | None, token: int) -> str:
    # without a tokenizer, vLLM's spelling of a bare id
    return text.piece(token) if text is not None else f"token_id:{token}"


def completion_logprobs(
    text: TextCodec | None, tokens: Sequence[int], rows: Sequence[Row], offset: int = 0
) -> dict[str, Any]:
    """/v1/completions `logprobs`: tokens, token_logprobs, top_logprobs (the N likeliest and
    the chosen one, as vLLM returns) and text_offset (characters, from `offset`)."""
    pieces = [_piece(text, t) for t in tokens]
    offsets, at = [], offset
    for p in pieces:
        offsets.append(at)
        at += len(p)
    tops = []
    for piece, (lp, top) in zip(pieces, rows, strict=True):
        entry = {_piece(text, i): v for i, v in top}
        entry.setdefault(piece, lp)
        tops.append(entry)
    return {
        "tokens": pieces,
        "token_logprobs": [lp for lp, _ in rows],
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def chat_logprobs(
    text: TextCodec | None, tokens: Sequence[int], rows: Sequence[Row]
) -> dict[str, Any]:
    """/v1/chat/completions `logprobs`: {"content": [{token, logprob, bytes, top_logprobs}]}."""

    def one(token: int, lp: float) -> dict[str, Any]:
        piece = _piece(text, token)
        return {"token": piece, "logprob": lp, "bytes": list(piece.encode())}

    return {
        "content": [
            {**one(t, lp), "top_logprobs": [one(i, v) for i, v in top]}
            for t, (lp, top) in zip(tokens, rows, strict=True)
        ]
    }


def prompt_logprobs(
    text: TextCodec | None, prompt: Sequence[int], rows: Sequence[Row]
) -> dict[str, Any]:
    """The prompt's part of `echo` logprobs (rows[i] is about prompt[i + 1]): its first token
    has no log-probability (None), as OpenAI's and vLLM's."""
    first = _piece(text, prompt[0])
    scored = completion_logprobs(text, prompt[1:], rows, offset=len(first))
    return {
        "tokens": [first, *scored["tokens"]],
        "token_logprobs": [None, *scored["token_logprobs"]],
        "top_logprobs": [None, *scored["top_logprobs"]],
        "text_offset": [0, *scored["text_offset"]],
    }


def text_end(logprobs: dict[str, Any]) -> int:
    """Where the text of the last token of completion_logprobs-shaped `logprobs` ends."""
    if not logprobs["tokens"]:
        return 0
    return int(logprobs["text_offset"][-1]) + len(logprobs["tokens"][-1])


def echo_logprobs(
    text: TextCodec | None,
    prompt: Sequence[int],
    prompt_rows: Sequence[Row],
    tokens: Sequence[int],
    rows: Sequence[Row],
) -> dict[str, Any]:
    """completion_logprobs over the prompt and then the completion, as `echo` returns them."""
    head = prompt_logprobs(text, prompt, prompt_rows)
    tail = completion_logprobs(text, tokens, rows, text_end(head))
    return {k: [*head[k], *tail[k]] for k in head}
