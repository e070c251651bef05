"""Choosing the next token from logits: greedy, or temperature with top-k / top-p, after the
penalties (presence, frequency, repetition) and logit bias are applied."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from irforge.artifacts.abi import SCORE_TOP
from irforge.errors import ConfigError

# Below this a temperature is greedy (vLLM's rule): dividing by 1e-320 overflows to inf and NaN.
GREEDY_BELOW = 1e-5
MAX_SEED = 2**64 - 1


@dataclass(frozen=True)
class Sampling:
    """temperature 0 means greedy; top_k 0 and top_p 1 disable those filters."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    # OpenAI's: logit -= presence * (count > 0) + frequency * count, over generated tokens
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # transformers' / vLLM's: over prompt and generated tokens, a positive logit is divided by
    # it and a negative one multiplied
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)

    def __post_init__(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ConfigError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:  # NaN fails this too
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be between 0 and 2**64-1, got {self.seed}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not (math.isfinite(value) and -2 <= value <= 2):
                raise ConfigError(f"{name} must be between -2 and 2, got {value}")
        if not (math.isfinite(self.repetition_penalty) and 0 < self.repetition_penalty <= 10):
            raise ConfigError(
                f"repetition_penalty must be in (0, 10], got {self.repetition_penalty}"
            )
        for token, bias in self.logit_bias:
            if not (math.isfinite(bias) and -100 <= bias <= 100):
                raise ConfigError(f"logit_bias values must be between -100 and 100, got {bias}")
            if token < 0:
                raise ConfigError(f"logit_bias token ids must be >= 0, got {token}")

    @property
    def penalized(self) -> bool:
        return bool(
            self.presence_penalty
            or self.frequency_penalty
            or self.repetition_penalty != 1.0
            or self.logit_bias
        )

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


class Sampler:
    """One request's token chooser; `observe` each emitted token so penalties see it."""

    def __init__(
        self,
        sampling: Sampling,
        prompt: tuple[int, ...] | list[int] = (),
        stop_ids: frozenset[int] = frozenset(),
        min_tokens: int = 0,
    ) -> None:
        self.sampling = sampling
        self.rng = np.random.default_rng(sampling.seed)
        self.counts: dict[int, int] = {}  # generated token -> times (O(1) per token)
        self.seen = set(prompt) if sampling.repetition_penalty != 1.0 else set()
        # vLLM's min_tokens: the stop ids cannot be chosen before that many tokens
        self.stop_ids, self.min_tokens, self.generated = stop_ids, min_tokens, 0

    def observe(self, token: int) -> None:
        self.generated += 1
        self.counts[token] = self.counts.get(token, 0) + 1
        if self.sampling.repetition_penalty != 1.0:
            self.seen.add(token)

    def adjust(self, logits: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
        """The logits after penalties and bias; `ids` names each entry's token (a program
        exported with top_k returns k of them), else entry i is token i."""
        s = self.sampling
        out = np.asarray(logits, np.float64).copy()
        if not s.penalized:
            return out
        token_ids = np.arange(out.shape[-1]) if ids is None else np.asarray(ids, np.int64)
        where = {int(t): i for i, t in enumerate(token_ids)} if ids is not None else None

        def index(token: int) -> int | None:
            if where is None:
                return token if 0 <= token < out.shape[-1] else None
            return where.get(token)

        if s.repetition_penalty != 1.0:
            hits = [i for t in self.seen if (i := index(t)) is not None]
            v = out[hits]
            out[hits] = np.where(v > 0, v / s.repetition_penalty, v * s.repetition_penalty)
        if s.presence_penalty or s.frequency_penalty:
            for token, count in self.counts.items():
                i = index(token)
                if i is not None:
                    out[i] -= s.presence_penalty + s.frequency_penalty * count
        for token, bias in s.logit_bias:
            i = index(token)
            if i is not None:
                out[i] += bias
        return out

    def __call__(self, logits: np.ndarray, ids: np.ndarray | None = None) -> int:
        """The index of the chosen entry of a [vocab] (or top-k, with `ids`) logits vector."""
        s = self.sampling
        if s.penalized:
            logits = self.adjust(logits, ids)
        if self.generated < self.min_tokens and self.stop_ids:
            logits = np.array(logits, np.float64)
            token_ids = np.arange(logits.shape[-1]) if ids is None else np.asarray(ids)
            logits[np.isin(token_ids, list(self.stop_ids))] = -np.inf
        if s.greedy:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / s.temperature
        order = np.argsort(-scaled, kind="stable")
        if s.top_k:
            order = order[: s.top_k]
        probs = np.exp(scaled[order] - scaled[order[0]])
        probs /= probs.sum()
        if s.top_p < 1:
            # keep the smallest prefix whose mass reaches top_p (at least one token)
            keep = int(np.searchsorted(np.cumsum(probs), s.top_p)) + 1
            order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
        return int(order[self.rng.choice(len(order), p=probs)])


# OpenAI's and vLLM's cap on alternatives per token (chat `top_logprobs`, completions
# `logprobs`), which score_bs1 returns for a prompt
MAX_LOGPROBS = SCORE_TOP


def token_logprobs(
    logits: np.ndarray, chosen: int, top: int
) -> tuple[float, tuple[tuple[int, float], ...]]:
    """(log-probability of entry `chosen`, the `top` most likely (entry, log-probability),
    best first) under the float32 log-softmax of the model's logits for one position, before
    any sampling parameter: the distribution the model gave, as vLLM reports by default."""
    x = np.asarray(logits, np.float32)
    peak = x.max()
    lse = peak + np.log(np.exp(x - peak, dtype=np.float32).sum(dtype=np.float32))
    best: tuple[tuple[int, float], ...] = ()
    if top:
        idx = np.argpartition(-x, min(top, x.shape[-1] - 1))[:top]
        idx = idx[np.argsort(-x[idx], kind="stable")]
        best = tuple((int(i), float(x[i] - lse)) for i in idx)
    return float(x[chosen] - lse), best
