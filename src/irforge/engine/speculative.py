"""Speculative decoding's host side: options, n-gram proposals, acceptance, when to speculate.

The verify step that scores a row's last token and its proposal in one call is the program's
(`verify_bs{N}`, PagedLlama.verify); the engine calls it when `Speculator.plan` says a decode
batch gains by it, and emits each row's tokens through the usual output stage position by
position while they equal the proposal (engine.py). For a proposer that puts all its
probability on one token, sampling the target's token at a position and keeping the proposal
while they agree *is* the rejection rule below (a proposed t is kept with probability p(t),
and a disagreeing draw is distributed as p without t, renormalized), so greedy and sampled
requests, grammars, penalties, seeds and logprobs go through one path.

- `ngram_proposal`: prompt lookup as vLLM's `ngram` method does it: the longest suffix of the
  sequence, `prompt_lookup_min` to `prompt_lookup_max` tokens long, that occurred earlier;
  of equally long ones the earliest; the (at most k) tokens that followed it are proposed.
- `accept_greedy`: the proposal's tokens are kept while they equal the target's greedy
  choices, and the target's next choice is added, so the output is exactly what decoding
  alone would give.
- `accept_sampled`: the standard rejection rule (Leviathan et al. 2023; Chen et al. 2023) for
  a proposer that puts all its probability on one token: a proposed token t is kept with
  probability p(t); at the first rejection the replacement is drawn from p without t,
  renormalized; if all are kept, one more token is drawn from the last position's p. The
  output's distribution is p's, position by position.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from irforge.errors import ConfigError

NGRAM, DRAFT_MODEL = "ngram", "draft_model"
METHODS = (NGRAM, DRAFT_MODEL)  # vLLM's names
# prompt_lookup_max / _min when neither is given: the pair bench/speculative.py measured best
# on SmolLM2 (vLLM's own default is 5 and 5). Given one, the other follows it, as in vLLM.
DEFAULT_LOOKUP = (4, 2)


def ngram_proposal(tokens: Sequence[int], k: int, min_n: int, max_n: int) -> list[int]:
    """Up to `k` tokens that followed the longest earlier occurrence of the sequence's end."""
    total = len(tokens)
    if k < 1 or total < min_n + 1:
        return []
    seq = np.asarray(tokens)
    for n in range(min(max_n, total - 1), min_n - 1, -1):
        suffix = seq[total - n :]
        # occurrences that end before the last token, so at least one token follows them
        windows = np.lib.stride_tricks.sliding_window_view(seq[: total - 1], n)
        hits = np.flatnonzero((windows == suffix).all(axis=1))
        if hits.size:
            start = int(hits[0]) + n
            return [int(t) for t in seq[start : start + k]]
    return []


def accept_greedy(proposal: Sequence[int], choices: Sequence[int]) -> list[int]:
    """The tokens a verify step yields: `choices[i]` is the target's greedy token after the
    row's last token and proposal[:i] (len(proposal) + 1 of them)."""
    if len(choices) != len(proposal) + 1:
        raise ValueError(f"{len(proposal)} proposed tokens need {len(proposal) + 1} choices")
    out = []
    for proposed, chosen in zip(proposal, choices, strict=False):
        out.append(int(chosen))
        if proposed != chosen:
            return out
    out.append(int(choices[-1]))
    return out


def accept_sampled(
    proposal: Sequence[int], probs: np.ndarray, rng: np.random.Generator
) -> list[int]:
    """The tokens a verify step yields under sampling: `probs[i]` is the target's
    distribution after the row's last token and proposal[:i] ([len(proposal) + 1, vocab])."""
    if probs.shape[0] != len(proposal) + 1:
        raise ValueError(f"{len(proposal)} proposed tokens need {len(proposal) + 1} rows")
    out = []
    for i, token in enumerate(proposal):
        p = probs[i]
        if rng.random() < p[token]:
            out.append(int(token))
            continue
        rest = p.copy()  # (p(t) < 1 here: a rejected token leaves mass elsewhere)
        rest[token] = 0.0
        out.append(int(rng.choice(len(rest), p=rest / rest.sum())))
        return out
    last = probs[len(proposal)]
    out.append(int(rng.choice(len(last), p=last / last.sum())))
    return out


