"""Build steps: run or plan them in order, skipping those up to date, and record each one.

Each step is recorded as soon as it completes in OUT/build.json (and, at the end, in
OUT/manifest.json under "build"): its arguments, and the size and sha256 of its inputs and
outputs, with paths relative to OUT, so a moved, copied or differently spelled OUT is still
up to date, and an interrupted build keeps the steps it finished. A step re-runs when its
arguments or an input changed, when an output is missing or no longer matches what was
written (a corrupt intermediate), or when the code that made it changed (irforge's own source,
or the release of torch, iree-turbine or IREE it drove); everything after a re-run step then
sees a changed input and re-runs too.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from irforge.artifacts.manifest import Manifest
from irforge.errors import ConfigError
from irforge.formats.atomic import AtomicFile, sha256_file

RECORD_NAME = "build.json"


@dataclass
class Step:
    name: str
    args: dict[str, Any]
    inputs: list[Path]
    outputs: list[Path]
    command: list[str]  # the equivalent individual irforge command
    run: Callable[[], object]  # a dict it returns is its report (shown by "summary")


@dataclass
class StepResult:
    name: str
    status: str  # "ran" | "skipped" | "planned" | "up to date"
    seconds: float = 0.0
    reason: str = ""


@dataclass
class BuildResult:
    out_dir: Path
    steps: list[StepResult] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)


def _files(paths: Sequence[Path]) -> list[Path]:
    """Files named, and the files inside folders named (an HF folder as one input)."""
    out: list[Path] = []
    for p in paths:
        out.extend(sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p])
    return out


def _key(path: Path, root: Path) -> str:
    """A path as recorded: relative to OUT when inside it, else absolute."""
    full, base = path.resolve(), root.resolve()
    return os.path.relpath(full, base) if full.is_relative_to(base) else str(full)


def _fingerprint(paths: Sequence[Path], known: dict[str, Any], root: Path) -> dict[str, Any]:
    """{path: {size, sha256, mtime_ns}}; a file whose size and mtime are unchanged keeps its
    recorded hash, so an up-to-date check of a 400 GB model does not re-read it."""
    out = {}
    for p in _files(paths):
        st = p.stat()
        key = _key(p, root)
        old = known.get(key)
        if old and old["size"] == st.st_size and old["mtime_ns"] == st.st_mtime_ns:
            out[key] = old
            continue
        out[key] = {"size": st.st_size, "sha256": sha256_file(p), "mtime_ns": st.st_mtime_ns}
    return out


_TOOLS = ("torch", "iree-turbine", "iree-base-compiler", "iree-base-runtime")


@functools.cache
def code_identity() -> str:
    """A digest of irforge's source files and of the releases of the tools it drives: a step
    made by other code is not up to date (an upgrade changes what export or compile make)."""
    from importlib.metadata import PackageNotFoundError, version

    digest = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    for tool in _TOOLS:
        try:
            digest.update(f"{tool}={version(tool)}".encode())
        except PackageNotFoundError:
            digest.update(f"{tool}=none".encode())
    return digest.hexdigest()[:16]


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal contents (size and hash); a rewrite with identical bytes counts as unchanged."""
    strip = lambda d: {k: (v["size"], v["sha256"]) for k, v in d.items()}  # noqa: E731
    return strip(a) == strip(b)


def _stale(step: Step, previous: dict[str, Any] | None, root: Path) -> str:
    """Why the step must run, or "" when it is up to date."""
    if previous is None:
        return "never built"
    if previous["args"] != step.args:
        return "arguments changed"
    if previous.get("code") != code_identity():
        return "made by another irforge or IREE"
    missing = [p for p in step.outputs if not p.exists()]
    if missing:
        return f"{missing[0].name} is missing"
    if not _same(_fingerprint(step.inputs, previous["inputs"], root), previous["inputs"]):
        return "an input changed"
    if not _same(_fingerprint(step.outputs, previous["outputs"], root), previous["outputs"]):
        return "an output was modified or is corrupt"
    return ""


def _previous_record(out_dir: Path) -> dict[str, Any]:
    try:
        record = json.loads((out_dir / RECORD_NAME).read_text())
        return record if isinstance(record, dict) else {}
    except (ValueError, OSError):
        return {}  # no record, or an unreadable one, just means: rebuild


def run_steps(
    out_dir: Path,
    steps: list[Step],
    *,
    force: bool = False,
    dry_run: bool = False,
    on_step: Callable[[str, str], None] = lambda name, status: None,
) -> BuildResult:
    """Run (or plan) `steps` in order, skipping the up-to-date ones; record them.

    Raises:
        Whatever a step raises; steps recorded before it stay recorded.
    """
    previous = _previous_record(out_dir)
    record: dict[str, Any] = {"steps": {}}
    result = BuildResult(out_dir, commands=[shlex.join(s.command) for s in steps])
    for step in steps:
        prev = previous.get("steps", {}).get(step.name)
        # an earlier step that re-ran shows up here as a changed input
        reason = "--force" if force else _stale(step, prev, out_dir)
        if dry_run:
            status = "would run" if reason else "up to date"
            result.steps.append(StepResult(step.name, status, reason=reason))
            continue
        if not reason:
            on_step(step.name, "up to date")
            record["steps"][step.name] = prev
            said = (prev or {}).get("report", {}).get("summary")
            result.steps.append(StepResult(step.name, "skipped", reason=said or "up to date"))
            continue
        on_step(step.name, f"running ({reason})")
        started = time.perf_counter()
        report = step.run()
        seconds = time.perf_counter() - started
        record["steps"][step.name] = {
            "args": step.args,
            "code": code_identity(),
            "command": shlex.join(step.command),
            "inputs": _fingerprint(step.inputs, {}, out_dir),
            "outputs": _fingerprint(step.outputs, {}, out_dir),
            "seconds": round(seconds, 3),
            **({"report": report} if isinstance(report, dict) else {}),
        }
        # Recorded now: Ctrl-C or a failure in a later step keeps this one's work.
        _write_record(out_dir, {"steps": {**previous.get("steps", {}), **record["steps"]}})
        if isinstance(report, dict) and report.get("summary"):
            reason = str(report["summary"])
        result.steps.append(StepResult(step.name, "ran", seconds, reason))
    if not dry_run:
        _write_record(out_dir, record)
        _save_record(out_dir, record)
    return result


def _write_record(out_dir: Path, record: dict[str, Any]) -> None:
    with AtomicFile(out_dir / RECORD_NAME) as f:
        f.write(json.dumps(record, indent=2).encode() + b"\n")


def _save_record(out_dir: Path, record: dict[str, Any]) -> None:
    """A copy in the manifest, so the artifact folder says how it was made."""
    try:
        manifest = Manifest.load(out_dir)
    except Exception as e:  # noqa: BLE001 - a build without an export step has no manifest
        raise ConfigError(f"{out_dir}: cannot record the build in its manifest: {e}") from e
    manifest.replace(build=record).save(out_dir)
