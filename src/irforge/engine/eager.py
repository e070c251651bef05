"""The eager model as an engine runner: the compiled program's calls, run in PyTorch.

The engine's scheduling, sampling and text stages run on it without compiling anything
(tests, and trying a scheduler change in seconds); its numbers are the eager model's, which
the compiled program is checked against (stages/verify.py).
This module imports torch; the rest of the engine does not.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from irforge.artifacts.manifest import ExportOptions
from irforge.model.llama import PagedLlama
from irforge.runtime.pages import PageAllocator


class EagerRunner:
    """PagedLlama behind the Session interface (engine/runner.py), on one torch cache slab.

    Args:
        model: the eager model; its options' block_seq_stride must equal `options`'.
        options: the batch sizes and limits the engine plans with (as an export's).
        page_count: cache pages (page 0 is scratch).
    """

    prefill_position = True
    can_score = True

    def __init__(self, model: PagedLlama, options: ExportOptions, page_count: int) -> None:
        if model.options.block_seq_stride != options.block_seq_stride:
            raise ValueError(
                f"the model pages {model.options.block_seq_stride} positions, the options "
                f"{options.block_seq_stride}"
            )
        self.model, self.config = model, model.config
        self.options = options.resolve(model.config)
        self.pages = PageAllocator(page_count)
        self.cache = model.allocate_cache(page_count)

    def _run(self, name: str, *arrays: np.ndarray) -> Any:
        with torch.no_grad():
            out = getattr(self.model, name)(*(torch.from_numpy(a) for a in arrays), self.cache)
        if isinstance(out, tuple):
            return tuple(o.float().numpy() if o.is_floating_point() else o.numpy() for o in out)
        return out.float().numpy()

    def prefill(
        self, tokens: np.ndarray, start_pos: np.ndarray, seq_lens: np.ndarray, block_ids: np.ndarray
    ) -> Any:
        return self._run("prefill", tokens, start_pos, seq_lens, block_ids)

    def decode(
        self, tokens: np.ndarray, seq_lens: np.ndarray, starts: np.ndarray, block_ids: np.ndarray
    ) -> Any:
        return self._run("decode", tokens, seq_lens, starts, block_ids)

    def verify(self, tokens: np.ndarray, starts: np.ndarray, block_ids: np.ndarray) -> Any:
        return self._run("verify", tokens, starts, block_ids)

    def score(
        self, tokens: np.ndarray, start_pos: np.ndarray, seq_lens: np.ndarray, block_ids: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        return self._run("score", tokens, start_pos, seq_lens, block_ids)  # type: ignore[no-any-return]

    def close(self) -> None:
        pass
