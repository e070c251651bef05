"""shard(): one IRPA per tensor-parallel rank, streamed; unshard(): join them back."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from irforge.artifacts.archive import ArchiveMetadata, open_archive, rank_entry, rank_path
from irforge.errors import ConfigError, InputError, ShardingError, ToolchainError
from irforge.facts.sharding import MAX_TP, check_tp, shard_name, split_dim
from irforge.formats.atomic import link_or_copy
from irforge.formats.irpa import OutputEntry, tensor_metadata, write_irpa, write_irpas
from irforge.formats.locks import locked
from irforge.stages.tensor_plan import (
    CHUNK_ELEMENTS,
    Plan,
    PlannedTensor,
    copy_tokenizer,
    plan,
    plan_archive,
    source_record,
)


@dataclass
class ShardResult:
    out: Path
    tp: int
    rank_files: list[Path] = field(default_factory=list)
    split: int = 0  # tensors split across ranks
    replicated: int = 0
    notes: list[str] = field(default_factory=list)


def _plan(source: Path, dtype: str | None, config: Path | None, quantize: str | None) -> Plan:
    if source.suffix == ".irpa":
        if quantize is not None:
            raise ConfigError(
                f"{source} is an archive already: quantize while converting "
                "(`irforge convert SOURCE --quantize ...`), then shard that archive"
            )
        return plan_archive(source, dtype=dtype)
    return plan(source, dtype=dtype, config=config, quantize=quantize)


def _rank_entry(t: PlannedTensor, dim: int, rank: int, tp: int) -> OutputEntry:
    name = shard_name(t.name, rank)
    if dim == 0:
        rows = t.shape[0] // tp
        return t.rows_entry(name, rank * rows, (rank + 1) * rows, (rows, *t.shape[1:]))
    cols = t.shape[1] // tp
    return t.cols_entry(name, rank * cols, (rank + 1) * cols)


@locked("out", folder=False)
def shard(
    source: Path,
    *,
    tp: int,
    out: Path,
    dtype: str | None = None,
    config: Path | None = None,
    quantize: str | None = None,
    on_bytes: Callable[[int], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
) -> ShardResult:
    """Write `out` (metadata + replicated tensors) and `out.rank{i}.irpa` (shard i of each split).

    SOURCE may be an irforge .irpa or anything convert reads (converted in the same pass).
    Each file streams: memory stays at one chunk, whatever the model size.

    Raises:
        ShardingError: tp does not divide the model, or the source is already sharded.
        InputError, ConfigError, OutputError.

    Example:
        >>> shard(Path("llama70b.irpa"), tp=8, out=Path("tp8/llama70b.irpa"))
    """
    out = Path(out)
    if out.suffix != ".irpa":
        raise ConfigError(f"output {out} must end in .irpa")
    p = _plan(Path(source), dtype, config, quantize)
    if p.config is None:
        raise ShardingError(f"{source}: no model config, so the split sizes are unknown")
    check_tp(p.config, tp)
    result = ShardResult(out=out, tp=tp, notes=list(p.notes))
    if tp == 1:
        result.notes.append("--tp 1 writes a plain (unsharded) copy of the model")
    split = [(t, split_dim(t.name)) for t in p.tensors] if tp > 1 else []
    parts = [t for t, d in split if d is not None]
    replicated = [t for t in p.tensors if t not in parts]
    total = sum(t.nbytes for t in p.tensors)
    if on_plan:
        on_plan(total)
    inputs = p.source.inputs
    shard_id = uuid.uuid4().hex if tp > 1 else ""
    # Rank files are written under names of their own (NAME.rank{i}.<id>.irpa) beside the
    # previous set, which stays whole; replacing NAME.irpa, which lists them, is the switch. A
    # run killed at any point leaves the old sharding or the new one, never a mix.
    names = [f"{out.stem}.rank{i}.{shard_id[:12]}{out.suffix}" for i in range(tp if tp > 1 else 0)]
    previous = _previous_rank_files(out)
    try:
        meta = ArchiveMetadata(
            p.config,
            tensor_parallelism_size=tp,
            source=source_record(p.source),
            shard_id=shard_id,
            rank_files=tuple(names),
        )
        # Every file in one pass, side by side: each row-parallel weight is read once for all
        # ranks. NAME.irpa comes first, so it is the last to be renamed into place.
        files = [(out, [t.entry() for t in replicated] + [meta.entry()])]
        for rank, name in enumerate(names):
            entries = [_rank_entry(t, d, rank, tp) for t, d in split if d is not None]
            entries.append(rank_entry(shard_id, rank, tp))
            files.append((out.with_name(name), entries))
        result.rank_files = [path for path, _ in files[1:]]
        write_irpas(files, on_bytes=on_bytes, inputs=inputs)
    except BaseException:
        # Each file is atomic; a failed run also takes back the rank files it completed.
        for path in result.rank_files:
            path.unlink(missing_ok=True)
        raise
    # The new set is in. It takes the canonical names (shark-ai's NAME.rank{i}.irpa, what
    # shortfin is given), and its own names go: readers fall back to the canonical ones.
    # Killed in here, NAME.irpa still finds the new set under whichever names are complete.
    for rank, path in enumerate(result.rank_files):
        link_or_copy(path, rank_path(out, rank))
    for own in previous | set(names):
        out.with_name(own).unlink(missing_ok=True)
    for rank in range(len(names), MAX_TP):  # canonical names of a wider previous sharding
        stale = rank_path(out, rank)
        if not stale.exists():
            break
        stale.unlink()
    result.rank_files = [rank_path(out, rank) for rank in range(len(names))]
    copy_tokenizer(p.source, out, result.notes)
    result.split, result.replicated = len(parts), len(replicated)
    return result


def _previous_rank_files(out: Path) -> set[str]:
    """The own names of the rank files of the sharding now at `out` (to remove after)."""
    if not out.is_file():
        return set()
    try:
        archive = open_archive(out)
    except ToolchainError:
        return set()
    listed = archive.metadata.rank_files if archive.metadata else ()
    return {n for n in listed if n != out.name}


def _concat_rows(shards: list[PlannedTensor]) -> Callable[[], Iterator[bytes]]:
    def gen() -> Iterator[bytes]:
        for s in shards:
            yield from s.row_chunks(0, s.rows, slice(None))()

    return gen


def _concat_cols(shards: list[PlannedTensor]) -> Callable[[], Iterator[bytes]]:
    rows, per_chunk = shards[0].rows, max(1, CHUNK_ELEMENTS // sum(s.cols for s in shards))

    def gen() -> Iterator[bytes]:
        for start in range(0, rows, per_chunk):
            end = min(rows, start + per_chunk)
            yield np.concatenate([s.read_rows(start, end) for s in shards], axis=1).tobytes()

    return gen


def unshard(source: Path, *, out: Path) -> Path:
    """Join a sharded archive's rank files back into one archive (the inverse of shard).

    Raises:
        InputError: the source is not sharded or a shard is missing.
    """
    archive = open_archive(Path(source))
    meta = archive.metadata
    if meta is None or meta.tensor_parallelism_size < 2:
        raise InputError(f"{source}: not a sharded archive (tensor_parallelism_size < 2)")
    tp = meta.tensor_parallelism_size
    bases = sorted({n.rsplit(".shard.", 1)[0] for n in archive.tensors if ".shard." in n})
    entries: list[OutputEntry] = []
    for name, ref in archive.tensors.items():
        if ".shard." in name:
            continue
        entries.append(PlannedTensor(name, ref, ref.dtype, "copy").entry())
    for base in bases:
        found = [archive.tensors.get(shard_name(base, i)) for i in range(tp)]
        refs = [r for r in found if r is not None]
        if len(refs) != tp:
            raise InputError(f"{source}: {base} lacks a shard (expected {tp})")
        shards = [PlannedTensor(base, r, r.dtype, "copy") for r in refs]
        dim = split_dim(base)
        first = shards[0].shape
        shape = (first[0] * tp, *first[1:]) if dim == 0 else (first[0], first[1] * tp)
        nbytes = sum(s.nbytes for s in shards)
        gen = _concat_rows(shards) if dim == 0 else _concat_cols(shards)
        entries.append(OutputEntry(base, nbytes, gen, tensor_metadata(refs[0].dtype, shape)))  # type: ignore[union-attr]
    joined = ArchiveMetadata(meta.config, tensor_parallelism_size=1, source=meta.source)
    write_irpa(Path(out), [*entries, joined.entry()], inputs=[archive.path, *archive.rank_paths])
    return Path(out)
