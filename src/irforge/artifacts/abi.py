"""The compiled program's ABI: its entry points and their integer arguments, in order.

Export registers each entry point from this table (stages/export/program.py), the runtime
calls them through it (runtime/session.py, runtime/batching.py builds the arguments in this
order), and shortfin reads the same names and order. After the integer arguments each entry
takes the KV cache: the bare slab on one device, one slab per device under TP.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    method: str  # the PagedLlama method it runs, and its name's stem
    args: tuple[str, ...]  # the integer inputs, in order

    def name(self, bs: int) -> str:
        return f"{self.method}_bs{bs}"


# logits [N, 1, vocab] of each row's last position (or top-k (values, ids)). start_pos is
# shortfin's `has_prefill_position` ABI: a chunk prefilled after pages already in the cache,
# for chunked prefill and prefix caching.
PREFILL = Entry("prefill", ("tokens", "start_pos", "seq_lens", "seq_block_ids"))
# What folders exported before prefill took start_pos have (manifest.prefill_position false).
PREFILL_WHOLE = Entry("prefill", ("tokens", "seq_lens", "seq_block_ids"))
HAS_PREFILL_POSITION = True  # what this irforge exports: PREFILL, not PREFILL_WHOLE
DECODE = Entry("decode", ("tokens", "seq_lens", "start_positions", "seq_block_ids"))
# Speculative decoding's step (PagedLlama.verify): each row's last token and the tokens
# proposed after it, [N, k + 1] from any position; logits [N, k + 1, vocab]. Exported at the
# decode batch sizes up to VERIFY_MAX_BATCH when ExportOptions.speculative_tokens k > 0.
VERIFY = Entry("verify", ("tokens", "start_positions", "seq_block_ids"))
# Single-device programs: a one-row prefill that also returns each position's next-token
# log-probability and the SCORE_TOP likeliest alternatives (OpenAI's and vLLM's logprobs cap).
SCORE = Entry("score", PREFILL.args)
SCORE_FUNCTION = SCORE.name(1)
SCORE_TOP = 20