@dataclass(frozen=True)
class SpeculativeConfig:
    """`--speculative-config`: vLLM's JSON object and field names.

    method: "ngram" (prompt lookup) or "draft_model" (default: "draft_model" when `model` is
    given, as in vLLM, else "ngram"). model: the draft model's built folder. num_speculative_
    tokens: tokens proposed a step (default: the k the program was exported with, its most).
    prompt_lookup_max / _min: the longest and shortest suffix looked up. disable_by_batch_size:
    no speculation while more requests than this are running (default: the engine decides from
    measured step times and acceptance).
    """

    method: str | None = None
    model: str | None = None
    num_speculative_tokens: int | None = None
    prompt_lookup_max: int | None = None
    prompt_lookup_min: int | None = None
    disable_by_batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.method is None:
            object.__setattr__(self, "method", DRAFT_MODEL if self.model else NGRAM)
        if self.method not in METHODS:
            raise ConfigError(
                f"speculative method {self.method!r} is not supported; use one of "
                f"{', '.join(METHODS)}"
            )
        if (self.method == DRAFT_MODEL) != bool(self.model):
            raise ConfigError(
                "speculative method draft_model needs a model (the draft's built folder), "
                "and only it takes one"
            )
        for name in (
            "num_speculative_tokens",
            "prompt_lookup_max",
            "prompt_lookup_min",
            "disable_by_batch_size",
        ):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ConfigError(
                    f"speculative {name} must be an integer of 1 or more, got {value!r}"
                )
        most, least = self.lookup
        if least > most:
            raise ConfigError(
                f"speculative prompt_lookup_min {least} is over prompt_lookup_max {most}"
            )

    @classmethod
    def parse(cls, text: str | None, model: str | None = None) -> SpeculativeConfig | None:
        """From `--speculative-config`'s JSON object and `--speculative-model` (vLLM's older
        flag: the draft's folder, the same as the object's "model"); None if neither."""
        if text is None and model is None:
            return None
        try:
            fields = json.loads(text) if text is not None else {}
        except json.JSONDecodeError as e:
            raise ConfigError(f"--speculative-config is not JSON: {e.msg}") from None
        if model is not None and isinstance(fields, dict):
            fields = {**fields, "model": model}
        return cls.of(fields)

    @classmethod
    def of(cls, fields: Any) -> SpeculativeConfig:
        """From a dict of its fields (JSON, or EngineOptions made from a dict)."""
        if isinstance(fields, SpeculativeConfig):
            return fields
        if not isinstance(fields, dict):
            raise ConfigError("--speculative-config must be a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ConfigError(
                f"--speculative-config has unknown fields {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        return cls(**fields)

    @property
    def lookup(self) -> tuple[int, int]:
        """(prompt_lookup_max, prompt_lookup_min) with the defaults filled in."""
        most, least = self.prompt_lookup_max, self.prompt_lookup_min
        if most is None and least is None:
            return DEFAULT_LOOKUP
        return (most or least or 0, least or most or 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# A request's share of proposed tokens kept, assumed until its own verify steps say.
PRIOR_ACCEPTANCE = 0.5
ACCEPTANCE_WEIGHT = 0.3  # of the latest verify step, in a request's running acceptance
# Per step a request is not verified, its acceptance moves this share of the way back to the
# prior: a request that stopped repeating its context is tried again now and then (about
# every 20 steps from 0.2), in case it starts again.
RECOVERY = 0.03
TIME_WEIGHT = 0.2  # of the latest call, in the running time of a kind of step


class Speculator:
    """When a decode batch is verified instead, and with which proposals.

    A verify step costs more than a decode step of the same rows (k + 1 positions a row) and
    yields, per row, its accepted tokens plus one. `plan` verifies a batch only when the
    expected tokens per second beat decoding's: each row's expected yield is 1 + its running
    acceptance x its proposal's length, and each kind of step's time is its running average,
    measured by the engine (`timed`). So speculation steps aside by itself where it would cost
    throughput: large batches (verify's rows grow k + 1 times), requests whose proposals are
    mostly rejected, a device where extra rows are not nearly free.

    Args:
        config: the options.
        exported_k: the program's k (its verify calls take k + 1 tokens a row).
        verify_sizes: the batch sizes verify_bs{N} exists at.
        max_positions: the most positions a call's pages may list (the export's context,
            in whole pages).
    """

    def __init__(
        self,
        config: SpeculativeConfig,
        exported_k: int,
        verify_sizes: Sequence[int],
        max_positions: int,
    ) -> None:
        k = config.num_speculative_tokens or exported_k
        if k > exported_k:
            raise ConfigError(
                f"speculative num_speculative_tokens {k} is over the {exported_k} the program "
                "was exported with (its verify calls take that many)"
            )
        self.config, self.k, self.width = config, k, exported_k + 1
        self.most, self.least = config.lookup
        self.verify_sizes = frozenset(verify_sizes)
        self.max_positions = max_positions
        self.step_time: dict[tuple[str, int], float] = {}
        self._acceptance: dict[int, float] = {}  # by id() of a live request

    def fits(self, length: int) -> bool:
        """Whether a verify call after a sequence of `length` tokens stays in the program's
        context (its k + 1 positions, and a draft's k, from the last token)."""
        return length - 1 + self.width <= self.max_positions

    def propose(self, context: Sequence[int], left: int) -> list[int]:
        """The n-gram proposal after `context` for a request that may generate `left` more
        tokens: none where the verify call's positions would pass the program's context."""
        if not self.fits(len(context)):
            return []
        return ngram_proposal(context, min(self.k, left - 1), self.least, self.most)

    def plan(
        self,
        rows: Sequence[Any],
        bs: int,
        running: int,
        propose: Callable[[], list[list[int]]],
    ) -> list[list[int]] | None:
        """Each row's proposal if the decode batch `rows` (requests, at batch size bs, of
        `running` in all) is to be verified, else None: decode it. `propose()` makes the rows'
        proposals (each maybe empty); it is not called where even proposals of k tokens each
        could not pay, so a batch that will not speculate costs no lookups or draft steps."""
        limit = self.config.disable_by_batch_size
        if bs not in self.verify_sizes or (limit is not None and running > limit):
            return None
        decode, verify = self.step_time.get(("decode", bs)), self.step_time.get(("verify", bs))
        if decode is None:
            return None  # a decode step first: its time is what verify must beat
        if verify is not None and not self._pays(rows, [self.k] * len(rows), decode, verify):
            self._recover(rows)
            return None
        proposals = propose()
        if not any(proposals):
            return None
        if verify is None or self._pays(rows, [len(p) for p in proposals], decode, verify):
            return proposals  # (with verify's time unknown: to measure it)
        self._recover([r for r, p in zip(rows, proposals, strict=True) if p])
        return None

    def _pays(
        self, rows: Sequence[Any], lengths: Sequence[int], decode: float, verify: float
    ) -> bool:
        """Whether proposals of these lengths are expected to yield more tokens per second
        verified than the rows' one token each decoded."""
        expected = sum(1.0 + self.acceptance(r) * n for r, n in zip(rows, lengths, strict=True))
        return expected / verify > len(rows) / decode

    def _recover(self, rows: Sequence[Any]) -> None:
        """Move the acceptance of rows not verified this step toward the prior."""
        for r in rows:
            a = self.acceptance(r)
            self._acceptance[id(r)] = a + (PRIOR_ACCEPTANCE - a) * RECOVERY

    def acceptance(self, req: Any) -> float:
        return self._acceptance.get(id(req), PRIOR_ACCEPTANCE)

    def observe(self, req: Any, proposed: int, accepted: int) -> None:
        """A verify step kept `accepted` of the `proposed` tokens of `req`."""
        if proposed:
            a = self.acceptance(req)
            self._acceptance[id(req)] = a + (accepted / proposed - a) * ACCEPTANCE_WEIGHT

    def forget(self, req: Any) -> None:
        """`req` is done."""
        self._acceptance.pop(id(req), None)

    def timed(self, kind: str, bs: int, seconds: float) -> None:
        """A `kind` ("decode" or "verify") call at batch size bs took `seconds`."""
        old = self.step_time.get((kind, bs))
        self.step_time[(kind, bs)] = seconds if old is None else old + (seconds - old) * TIME_WEIGHT
