"""What the engine runs its plans on: the compiled Session, the eager model, or a test's fake.

A runner takes the arrays of runtime/batching.py (`prefill_arrays`, `decode_arrays`,
`verify_arrays`) and returns host arrays: logits [N, 1, vocab] of each row's last position
(`verify`: [N, k + 1, vocab], every position), or (values, indices) from a program exported
with top_k. It writes keys and values into its own cache pages; `pages` is the free list the
scheduler allocates them from.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from irforge.artifacts.manifest import ExportOptions
from irforge.facts.config import ModelConfig
from irforge.runtime.pages import PageAllocator


class Runner(Protocol):
    config: ModelConfig
    options: ExportOptions  # the batch sizes, stride, context and top_k it was exported with
    pages: PageAllocator
    prefill_position: bool  # prefill takes start_pos: chunked prefill and prefix caching

    @property
    def can_score(self) -> bool:  # score() works: echo with logprobs
        ...

    def prefill(
        self, tokens: np.ndarray, start_pos: np.ndarray, seq_lens: np.ndarray, block_ids: np.ndarray
    ) -> Any: ...

    def decode(
        self, tokens: np.ndarray, seq_lens: np.ndarray, starts: np.ndarray, block_ids: np.ndarray
    ) -> Any: ...

    def verify(self, tokens: np.ndarray, starts: np.ndarray, block_ids: np.ndarray) -> Any:
        """Speculative decoding's step (options.speculative_tokens > 0, at
        options.verify_batch_sizes): logits [N, k + 1, vocab] or (values, indices)."""
        ...

    def score(
        self, tokens: np.ndarray, start_pos: np.ndarray, seq_lens: np.ndarray, block_ids: np.ndarray
    ) -> tuple[np.ndarray, ...]: ...

    def close(self) -> None: ...
