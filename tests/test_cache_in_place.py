"""The KV cache argument is updated in place: no cache-sized copy in the compiled program.

IREE's own stream IR is the reference: before the rewrite, every prefill/decode call copies the
cache argument (an external resource) into a transient and back; after it, no copy touches an
external resource. The numerics of the in-place update are checked in test_targets.py and by
every test that decodes.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from irforge.facts.targets import TARGETS
from irforge.stages.compile.driver import find_iree_compile
from irforge.stages.compile.inplace import mark_consumed


def _stream_copies(binary: str, source: Path, flags: list[str], out: Path) -> list[str]:
    subprocess.run(
        [
            binary,
            str(source),
            *flags,
            "--compile-from=input",
            "--compile-to=stream",
            "-o",
            str(out),
        ],
        check=True,
    )
    return [ln for ln in out.read_text().splitlines() if "stream.cmd.copy" in ln]


def test_cache_import_is_consumed_and_its_copies_are_gone(
    llama_artifacts: Path, tmp_path: Path
) -> None:
    binary = find_iree_compile()
    flags = TARGETS["cpu"].flags()
    phase = tmp_path / "input.mlir"
    subprocess.run(
        [
            binary,
            str(llama_artifacts / "model.mlir"),
            *flags,
            "--compile-to=input",
            "-o",
            str(phase),
        ],
        check=True,
    )
    text = phase.read_text()
    asyncs = len(re.findall(r"util\.func public @\S+\$async\(", text))
    marked_text, marked = mark_consumed(text)
    assert asyncs >= 2 and marked == asyncs  # one cache argument per prefill/decode function
    assert mark_consumed(marked_text) == (marked_text, 0)  # idempotent

    before = _stream_copies(binary, phase, flags, tmp_path / "before.mlir")
    assert any("resource<external>" in ln for ln in before)  # what the rewrite is for
    phase.write_text(marked_text)
    after = _stream_copies(binary, phase, flags, tmp_path / "after.mlir")
    assert not [ln for ln in after if "resource<external>" in ln]


def test_rewrite_leaves_programs_without_mutation_and_double_imports_alone() -> None:
    plain = (
        "util.func public @f$async(%arg0: !hal.buffer_view) {\n"
        "  %0 = hal.tensor.import wait(%arg1) => %arg0 : !hal.buffer_view -> tensor<4xf32>\n}\n"
    )
    assert mark_consumed(plain) == (plain, 0)
    twice = (
        "util.func public @g$async(%arg0: !hal.buffer_view) {\n"
        "  %0 = hal.tensor.import %arg0 : !hal.buffer_view -> tensor<4xf32>\n"
        "  %1 = hal.tensor.import %arg0 : !hal.buffer_view -> tensor<4xf32>\n"
        "  %2 = hal.tensor.alias %0 : tensor<4xf32> to %arg0 : !hal.buffer_view\n}\n"
    )
    assert mark_consumed(twice) == (twice, 0)
    # arguments are per function: %arg0 aliased in g says nothing about %arg0 in f
    text, marked = mark_consumed(
        plain
        + twice.replace("  %1 = hal.tensor.import %arg0 : !hal.buffer_view -> tensor<4xf32>\n", "")
    )
    assert marked == 1 and text.startswith(plain)  # f untouched
    assert "hal.tensor.import consume %arg0 :" in text
