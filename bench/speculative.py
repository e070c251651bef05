"""Speculative decoding (n-gram prompt lookup) on SmolLM2, on this CPU (issue 39).

The served measurement (default): SmolLM2-135M-Instruct's default f16 build (which has
verify_bs{N}) behind two engines in this process, speculation off and on
(`--speculative-config '{"method": "ngram"}'`, its defaults), alternating rounds. Each of
N clients (threads) sends greedy chat requests one after another; two tasks: input-grounded
(repeat, or quote from, a passage given in the prompt) and open-ended chat. Printed per task
and client count: tokens/s off and on, their ratio, the acceptance rate (kept proposed tokens
over proposed tokens) and the share of decode-batch steps that were verify steps.

`--bounds` instead replays greedy answers with the proposer and times the program's steps:
what speculation could give at best (the first part of the issue's work, RESULTS.md).

    .venv/bin/python bench/speculative.py [--folder DEFAULT_BUILD] [--clients 1,8,32]
    .venv/bin/python bench/speculative.py --draft-layers 8   # a draft model instead
    .venv/bin/python bench/speculative.py --bounds [--ks 2,3,4,7]

`--draft-layers N` speculates with a draft model made of SmolLM2's own first N layers (the
project has no smaller model with SmolLM2's vocabulary): what the draft-model path costs on the
real model, and whether the engine steps aside when a draft does not pay.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


from irforge.engine import Engine  # noqa: E402
from irforge.engine.speculative import (  # noqa: E402
    SpeculativeConfig,
    accept_greedy,
    ngram_proposal,
)
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


TASKS = {
    "input-grounded": [g.format(p=text) for g in GROUNDED for text in PASSAGES],
    "open-ended chat": CHAT,
}


def clients_round(
    engine: Engine, prompts: list[list[int]], clients: int, per_client: int, max_tokens: int
) -> tuple[int, float]:
    """(tokens generated, seconds) of `clients` threads each sending `per_client` greedy
    requests in turn (client i starts at prompt i)."""
    counts = [0] * clients

    def client(i: int) -> None:
        for j in range(per_client):
            prompt = prompts[(i + j) % len(prompts)]
            counts[i] += len(engine.submit(prompt, max_tokens=max_tokens).wait(600).tokens)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts), time.perf_counter() - t0


def first_layers(folder: Path, layers: int) -> Path:
    """A draft made of the target's first `layers` decoder layers (then its own final norm
    and output): the same archive, a program exported for the shallower config."""
    from irforge.artifacts.files import ARCHIVE_NAME
    from irforge.artifacts.manifest import Manifest
    from irforge.stages.compile import compile_folder
    from irforge.stages.export import export

    out = folder.parent / f"{folder.name}-first{layers}"
    if (out / "manifest.json").is_file() and Manifest.load(out).compiled:
        return out
    target = Manifest.load(folder)
    export(
        model_config=target.config.replace(block_count=layers),
        out_dir=out,
        options=target.options,
    )
    (out / ARCHIVE_NAME).unlink(missing_ok=True)
    (out / ARCHIVE_NAME).hardlink_to(folder / ARCHIVE_NAME)  # the target's weights, by name
    Manifest.load(out).replace(parameters=(ARCHIVE_NAME,)).save(out)
    compile_folder(out, target="cpu")
    return out


def served(folder: Path, args: argparse.Namespace) -> None:
    codec = TextCodec(folder)
    if args.draft_layers:
        draft = first_layers(folder, args.draft_layers)
        speculative = SpeculativeConfig(model=str(draft))
    else:
        speculative = SpeculativeConfig()
    engines = {
        "off": Engine(folder),
        "on": Engine(folder, speculative=speculative),
    }
    prompts = {
        task: [codec.encode(codec.chat_prompt([{"role": "user", "content": t}])) for t in texts]
        for task, texts in TASKS.items()
    }
    # warm, at every client count: each kind of step measured once at each batch size (a
    # draft's first verify at a batch size also catches up on every row: a one-time cost)
    for e in engines.values():
        for clients in map(int, args.clients.split(",")):
            clients_round(e, prompts["input-grounded"], clients, 1, 32)
    lines = [
        "| task | clients | tokens/s off | tokens/s on | on / off | acceptance | verify steps |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for task, task_prompts in prompts.items():
        for clients in map(int, args.clients.split(",")):
            per_client = max(1, args.requests // clients)
            totals = {name: [0, 0.0] for name in engines}
            before = {name: _spec_counts(e) for name, e in engines.items()}
            for r in range(args.rounds):  # alternate which goes first
                order = ["off", "on"] if r % 2 == 0 else ["on", "off"]
                for name in order:
                    n, sec = clients_round(
                        engines[name], task_prompts, clients, per_client, args.max_tokens
                    )
                    totals[name][0] += n
                    totals[name][1] += sec
            after = _spec_counts(engines["on"])
            drafted, kept, verifies, decodes = (
                a - b for a, b in zip(after, before["on"], strict=True)
            )
            rate = {name: n / sec for name, (n, sec) in totals.items()}
            lines.append(
                f"| {task} | {clients} | {rate['off']:.1f} | {rate['on']:.1f} | "
                f"{rate['on'] / rate['off']:.2f}x | {kept / max(drafted, 1):.0%} | "
                f"{verifies / max(verifies + decodes, 1):.0%} |"
            )
            print(lines[-1], flush=True)
    for e in engines.values():
        e.shutdown()
        e.close()
    print("\n".join(lines))


def _spec_counts(engine: Engine) -> tuple[float, float, float, float]:
    """(proposed tokens, kept tokens, verify calls, decode calls) so far."""
    m = engine.metrics
    calls = {
        kind: sum(
            m.counter(f"{kind}_calls_total", bs=str(b))
            for b in engine.runner.options.decode_batch_sizes
        )
        for kind in ("verify", "decode")
    }
    return (
        m.counter("spec_decode_draft_tokens_total"),
        m.counter("spec_decode_accepted_tokens_total"),
        calls["verify"],
        calls["decode"],
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--folder",
        type=Path,
        default=ROOT / "bench" / "data" / "speculative" / "irforge-f16-default",
        help="a default f16 build of SmolLM2 (`irforge build smollm2`; made there if missing)",
    )
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--requests", type=int, default=32, help="per round, all clients together")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--bounds", action="store_true", help="replay answers instead (see above)")
    p.add_argument(
        "--draft-layers",
        type=int,
        default=0,
        help="speculate with a draft model made of the target's first N layers, not n-grams",
    )
    p.add_argument("--ks", default="2,3,4,7")
    p.add_argument("--min-n", type=int, default=2)
    p.add_argument("--max-n", type=int, default=4)
    args = p.parse_args()
    folder = args.folder
    if not (folder / "manifest.json").is_file():
        from irforge.stages.build import build

        build("smollm2", out_dir=folder, targets=["cpu"])
    if not args.bounds:
        served(folder, args)
        return
    codec = TextCodec(folder)
    session = Session(folder)
    tasks = TASKS
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
