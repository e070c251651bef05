"""Fuzzing every reader of untrusted input (issue 14): mutated valid files (bytes flipped,
inserted, cut) and mutated JSON documents may only raise irforge's own errors, which the CLI
prints as one line; anything else (IndexError, struct.error, MemoryError, ...) is a bug.

CI runs a fixed number of examples per reader (FUZZ_EXAMPLES, derandomized so a failure
reproduces); set IRFORGE_FUZZ_EXAMPLES=100000 for a long run.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from irforge.errors import ToolchainError

FUZZ_EXAMPLES = int(os.environ.get("IRFORGE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """`seed` with a few edits, weighted toward the header, where the parsing is."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "cut", "truncate", "splice-int"]))
        span = min(len(data), 4096) if draw(st.booleans()) else len(data)
        at = draw(st.integers(0, max(0, span - 1)))
        if kind == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "truncate":
            del data[at:]
        else:  # a plausible but wrong 8-byte count or offset
            value = draw(st.sampled_from([0, 1, 2**31, 2**32 + 7, 2**63 - 1, 2**64 - 1]))
            data[at : at + 8] = value.to_bytes(8, "little")
    return bytes(data)


def _expect_only_our_errors(read: Callable[[Path], Any], data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"fuzz{suffix}"
        path.write_bytes(data)
        try:
            read(path)
        except ToolchainError:
            pass  # a clear one-line error: what we want for bad input


@pytest.fixture(scope="module")
def irpa_seed(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from irforge.stages.convert import convert

    return convert(llama_dir, out=tmp_path_factory.mktemp("fz") / "m.irpa").out.read_bytes()


def test_fuzz_irpa(irpa_seed: bytes) -> None:
    from irforge.artifacts.archive import open_archive

    @FUZZ
    @given(data=mutated(irpa_seed))
    def check(data: bytes) -> None:
        _expect_only_our_errors(open_archive, data, ".irpa")

    check()


def test_fuzz_gguf(llama_gguf: tuple[Path, dict]) -> None:
    from irforge.formats.gguf import read_gguf

    seed = llama_gguf[0].read_bytes()

    @FUZZ
    @given(data=mutated(seed))
    def check(data: bytes) -> None:
        _expect_only_our_errors(read_gguf, data, ".gguf")

    check()


def test_fuzz_safetensors(llama_dir: Path) -> None:
    from irforge.formats.safetensors import read_safetensors

    seed = (llama_dir / "model.safetensors").read_bytes()

    @FUZZ
    @given(data=mutated(seed))
    def check(data: bytes) -> None:
        _expect_only_our_errors(read_safetensors, data, ".safetensors")

    check()


# JSON documents: any JSON value in place of any field of a valid one
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def mutated_json(draw: st.DrawFn, seed: dict[str, Any]) -> dict[str, Any]:
    doc = json.loads(json.dumps(seed))
    for _ in range(draw(st.integers(1, 3))):
        node: Any = doc
        while isinstance(node, dict) and node and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(node)))
            if not isinstance(node[key], dict) or not node[key]:
                node[key] = draw(JSON_VALUES)
                break
            node = node[key]
        else:
            if isinstance(node, dict) and node:
                key = draw(st.sampled_from(sorted(node)))
                if draw(st.booleans()):
                    del node[key]
                else:
                    node[key] = draw(JSON_VALUES)
    return doc


def test_fuzz_manifest(llama_artifacts: Path) -> None:
    from irforge.artifacts.manifest import Manifest

    seed = json.loads((llama_artifacts / "manifest.json").read_text())

    def load(path: Path) -> Any:
        return Manifest.load(path)

    @FUZZ
    @given(doc=mutated_json(seed))
    def check(doc: dict[str, Any]) -> None:
        _expect_only_our_errors(load, json.dumps(doc).encode(), ".json")

    check()


def test_fuzz_hf_config(llama_dir: Path) -> None:
    from irforge.facts.config import ModelConfig

    seed = json.loads((llama_dir / "config.json").read_text())

    @FUZZ
    @given(doc=mutated_json(seed))
    def check(doc: dict[str, Any]) -> None:
        try:
            ModelConfig.from_hf_config(doc)
        except ToolchainError:
            pass

    check()
