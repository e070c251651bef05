"""The arrays of one prefill or decode call: rows padded onto the scratch page, batch sizes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from irforge.runtime.pages import SCRATCH_PAGE

# Prompt tokens prefilled per engine step (all requests together) between decode steps: a long
# prompt then delays running streams by one chunk's prefill per token, not by its whole prefill.
DEFAULT_PREFILL_CHUNK = 512


def blocks(length: int, stride: int) -> int:
    """Pages that hold `length` positions (at least one)."""
    return max(1, -(-length // stride))


def split(sizes: Sequence[int], n: int) -> list[int]:
    """Batch sizes of the calls that serve `n` rows: the largest while more rows remain than
    it holds, then the smallest exported size that fits the rest."""
    sizes = sorted(sizes)
    calls = []
    while n > sizes[-1]:
        calls.append(sizes[-1])
        n -= sizes[-1]
    if n:
        calls.append(next(b for b in sizes if b >= n))
    return calls


def _block_ids(pages: Sequence[Sequence[int]], used: Sequence[int], bs: int) -> np.ndarray:
    ids = np.full((bs, max(used)), SCRATCH_PAGE, dtype=np.int64)
    for row, (row_pages, n) in enumerate(zip(pages, used, strict=True)):
        ids[row, :n] = row_pages[:n]
    return ids


def prefill_arrays(
    chunks: Sequence[Sequence[int]],
    pages: Sequence[Sequence[int]],
    bs: int,
    stride: int,
    starts: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(tokens [bs, S], start_pos [bs], seq_lens [bs], block_ids [bs, B]) of one prefill call.

    Row i holds the tokens at positions starts[i] .. starts[i] + len(chunks[i]) (default start
    0: whole prompts); a start must be a multiple of `stride`. S is the most pages any chunk
    needs, times stride; B covers every row's pages up to the end of its chunk's S positions.
    A row's unused blocks and every padding row point at the scratch page, so padding never
    writes into a live request's pages.
    """
    starts = list(starts) if starts is not None else [0] * len(chunks)
    if any(s % stride for s in starts):
        raise ValueError(f"prefill starts {starts} must be multiples of block_seq_stride {stride}")
    chunk_pages = max(blocks(len(c), stride) for c in chunks)
    used = [blocks(s + len(c), stride) for s, c in zip(starts, chunks, strict=True)]
    block_ids = _block_ids(pages, used, bs)
    width = max(s // stride for s in starts) + chunk_pages
    if block_ids.shape[1] < width:  # every row's chunk pages are listed, scratch past its own
        pad = np.full((bs, width - block_ids.shape[1]), SCRATCH_PAGE, dtype=np.int64)
        block_ids = np.concatenate([block_ids, pad], axis=1)
    tokens = np.zeros((bs, chunk_pages * stride), dtype=np.int64)
    start_pos = np.zeros(bs, dtype=np.int64)
    seq_lens = np.ones(bs, dtype=np.int64)  # padding rows: length 1, as shortfin pads
    for row, (s, c) in enumerate(zip(starts, chunks, strict=True)):
        tokens[row, : len(c)] = c
        start_pos[row] = s
        seq_lens[row] = s + len(c)
    return tokens, start_pos, seq_lens, block_ids


def decode_arrays(
    last_tokens: Sequence[int],
    positions: Sequence[int],
    pages: Sequence[Sequence[int]],
    bs: int,
    stride: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(tokens [bs, 1], seq_lens, start_positions, block_ids [bs, B]) for one decode step.

    Row i writes `last_tokens[i]` at `positions[i]` and attends to positions 0..positions[i];
    padding rows write position 0 of the scratch page.
    """
    n = len(last_tokens)
    starts = np.zeros(bs, dtype=np.int64)
    starts[:n] = positions
    seq_lens = starts + 1
    tokens = np.zeros((bs, 1), dtype=np.int64)
    tokens[:n, 0] = last_tokens
    used = [blocks(int(s), stride) for s in seq_lens[:n]]
    return tokens, seq_lens, starts, _block_ids(pages, used, bs)


def row_logits(out: object, row: int, position: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(scores, token ids or None) of one row at one position of a call's output.

    A program exported with top_k returns (values, indices) [N, S, k]: the scores are the k
    values and the ids map a chosen index back to the vocabulary. A prefill that returns only
    each row's last position ([N, 1, ...], as irforge exports it and as shortfin reads it) has
    that position at 0.
    """
    first: Any = out[0] if isinstance(out, tuple) else out
    if first.shape[1] == 1:
        position = 0
    if isinstance(out, tuple):
        return np.asarray(out[0][row, position], np.float32), np.asarray(out[1][row, position])
    return np.asarray(out[row, position], np.float32), None  # type: ignore[index]


def verify_arrays(
    rows: Sequence[Sequence[int]],
    positions: Sequence[int],
    pages: Sequence[Sequence[int]],
    bs: int,
    width: int,
    stride: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens [bs, width], start_positions [bs], block_ids [bs, B]) of one verify call.

    Row i holds its last token and its proposal (`rows[i]`, at most `width` tokens, padded
    with 0) from `positions[i]`; B lists pages up to the last of the `width` positions, the
    scratch page past what a row owns (its padding positions are written there, or into its
    own pages past its length, which later steps overwrite). Padding rows start at 0 of the
    scratch page.
    """
    tokens = np.zeros((bs, width), dtype=np.int64)
    starts = np.zeros(bs, dtype=np.int64)
    for row, (r, p) in enumerate(zip(rows, positions, strict=True)):
        tokens[row, : len(r)] = r
        starts[row] = p
    need = max(blocks(int(s) + width, stride) for s in starts)
    ids = np.full((bs, need), SCRATCH_PAGE, dtype=np.int64)
    for row, (row_pages, p) in enumerate(zip(pages, positions, strict=True)):
        owned = min(len(row_pages), blocks(p + width, stride))
        ids[row, :owned] = row_pages[:owned]
    return tokens, starts, ids
