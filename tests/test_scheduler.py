"""The scheduler and engine without IREE: a fake runner whose next token is a function of the
whole context it reads back from its cache pages, and the eager model against transformers.

The fake's answer for a prompt alone is computed here by plain iteration, so any page the
scheduler hands out wrongly (shared, preempted, chunked, padded) changes a token.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from irforge.artifacts.manifest import ExportOptions
from irforge.engine import Engine, Status
from irforge.engine.request import Request
from irforge.engine.scheduler import Scheduler
from irforge.runtime.pages import PageAllocator
from irforge.runtime.prefix_cache import PrefixCache
from irforge.runtime.sampling import Sampling

VOCAB, STRIDE = 97, 4


def next_token(context: list[int]) -> int:
    """The fake model: depends on every token and on their positions."""
    return sum((i + 1) * t for i, t in enumerate(context)) * 31 % VOCAB


def alone(prompt: list[int], n: int) -> list[int]:
    out: list[int] = []
    for _ in range(n):
        out.append(next_token(prompt + out))
    return out


def one_hot(model):  # noqa: ANN001, ANN201
    """The logits that make `model(context)` the certain next token."""

    def logits(context: list[int]) -> np.ndarray:
        out = np.zeros(VOCAB, dtype=np.float32)
        out[model(context)] = 10.0
        return out

    return logits


class FakeRunner:
    """The Runner interface over a numpy page table [pages, STRIDE] of token ids."""

    prefill_position = True
    can_score = False

    def __init__(
        self, page_count: int, prefill=(1, 2), decode=(1, 4), max_seq_len=64, speculative_tokens=0
    ) -> None:
        self.config = SimpleNamespace(vocab_size=VOCAB, eos_token_ids=())
        self.options = ExportOptions(
            block_seq_stride=STRIDE,
            prefill_batch_sizes=prefill,
            decode_batch_sizes=decode,
            max_seq_len=max_seq_len,
            speculative_tokens=speculative_tokens,
        )
        self.pages = PageAllocator(page_count)
        self.cache = np.full((page_count, STRIDE), -1, dtype=np.int64)
        self.model = one_hot(next_token)  # a context's logits
        self.delay = 0.0  # seconds a decode step takes
        self.calls: list[tuple[str, int, int]] = []  # (entry, batch size, tokens computed)

    def _write(self, block_ids: np.ndarray, position: int, token: int) -> None:
        self.cache[block_ids[position // STRIDE], position % STRIDE] = token

    def _logits(self, block_ids: np.ndarray, length: int) -> np.ndarray:
        context = [int(self.cache[block_ids[p // STRIDE], p % STRIDE]) for p in range(length)]
        assert -1 not in context, "a position read before anything wrote it"
        return self.model(context)

    def prefill(self, tokens, start_pos, seq_lens, block_ids):
        out = np.zeros((len(tokens), 1, VOCAB), dtype=np.float32)
        computed = 0
        for row in range(len(tokens)):
            start, end = int(start_pos[row]), int(seq_lens[row])
            for p in range(start, end):
                self._write(block_ids[row], p, int(tokens[row, p - start]))
            computed += end - start
            out[row, 0] = self._logits(block_ids[row], end)
        self.calls.append(("prefill", len(tokens), computed))
        return out

    def decode(self, tokens, seq_lens, starts, block_ids):
        time.sleep(self.delay)
        out = np.zeros((len(tokens), 1, VOCAB), dtype=np.float32)
        for row in range(len(tokens)):
            self._write(block_ids[row], int(starts[row]), int(tokens[row, 0]))
            out[row, 0] = self._logits(block_ids[row], int(seq_lens[row]))
        self.calls.append(("decode", len(tokens), len(tokens)))
        return out

    def verify(self, tokens, starts, block_ids):
        """Every position's logits, each after writing the tokens up to it (as the program:
        position j attends to the cache before `start` and the row's tokens 0..j)."""
        n, width = tokens.shape
        assert block_ids.shape[1] * STRIDE >= int(starts.max()) + width, "pages do not cover"
        out = np.zeros((n, width, VOCAB), dtype=np.float32)
        for row in range(n):
            start = int(starts[row])
            for j in range(width):
                self._write(block_ids[row], start + j, int(tokens[row, j]))
                out[row, j] = self._logits(block_ids[row], start + j + 1)
        self.calls.append(("verify", n, n * width))
        return out

    def score(self, *arrays):
        raise AssertionError("not exported")

    def close(self) -> None:
        pass


