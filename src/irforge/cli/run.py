"""`irforge run`: generate from a compiled artifact folder, offline, with timings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from irforge.cli._options import DeviceIdsOpt, DeviceOpt, parse_device_ids
from irforge.runtime.devices import CPU_DRIVER


def run_cmd(
    folder: Annotated[Path, typer.Argument(help="Folder from `irforge export` + `compile`.")],
    prompt: Annotated[str | None, typer.Option(help="Prompt text (uses tokenizer.json).")] = None,
    prompt_ids: Annotated[
        str | None, typer.Option(help="Prompt token ids, comma separated: 1,2,3.")
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate.", min=1)] = 32,
    greedy: Annotated[
        bool,
        typer.Option(
            "--greedy",
            help="Pick the most likely token: what happens anyway without --temperature.",
        ),
    ] = False,
    temperature: Annotated[float, typer.Option(help="Sample with this temperature.", min=0)] = 0.0,
    top_k: Annotated[int, typer.Option(help="Sample among the k most likely (0: all).", min=0)] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass (1: all).")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Random seed for sampling.")] = None,
    ignore_eos: Annotated[
        bool, typer.Option("--ignore-eos", help="Keep going past end-of-sequence.")
    ] = False,
    device: DeviceOpt = CPU_DRIVER,
    device_ids: DeviceIdsOpt = None,
    vmfb: Annotated[Path | None, typer.Option(help="VMFB to run instead of the match.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    logits_out: Annotated[
        Path | None, typer.Option(help="Save each generated position's logits [steps, vocab].")
    ] = None,
) -> None:
    """Run prefill then decode on IREE and print the generated text (or ids) with timings."""
    from irforge.cli._output import err
    from irforge.runtime import Sampling
    from irforge.stages.run import run

    if (prompt is None) == (prompt_ids is None):
        raise typer.BadParameter("give exactly one of --prompt and --prompt-ids")
    if greedy and temperature:
        raise typer.BadParameter("--greedy and --temperature exclude each other")
    ids = None
    if prompt_ids is not None:
        try:
            ids = [int(x) for x in prompt_ids.split(",") if x.strip()]
        except ValueError:
            raise typer.BadParameter(f"not a comma list of integers: {prompt_ids!r}") from None
    result = run(
        folder,
        prompt=prompt,
        prompt_ids=ids,
        max_tokens=max_tokens,
        sampling=Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed),
        ignore_eos=ignore_eos,
        device=device,
        device_ids=parse_device_ids(device_ids),
        vmfb=vmfb,
        keep_logits=logits_out is not None,
    )
    if logits_out is not None:
        import numpy as np

        np.save(logits_out, result.logits)
    timings = result.timings()
    if as_json:
        doc = {
            "prompt_ids": result.prompt_ids,
            "tokens": result.tokens,
            "text": result.text,
            "timings": timings,
        }
        typer.echo(json.dumps(doc))
        return
    typer.echo(result.text if result.text is not None else ",".join(map(str, result.tokens)))
    err.print(
        f"{len(result.prompt_ids)} prompt tokens, {len(result.tokens)} generated; prefill "
        f"{result.prefill_s * 1e3:.1f} ms, decode {timings['decode_tokens_per_s']} tokens/s",
        highlight=False,
    )
