"""IREE parameter archives (IRPA): a validating reader and a streaming, atomic writer.

Layout (runtime/src/iree/schemas/parameter_archive.h, all little-endian and packed): an
88-byte v0 header, a 16-byte-aligned entry table, a metadata segment holding names and
metadata blobs, and a storage segment with each entry's data aligned to 64 bytes; the file
is padded to 4096. IREE's own builder holds buffers in memory until it commits; this writer
lays out the header first and then streams each tensor into place, so memory stays flat.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from irforge.errors import InputError, OutputError
from irforge.formats import atomic
from irforge.formats.dtypes import BY_NAME, BY_TURBINE
from irforge.formats.tensor_ref import TensorRef

MAGIC = 0x41505249
HEADER = struct.Struct("<IHHQQQ" + "Q" + "QQ" * 3)  # prefix + entry_count + 3 ranges
ENTRY_HEADER = struct.Struct("<QIQQQQQQ")  # size, type, flags, name, metadata, alignment
DATA_ENTRY = struct.Struct("<QIQQQQQQQQ")  # header + storage range
SPLAT_EXTRA = struct.Struct("<Q16sB")
ENTRY_SKIP, ENTRY_SPLAT, ENTRY_DATA, ENTRY_EXTERNAL = 0, 1, 2, 3
ENTRY_ALIGNMENT = 16
DATA_ALIGNMENT = 64
FILE_ALIGNMENT = 4096
WRITE_THREADS = 4  # files written side by side (write_irpas)
COMPUTED_MIN_BYTES = 1 << 20  # a computed entry smaller than this is no reason for threads
# iree-turbine's ParameterArchive reads this metadata prefix to rebuild torch tensors.
TORCH_METADATA_PREFIX = "PYTORCH:"


def _align(x: int, a: int) -> int:
    return -(-x // a) * a


# -- reading ------------------------------------------------------------------------------


@dataclass
class IrpaEntry:
    ref: TensorRef
    metadata: bytes
    splat: bytes | None = None  # the pattern of a splat entry (no storage)


def _tensor_meta(metadata: bytes, nbytes: int) -> tuple[str, tuple[int, ...]]:
    """dtype and shape from turbine-style metadata; raw bytes when there is none."""
    text = metadata.decode("utf-8", errors="replace")
    if text.startswith(TORCH_METADATA_PREFIX):
        try:
            d = json.loads(text[len(TORCH_METADATA_PREFIX) :])
            dtype = BY_TURBINE[d["dtype"]]
            shape = tuple(int(x) for x in d["shape"])
        except (ValueError, KeyError, TypeError):
            pass
        else:
            count = 1
            for s in shape:
                count *= s
            if count * dtype.itemsize == nbytes:
                return dtype.name, shape
    return "u8", (nbytes,)


def read_irpa(path: Path) -> list[IrpaEntry]:
    """Parse and validate an IRPA file's header and entries (no tensor data is read).

    Raises:
        InputError: naming the file and what is out of range.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            head = f.read(HEADER.size)
            if len(head) < HEADER.size:
                raise InputError(f"{path}: file is {size} bytes, too short for an IRPA header")
            fields = HEADER.unpack(head)
            magic, major, minor, header_size, next_header = fields[:5]
            if magic != MAGIC:
                raise InputError(f"{path}: not an IRPA file (bad magic)")
            if (major, minor) != (0, 0):
                raise InputError(f"{path}: IRPA version {major}.{minor} is not supported (0.0 is)")
            if header_size < HEADER.size or next_header:
                raise InputError(
                    f"{path}: linked or extended IRPA headers are not supported; "
                    "repack with `iree-convert-parameters`"
                )
            count, e_off, e_len, m_off, m_len, s_off, s_len = fields[6:]
            for name, off, length in (
                ("entry", e_off, e_len),
                ("metadata", m_off, m_len),
                ("storage", s_off, s_len),
            ):
                if off + length > size:
                    raise InputError(
                        f"{path}: {name} segment [{off}, {off + length}) is past the end of the "
                        f"{size}-byte file (truncated?)"
                    )
            if count * ENTRY_HEADER.size > e_len:
                raise InputError(f"{path}: {count} entries cannot fit in a {e_len}-byte table")
            f.seek(e_off)
            table = f.read(e_len)
            f.seek(m_off)
            meta_seg = f.read(m_len)
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from e
    try:
        return _parse_entries(path, table, meta_seg, count, s_off, s_len)
    except InputError as e:
        raise InputError(f"{path}: {e}") from e