def fake_engine(tmp_path: Path, page_count: int = 64, **options: object) -> Engine:
    return Engine(tmp_path, runner=FakeRunner(page_count), **options)  # type: ignore[arg-type]


def _all_free(engine: Engine) -> bool:
    return engine.pages.free_count == engine.pages.page_count - 1


PROMPTS = [[(7 * i + j) % VOCAB for j in range(3 + 5 * i)] for i in range(8)]


def test_continuous_batching_gives_each_prompt_its_answer_alone(tmp_path: Path) -> None:
    with fake_engine(tmp_path) as engine:
        reqs = [engine.submit(p, max_tokens=5 + i) for i, p in enumerate(PROMPTS)]
        assert [r.wait(30).tokens for r in reqs] == [alone(p, 5 + i) for i, p in enumerate(PROMPTS)]
        assert all(r.finish_reason == "length" for r in reqs)
        decodes = [bs for kind, bs, _ in engine.runner.calls if kind == "decode"]
        assert max(decodes) == 4  # rows of several requests shared decode calls
        assert _all_free(engine)


def test_an_oversubscribed_cache_preempts_and_recomputes_exactly(tmp_path: Path) -> None:
    """10 pages (9 usable) for requests that need 4-8 each: the newest are preempted, requeued
    first, and resume with the same tokens; every page comes back."""
    with fake_engine(tmp_path, page_count=10, prefix_caching=False) as engine:
        reqs = [engine.submit(p, max_tokens=12) for p in PROMPTS[:4]]
        assert [r.wait(30).tokens for r in reqs] == [alone(p, 12) for p in PROMPTS[:4]]
        assert engine.metrics.counter("preemptions_total") > 0
        assert _all_free(engine)


def test_shared_prefix_pages_are_found_not_recomputed(tmp_path: Path) -> None:
    system = list(range(10, 22))  # three full pages
    prompts = [system + [k, k + 1] for k in (1, 30, 60)]
    with fake_engine(tmp_path) as engine:
        first = engine.submit(prompts[0], max_tokens=3).wait(30)
        rest = [engine.submit(p, max_tokens=3) for p in prompts[1:]]
        assert [first.tokens] + [r.wait(30).tokens for r in rest] == [alone(p, 3) for p in prompts]
        assert [r.cached_tokens for r in rest] == [12, 12]
        prefilled = sum(n for kind, _, n in engine.runner.calls if kind == "prefill")
        assert prefilled == len(prompts[0]) + 2 * 2  # the later two computed their tails only
        assert _all_free(engine)  # shared pages stay cached, idle, and count as free


def test_a_long_prompt_is_chunked_between_decode_steps(tmp_path: Path) -> None:
    with fake_engine(tmp_path, prefill_chunk=8, start=False) as engine:
        stream = engine.submit(PROMPTS[0], max_tokens=20)
        long = engine.submit(PROMPTS[7], max_tokens=2)  # 38 tokens: chunks of at most 8
        engine.start()
        assert long.wait(30).tokens == alone(PROMPTS[7], 2)
        assert stream.wait(30).tokens == alone(PROMPTS[0], 20)
        calls = engine.runner.calls
        chunks = [n for kind, _, n in calls if kind == "prefill"]
        assert max(chunks) <= 8 and sum(chunks) == len(PROMPTS[0]) + len(PROMPTS[7])
        # the stream kept decoding between the chunks, not after the whole prompt
        kinds = [kind for kind, _, _ in calls]
        first, last = kinds.index("prefill"), len(kinds) - 1 - kinds[::-1].index("prefill")
        assert kinds[first:last].count("decode") >= len(chunks) - 1  # one after each chunk


def test_cancel_frees_pages_and_others_go_on(tmp_path: Path) -> None:
    with fake_engine(tmp_path) as engine:
        engine.runner.delay = 0.002  # 40 tokens outlast the cancel (instant, they did not)
        doomed = engine.submit(PROMPTS[2], max_tokens=40)
        kept = engine.submit(PROMPTS[3], max_tokens=12)
        next(iter(doomed.stream(timeout=30)))
        doomed.cancel()
        assert kept.wait(30).tokens == alone(PROMPTS[3], 12)
        assert doomed.wait(30).finish_reason == "cancelled"
        assert doomed.status is Status.INTERRUPTED and _all_free(engine)


