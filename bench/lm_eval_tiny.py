"""lm-evaluation-harness against `irforge serve` and against its own `hf` backend (issue 15).

One multiple-choice task (12 questions, 4 choices each, in a local JSONL file) is scored by
lm-eval twice on the same tiny seeded Llama (bench/serve.py's "tiny"): through
`local-completions` pointed at `irforge serve` (echo + logprobs, as lm-eval asks any
OpenAI-style server) and through `hf` (transformers in this process). The per-choice
log-likelihoods must agree: the largest difference and both accuracies are printed.

lm-eval is not a test dependency (it pulls pandas, pyarrow, scipy and scikit-learn):

    .venv/bin/pip install "lm-eval[api,hf]"
    .venv/bin/python bench/lm_eval_tiny.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serve as serve_bench  # noqa: E402  (the tiny model's build and the server launcher)

TASK = "irforge_tiny_mc"
WORDS = ["river", "stone", "cloud", "apple", "green", "seven", "table", "light"]
# the tiny model is random: what matters is that both backends score the same strings
DOCS = [
    {
        "question": f"Question {i}: which word follows {WORDS[i % 8]} and {WORDS[(i + 3) % 8]}?",
        "choices": [WORDS[(i + k) % 8] + (" " + WORDS[(i * k) % 8]) * (k % 2) for k in range(4)],
        "answer": i % 4,
    }
    for i in range(12)
]
TASK_YAML = f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {{data}}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""


def write_task(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (folder / f"{TASK}.yaml").write_text(TASK_YAML.replace("{data}", str(data)))
    return folder


def evaluate(model: str, model_args: str, tasks: Path) -> dict[str, Any]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=[TASK],
        batch_size=1,
        log_samples=True,
        task_manager=TaskManager(include_path=str(tasks)),
    )
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    return {
        "acc": out["results"][TASK]["acc,none"],
        "loglikelihoods": [[float(r[0]) for r in s["filtered_resps"]] for s in samples],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/irforge-lm-eval"))
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the task's data is a local file
    hf, art = serve_bench.build(args.work, "tiny")
    tasks = write_task(args.work / "tasks")
    port = serve_bench._free_port()
    url = f"http://127.0.0.1:{port}"
    proc, _ = serve_bench.start(serve_bench.irforge_command(art, port), url)
    try:
        served = evaluate(
            "local-completions",
            f"base_url={url}/v1/completions,model={art.name},tokenizer={hf},"
            "tokenizer_backend=huggingface,tokenized_requests=True,max_retries=1,max_length=256",
            tasks,
        )
    finally:
        serve_bench.stop(proc)
    local = evaluate("hf", f"pretrained={hf},dtype=float32,device=cpu,max_length=256", tasks)
    pairs = [
        (a, b)
        for x, y in zip(served["loglikelihoods"], local["loglikelihoods"], strict=True)
        for a, b in zip(x, y, strict=True)
    ]
    worst = max(abs(a - b) for a, b in pairs)
    report = {
        "lm_eval": __import__("lm_eval").__version__,
        "choices_scored": len(pairs),
        "max_abs_loglikelihood_difference": worst,
        "acc_irforge": served["acc"],
        "acc_hf": local["acc"],
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps({**report, "irforge": served, "hf": local}, indent=2))
    return 0 if worst < 1e-3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