def _meta_slice(seg: bytes, off: int, length: int, what: str) -> bytes:
    if off + length > len(seg):
        raise InputError(f"{what} [{off}, {off + length}) is outside the metadata segment")
    return seg[off : off + length]


def _parse_entries(
    path: Path, table: bytes, meta_seg: bytes, count: int, s_off: int, s_len: int
) -> list[IrpaEntry]:
    entries: list[IrpaEntry] = []
    names: set[str] = set()
    pos = 0
    for i in range(count):
        if pos + ENTRY_HEADER.size > len(table):
            raise InputError(f"entry #{i} runs past the entry table")
        size, etype, _, n_off, n_len, md_off, md_len, _ = ENTRY_HEADER.unpack_from(table, pos)
        if size < ENTRY_HEADER.size or pos + size > len(table):
            raise InputError(f"entry #{i} has an invalid size {size}")
        body = table[pos : pos + size]
        pos = _align(pos + size, ENTRY_ALIGNMENT)
        if etype == ENTRY_SKIP:
            continue
        try:
            name = _meta_slice(meta_seg, n_off, n_len, f"name of entry #{i}").decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"name of entry #{i} is not UTF-8") from e
        if name in names:
            raise InputError(f"duplicate entry name {name!r}")
        names.add(name)
        metadata = _meta_slice(meta_seg, md_off, md_len, f"metadata of {name!r}")
        if etype == ENTRY_DATA:
            if size < DATA_ENTRY.size:
                raise InputError(f"data entry {name!r} is truncated")
            d_off, d_len = struct.unpack_from("<QQ", body, ENTRY_HEADER.size)
            if d_off + d_len > s_len:
                raise InputError(
                    f"entry {name!r} data [{d_off}, {d_off + d_len}) is outside the "
                    f"{s_len}-byte storage segment"
                )
            dtype, shape = _tensor_meta(metadata, d_len)
            ref = TensorRef(name, dtype, shape, path, s_off + d_off, d_len)
            entries.append(IrpaEntry(ref, metadata))
        elif etype == ENTRY_SPLAT:
            if size < ENTRY_HEADER.size + SPLAT_EXTRA.size:
                raise InputError(f"splat entry {name!r} is truncated")
            length, pattern, p_len = SPLAT_EXTRA.unpack_from(body, ENTRY_HEADER.size)
            if p_len not in (1, 2, 4, 8, 16) or length % p_len:
                raise InputError(f"splat entry {name!r} has an invalid pattern length {p_len}")
            dtype, shape = _tensor_meta(metadata, length)
            ref = TensorRef(name, dtype, shape, path, 0, length)
            entries.append(IrpaEntry(ref, metadata, splat=pattern[:p_len]))
        elif etype == ENTRY_EXTERNAL:
            raise InputError(f"entry {name!r} refers to an external file, which is not supported")
        else:
            raise InputError(f"entry {name!r} has unknown type {etype}")
    return entries


# -- writing ------------------------------------------------------------------------------

# A source of bytes for one entry: a byte range of a file to copy, a strided one (a column
# slice) to gather, or chunks to write.
ByteSource = TensorRef | atomic.StridedRange | Callable[[], Iterable[bytes | memoryview]]


@dataclass
class OutputEntry:
    name: str
    nbytes: int
    source: ByteSource
    metadata: bytes = b""


def tensor_metadata(dtype: str, shape: Sequence[int]) -> bytes:
    """Turbine-compatible metadata so `ParameterArchive(...).as_tensor()` works on our files."""
    d = BY_NAME[dtype]
    desc = {
        "class_name": "dtype",
        "is_complex": False,
        "is_floating_point": d.is_float,
        "is_signed": d.is_signed,
        "itemsize": d.itemsize,
    }
    body = {"type": "Tensor", "dtype": d.turbine, "shape": list(shape), "dtype_desc": desc}
    return (TORCH_METADATA_PREFIX + json.dumps(body)).encode()