def _request(i: int, n: int) -> Request:
    return Request(id=f"r{i}", prompt=list(range(1, n + 1)), sampling=Sampling(), max_tokens=8)


def test_admission_is_in_order_and_waits_for_pages() -> None:
    """Pure scheduler: 7 usable pages, prompts of 3, 2 and 5 pages: the third waits until a
    page holder leaves, then takes exactly what is free."""
    cache = PrefixCache(PageAllocator(8), STRIDE, enabled=False)
    s = Scheduler(cache, STRIDE, [1], [1])
    big, mid, small = _request(0, 12), _request(1, 8), _request(2, 20)
    s.queue.extend([big, mid, small])
    assert s.admit() == [big, mid]  # 3 + 2 pages; the 5-page one does not fit in 2
    assert list(s.queue) == [small]
    for r in (big, mid):
        s.prefilled(r, len(r.prompt))
        r.tokens.append(0)
    s.release(big)
    assert s.admit() == [small] and cache.free_count == 0


def test_page_growth_preempts_the_newest() -> None:
    """Pure scheduler: when a running request's next token needs a page and none is free,
    the most recently admitted one gives its pages back and goes first in the queue."""
    cache = PrefixCache(PageAllocator(5), STRIDE, enabled=False)  # 4 usable
    s = Scheduler(cache, STRIDE, [1], [2])
    old, new, later = _request(0, 8), _request(1, 8), _request(2, 3)  # 2, 2 and 1 pages
    s.queue.extend([old, new, later])
    assert s.admit() == [old, new] and list(s.queue) == [later]
    for r in (old, new):
        s.prefilled(r, 8)
        r.tokens.append(1)  # the next token starts a third page
    batches = s.decode_plan()
    assert [b.rows for b in batches] == [[old]]
    # requeued first, ahead of the request that arrived after it
    assert list(s.queue) == [new, later] and new.status is Status.QUEUED and not new.pages
    assert len(old.pages) == 3 and s.metrics.counter("preemptions_total") == 1
    # one page is free: enough for `later`, but nobody jumps the line
    assert cache.free_count == 1 and s.admit() == [] and list(s.queue) == [new, later]


def test_the_eager_model_runner_keeps_transformers_greedy_tokens(tmp_path: Path) -> None:
    """The same engine on the eager PagedLlama (no compiler): batched, chunked and prefix-shared
    greedy tokens equal transformers' for each prompt alone."""
    from irforge.engine.eager import EagerRunner
    from irforge.model import PagedLlama
    from irforge.model.options import ModelOptions
    from model_helpers import canonical_tensors, model_config, tiny_llama

    hf = tiny_llama()
    hf.generation_config.eos_token_id = None
    model = PagedLlama.from_state_dict(
        model_config(hf), canonical_tensors(hf), options=ModelOptions(block_seq_stride=STRIDE)
    )
    options = ExportOptions(
        block_seq_stride=STRIDE, prefill_batch_sizes=(1, 4), decode_batch_sizes=(1, 4)
    )
    system = [5, 9, 13, 17, 21, 25, 29, 33]
    prompts = [system + [40 + k] * (1 + k) for k in range(5)]
    with torch.no_grad():
        want = [
            hf.generate(torch.tensor([p]), max_new_tokens=6, do_sample=False, pad_token_id=0)[
                0, len(p) :
            ].tolist()
            for p in prompts
        ]
    runner = EagerRunner(model, options, page_count=32)
    with Engine(tmp_path, runner=runner, prefill_chunk=8) as engine:
        first = engine.submit(prompts[0], max_tokens=6, ignore_eos=True).wait(60)
        rest = [engine.submit(p, max_tokens=6, ignore_eos=True) for p in prompts[1:]]
        assert [first.tokens] + [r.wait(60).tokens for r in rest] == want
        assert [r.cached_tokens for r in rest] == [8] * 4


def test_the_engine_imports_without_the_web_stack_or_iree() -> None:
    import subprocess
    import sys

    blocked = ["fastapi", "uvicorn", "starlette", "iree", "iree.runtime", "iree.compiler", "torch"]
    code = (
        "import sys\n"
        f"for m in {blocked!r}: sys.modules[m] = None  # an import of any fails\n"
        "import irforge.engine, irforge.engine.scheduler, irforge.engine.limits\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
