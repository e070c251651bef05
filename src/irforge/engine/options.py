"""The engine's options, and one generation's as every route and caller hands them over.

`GenerationOptions` checks what it can alone (ranges); what depends on the model and the
program (vocabulary, context, exported top_k, the cache) is checked by `engine.limits.Limits`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from irforge.engine.errors import BadRequest
from irforge.engine.guided import GuidedSpec
from irforge.engine.speculative import SpeculativeConfig
from irforge.errors import ConfigError
from irforge.runtime.batching import DEFAULT_PREFILL_CHUNK
from irforge.runtime.devices import CPU_DRIVER
from irforge.runtime.sampling import MAX_LOGPROBS, Sampling


@dataclass(frozen=True)
class GenerationOptions:
    """What to generate after a prompt.

    `max_tokens` None: up to the room left in the context and the cache. With
    `detokenize=False` the request carries token ids only (stop strings turn it back on).
    `logprobs=N`: each generated token carries its log-probability and the N likeliest
    alternatives'. `guided` constrains the output to a JSON schema, a regex or a choice.
    `echo` with `logprobs` scores the prompt as well (`prompt_logprobs`, score_bs1).
    """

    sampling: Sampling = field(default_factory=Sampling)
    max_tokens: int | None = None
    stop: Sequence[str] = ()
    ignore_eos: bool = False
    request_id: str | None = None
    min_tokens: int = 0
    stop_token_ids: Sequence[int] = ()
    detokenize: bool = True
    logprobs: int | None = None
    guided: GuidedSpec | None = None
    echo: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise BadRequest(f"max_tokens must be at least 1, got {self.max_tokens}", "max_tokens")
        if self.min_tokens < 0:  # its upper bound, max_tokens resolved, is Limits'
            raise BadRequest(f"min_tokens must be 0 or more, got {self.min_tokens}", "min_tokens")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise BadRequest(
                f"logprobs must be between 0 and {MAX_LOGPROBS}, got {self.logprobs}", "logprobs"
            )


DRAIN_TIMEOUT_S = 120.0  # seconds a server gives in-flight requests on SIGTERM


@dataclass(frozen=True)
class EngineOptions:
    """How an engine serves a folder: `irforge serve`'s options, and their one set of defaults.

    device, device_ids: the IREE driver and devices (`Session`). max_queue: requests waiting
    for admission before `Overloaded` (a request the free pages can take with everything queued
    is never refused for the count). page_count: cache pages (default: on cuda/hip a share of
    the memory the weights leave free, else the export's device_block_count). cache_gib:
    instead, the pages that fit in this many GiB per device. prefix_caching: share full prompt
    pages between requests that begin alike. prefill_chunk: prompt tokens prefilled per step,
    all requests together (whole pages; 0: whole prompts at once). speculative: speculative
    decoding's options (None: off); a dict of them is taken too.
    """

    device: str = CPU_DRIVER
    device_ids: tuple[int, ...] | None = None
    max_queue: int = 256
    page_count: int | None = None
    cache_gib: float | None = None
    prefix_caching: bool = True
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK
    speculative: SpeculativeConfig | None = None

    def __post_init__(self) -> None:
        if self.speculative is not None:  # a dict from JSON (Ray Serve's replica args)
            object.__setattr__(self, "speculative", SpeculativeConfig.of(self.speculative))
        if self.max_queue < 1:
            raise ConfigError(f"max_queue must be at least 1, got {self.max_queue}")
        if self.cache_gib is not None and self.cache_gib <= 0:
            raise ConfigError(f"the KV cache size must be over 0 GiB, got {self.cache_gib}")
        if self.page_count is not None and self.cache_gib is not None:
            raise ConfigError(
                "give the KV cache in pages (--kv-cache-pages) or in GiB (--kv-cache-gib), not both"
            )
        if self.prefill_chunk < 0:
            raise ConfigError(f"prefill_chunk must be 0 or more tokens, got {self.prefill_chunk}")