def _layout(entries: Sequence[OutputEntry]) -> tuple[bytes, list[int], int]:
    """Header bytes, absolute data offset of each entry, and total file size."""
    table_off = _align(HEADER.size, ENTRY_ALIGNMENT)
    table_len = (len(entries) - 1) * _align(DATA_ENTRY.size, ENTRY_ALIGNMENT) + DATA_ENTRY.size
    table_len = max(table_len, 0)
    meta = bytearray()
    records = []
    for e in entries:
        name = e.name.encode()
        n_off = len(meta)
        meta += name
        md_off = len(meta)
        meta += e.metadata
        records.append((n_off, len(name), md_off, len(e.metadata)))
    meta_off = table_off + table_len
    storage_off = _align(meta_off + len(meta), FILE_ALIGNMENT)
    rel, offsets = 0, []
    for e in entries:
        rel = _align(rel, DATA_ALIGNMENT)
        offsets.append(rel)
        rel += e.nbytes
    total = _align(storage_off + rel, FILE_ALIGNMENT)
    out = bytearray(storage_off)
    HEADER.pack_into(
        out,
        0,
        MAGIC,
        0,
        0,
        HEADER.size,
        0,
        0,
        len(entries),
        table_off,
        table_len,
        meta_off,
        len(meta),
        storage_off,
        rel,
    )
    pos = table_off
    for e, (n_off, n_len, md_off, md_len), off in zip(entries, records, offsets, strict=True):
        DATA_ENTRY.pack_into(
            out,
            pos,
            DATA_ENTRY.size,
            ENTRY_DATA,
            0,
            n_off,
            n_len,
            md_off,
            md_len,
            DATA_ALIGNMENT,
            off,
            e.nbytes,
        )
        pos += _align(DATA_ENTRY.size, ENTRY_ALIGNMENT)
    out[meta_off : meta_off + len(meta)] = meta
    return bytes(out), [storage_off + o for o in offsets], total


def write_irpa(
    path: Path,
    entries: Sequence[OutputEntry],
    *,
    on_bytes: Callable[[int], None] | None = None,
    inputs: Iterable[Path] = (),
) -> None:
    """Write an IRPA atomically: a temporary file beside `path`, checked, then renamed.

    Memory stays bounded by the largest chunk a source yields; byte-range sources are
    copied in the kernel (copy_file_range) without passing through Python.

    Raises:
        OutputError: the output cannot be written, or would overwrite an input.
    """
    write_irpas([(path, entries)], on_bytes=on_bytes, inputs=inputs)


def write_irpas(
    files: Sequence[tuple[Path, Sequence[OutputEntry]]],
    *,
    on_bytes: Callable[[int], None] | None = None,
    inputs: Iterable[Path] = (),
) -> None:
    """Write several IRPAs in one pass, each atomically (see write_irpa).

    Where entry i of the files are column slices of one matrix (a row-parallel weight's
    shards), its rows are read once for all of them. Either every file is replaced or, on
    an error, none is; they are renamed into place last file first.

    Raises:
        OutputError: a file cannot be written, or would overwrite an input.
    """
    inputs = list(inputs)
    layouts = []
    for path, entries in files:
        names = [e.name for e in entries]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise OutputError(f"two tensors would be written under the same name {dup!r}")
        atomic.refuse_overwriting_inputs(path, inputs)
        layouts.append(_layout(entries))
    with contextlib.ExitStack() as stack:
        outs = [atomic.AtomicFile(path) for path, _ in files]
        handles = [stack.enter_context(out) for out in outs]
        jobs: list[Callable[[], object]] = []
        for f, (header, _, _) in zip(handles, layouts, strict=True):
            f.write(header)
            f.flush()  # from here on every write names its offset (pwrite): no file position
        for i in range(max((len(entries) for _, entries in files), default=0)):
            row = [
                (f, entries[i], layout[1][i])
                for f, (_, entries), layout in zip(handles, files, layouts, strict=True)
                if i < len(entries)
            ]
            jobs += _row_jobs(row, on_bytes)
        # One file's writes serialize on its inode: threads help it only where there is
        # work besides the copy (casts, quantization), not for the metadata's few KB of JSON
        # (that entry alone put a plain copy of the 1B shape on 2 threads: 2.5 s of sys time
        # against cp's 1.3 s).
        computed = any(
            callable(e.source) and e.nbytes >= COMPUTED_MIN_BYTES
            for _, entries in files
            for e in entries
        )
        threads = WRITE_THREADS if len(files) > 1 or computed else 1
        _run(jobs, min(threads, os.cpu_count() or 1))
        for f, out, (_, entries), (_, _, total) in zip(handles, outs, files, layouts, strict=True):
            f.truncate(total)
            _verify(out.tmp_path, entries)


def _row_jobs(
    row: list[tuple[BinaryIO, OutputEntry, int]], on_bytes: Callable[[int], None] | None
) -> list[Callable[[], object]]:
    """Entry i of each file: strided slices of one source as one job, the rest one job each."""
    strided = [(e.source, f, off) for f, e, off in row if isinstance(e.source, atomic.StridedRange)]
    jobs: list[Callable[[], object]] = []
    if len(strided) > 1 and len({(s.path, s.rows, s.stride) for s, _, _ in strided}) == 1:
        jobs.append(functools.partial(atomic.copy_strided, strided, on_bytes))
        row = [r for r in row if not isinstance(r[1].source, atomic.StridedRange)]
    jobs += [functools.partial(_write_checked, f, e, off, on_bytes) for f, e, off in row]
    return jobs


def _run(jobs: list[Callable[[], object]], workers: int) -> None:
    """Run the jobs on `workers` threads; the first error cancels what has not started.

    Writes into different files run side by side: tmpfs serializes writes into one file, not
    into two (2 threads copy a 2.5 GB model into 2 files in 0.50 s, into one in 1.00 s; cp
    0.94 s). Jobs are queued file by file within an entry, so threads work on different files.
    """
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            job()
        return
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(job) for job in jobs]
        try:
            for fut in futures:
                fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def _write_checked(
    f: BinaryIO, e: OutputEntry, off: int, on_bytes: Callable[[int], None] | None
) -> None:
    written = _write_entry(f, e, off, on_bytes)
    if written != e.nbytes:
        raise OutputError(f"tensor {e.name!r}: produced {written} bytes, expected {e.nbytes}")


def _write_entry(f, e: OutputEntry, off: int, on_bytes: Callable[[int], None] | None) -> int:
    if isinstance(e.source, TensorRef):
        return atomic.copy_range(e.source.path, e.source.offset, e.nbytes, f, off, on_bytes)
    if isinstance(e.source, atomic.StridedRange):
        return atomic.copy_strided([(e.source, f, off)], on_bytes)
    written = 0
    for chunk in e.source():
        view = memoryview(chunk).cast("B")
        atomic.pwrite_all(f.fileno(), view, off + written)
        written += view.nbytes
        if on_bytes:
            on_bytes(view.nbytes)
    return written


def _verify(tmp_path: str, entries: Sequence[OutputEntry]) -> None:
    """Reopen with IREE's own parser: names and sizes must be exactly what was planned."""
    index = _parameter_index()
    try:
        index.load(tmp_path, format="irpa")
    except Exception as e:  # the runtime raises plain ValueError/RuntimeError
        raise OutputError(f"IREE cannot read back the archive just written: {e}") from e
    got = {k: len(memoryview(v.file_view)) for k, v in index.items()}
    want = {e.name: e.nbytes for e in entries}
    if got != want:
        raise OutputError("IREE reads back different entries than were written (internal error)")


def _parameter_index():
    """IREE's ParameterIndex, from the native module when it can be had alone.

    `import iree.runtime` loads ml_dtypes, 0.6 s here: half of what a cp of a 1B model takes,
    paid by every convert and shard for one header parse.
    """
    try:
        from iree._runtime.libs import _runtime  # the module iree.runtime re-exports
    except ImportError:
        import iree.runtime as _runtime
    return _runtime.ParameterIndex()
