"""The read plan of a weights source, shared by convert and shard: each tensor's canonical name,
output dtype and reader.

A PlannedTensor reads any range of its rows in the output dtype (copying, casting or
dequantizing as needed), so whole tensors, row shards and column shards all stream in
fixed-size chunks. Untouched whole tensors and row shards stay byte-range copies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from irforge.artifacts.files import (
    TOKENIZER_CONFIG,
    TOKENIZER_JSON,
    copy_tokenizer_files,
    tokenizer_files,
)
from irforge.artifacts.sources import Source, open_source, read_json_file
from irforge.errors import ConfigError, InputError, UnsupportedModelError
from irforge.facts.config import ModelConfig
from irforge.facts.quantization import (
    SCALE_DTYPE,
    SCALE_SUFFIX,
    Scheme,
    quantize_rows,
    row_scales,
    scheme,
)
from irforge.facts.sharding import check_tensors
from irforge.facts.tensor_kinds import kind_of
from irforge.facts.tensor_names import HF_IGNORED, hf_to_canonical
from irforge.formats.atomic import AtomicFile, StridedRange
from irforge.formats.dtypes import BY_NAME, FLOAT_DTYPES
from irforge.formats.gguf_tokenizer import (
    UnsupportedTokenizer,
    tokenizer_config_text,
    tokenizer_from_gguf,
)
from irforge.formats.irpa import OutputEntry, tensor_metadata
from irforge.formats.tensor_ref import TensorRef, read_range

# Elements converted per step: bounds peak memory whatever the tensor size.
CHUNK_ELEMENTS = 8 * 1024 * 1024
DEFAULT_DEQUANT_DTYPE = "f16"
ROPE_FREQS = "rope_freqs.weight"


@dataclass(frozen=True)
class PlannedTensor:
    name: str  # canonical output name
    ref: TensorRef  # where the source bytes are
    dtype: str  # output dtype
    how: str  # "copy" | "cast" | "dequantize" | "quantize" | "scale" (quantize's scales)
    scheme: Scheme | None = None  # for "quantize" and "scale"

    @property
    def shape(self) -> tuple[int, ...]:
        if self.how != "scale":
            return self.ref.shape
        assert self.scheme is not None
        if self.scheme.block is None:
            return (self.ref.shape[0],)
        return (self.ref.shape[0], self.out_cols)

    @property
    def out_cols(self) -> int:
        """Elements each source row becomes: its scales, or the row itself."""
        if self.how != "scale":
            return self.cols
        assert self.scheme is not None
        return 1 if self.scheme.block is None else self.cols // self.scheme.block

    # A vector is rows of one element: a per-channel scale splits along its rows.
    @property
    def rows(self) -> int:
        shape = self.ref.shape
        return math.prod(shape[:-1]) if len(shape) > 1 else math.prod(shape)

    @property
    def cols(self) -> int:
        return self.ref.shape[-1] if len(self.ref.shape) > 1 else 1

    @property
    def nbytes(self) -> int:
        return self.rows * self.out_cols * BY_NAME[self.dtype].itemsize

    def _source_row_bytes(self) -> int:
        if self.ref.is_quantized:
            from irforge.formats.ggml_quants import row_bytes  # gguf: 50 ms, GGUF sources only

            return row_bytes(self.ref)
        return self.cols * BY_NAME[self.ref.dtype].itemsize

    def read_rows(self, r0: int, r1: int) -> np.ndarray:
        """Rows [r0, r1) as a [rows, cols] array of the output dtype."""
        step = self._source_row_bytes()
        raw = read_range(self.ref, r0 * step, (r1 - r0) * step)
        if self.ref.is_quantized:
            from irforge.formats.ggml_quants import dequantize

            values = dequantize(self.ref, raw)
        else:
            values = raw.view(BY_NAME[self.ref.dtype].numpy)
        if self.scheme is not None:
            rows = values.reshape(r1 - r0, self.cols)
            if self.how == "scale":
                return row_scales(rows, self.scheme).reshape(r1 - r0, self.out_cols)
            return quantize_rows(rows, self.scheme)
        if self.how != "copy":
            # Through float32, as torch does: exact from f16/bf16, one rounding to the target.
            values = values.astype(np.float32).astype(BY_NAME[self.dtype].numpy)
        return values.reshape(r1 - r0, self.cols)

    def row_chunks(self, r0: int, r1: int, cols: slice) -> Callable[[], Iterator[bytes]]:
        per_chunk = max(1, CHUNK_ELEMENTS // max(1, self.cols))

        def gen() -> Iterator[bytes]:
            for start in range(r0, r1, per_chunk):
                block = self.read_rows(start, min(r1, start + per_chunk))
                yield np.ascontiguousarray(block[:, cols]).tobytes()

        return gen

    def entry(self, name: str | None = None) -> OutputEntry:
        """The whole tensor."""
        return self.rows_entry(name or self.name, 0, self.rows, self.shape)

    def rows_entry(self, name: str, r0: int, r1: int, shape: tuple[int, ...]) -> OutputEntry:
        """Rows [r0, r1) (a dim-0 shard of a matrix): a plain byte range when copying."""
        meta = tensor_metadata(self.dtype, shape)
        nbytes = (r1 - r0) * self.out_cols * BY_NAME[self.dtype].itemsize
        if self.how == "copy":
            step = self._source_row_bytes()
            sub = replace(self.ref, offset=self.ref.offset + r0 * step, nbytes=(r1 - r0) * step)
            return OutputEntry(name, nbytes, sub, meta)
        return OutputEntry(name, nbytes, self.row_chunks(r0, r1, slice(None)), meta)

    def cols_entry(self, name: str, c0: int, c1: int) -> OutputEntry:
        """Columns [c0, c1) of every row (a dim-1 shard of a matrix)."""
        shape = (*self.shape[:-1], c1 - c0)
        itemsize = BY_NAME[self.dtype].itemsize
        nbytes = self.rows * (c1 - c0) * itemsize
        meta = tensor_metadata(self.dtype, shape)
        if self.how == "copy" and not self.ref.is_quantized:
            step = self._source_row_bytes()
            where = StridedRange(
                self.ref.path,
                self.ref.offset + c0 * itemsize,
                self.rows,
                step,
                (c1 - c0) * itemsize,
            )
            return OutputEntry(name, nbytes, where, meta)
        return OutputEntry(name, nbytes, self.row_chunks(0, self.rows, slice(c0, c1)), meta)


@dataclass
class Plan:
    source: Source
    tensors: list[PlannedTensor]
    config: ModelConfig | None
    notes: list[str] = field(default_factory=list)


def _canonical_name(source: Source, name: str, notes: list[str]) -> str | None:
    if source.kind == "gguf":
        return name
    if HF_IGNORED.match(name):
        return None
    mapped = hf_to_canonical(name)
    if mapped is None:
        notes.append(f"tensor {name!r} is not a known Llama tensor; kept under its own name")
        return name
    return mapped


def _plan_tensor(ref: TensorRef, name: str, dtype: str | None) -> PlannedTensor:
    if ref.is_quantized:
        return PlannedTensor(name, ref, dtype or DEFAULT_DEQUANT_DTYPE, "dequantize")
    if dtype and BY_NAME[ref.dtype].is_float and ref.dtype != dtype:
        return PlannedTensor(name, ref, dtype, "cast")
    return PlannedTensor(name, ref, ref.dtype, "copy")


def _dominant_float(tensors: list[PlannedTensor]) -> str:
    """The float dtype most weight bytes are in: what the model 'is' (f32, f16 or bf16)."""
    totals: dict[str, int] = {}
    for t in tensors:
        if t.dtype in FLOAT_DTYPES:
            totals[t.dtype] = totals.get(t.dtype, 0) + t.nbytes
    return max(totals, key=totals.__getitem__) if totals else "f32"


def _uniform(named: Mapping[str, TensorRef], dtype: str | None) -> tuple[list[PlannedTensor], str]:
    """Every tensor planned with every float one in one dtype: `dtype`, else the one most
    weight bytes are in (llama.cpp keeps norms f32 beside f16 or quantized matrices).

    The archive's config records that dtype and a compiled program declares its parameters
    in it: a tensor stored otherwise would be read as the wrong type (garbage), not cast.
    """

    def castable(name: str, ref: TensorRef) -> bool:
        # a quantized archive's scales (f32) and fp8/int8 weights stay as its scheme stores them
        return not name.endswith(SCALE_SUFFIX) and (ref.is_quantized or ref.dtype in FLOAT_DTYPES)

    def each(want: str | None) -> list[PlannedTensor]:
        return [
            _plan_tensor(ref, name, want if castable(name, ref) else None)
            for name, ref in named.items()
        ]

    tensors = each(dtype)
    floats = [
        t for t, (name, ref) in zip(tensors, named.items(), strict=True) if castable(name, ref)
    ]
    chosen = dtype or _dominant_float(floats)
    if any(t.dtype != chosen for t in floats):
        tensors = each(chosen)
    return tensors, chosen


def _model_config(
    source: Source, tensors: dict[str, TensorRef], out_dtype: str, config_path: Path | None
) -> ModelConfig | None:
    """The source's hyperparameters; errors name the file they come from."""
    folder = source.path if source.path.is_dir() else source.path.parent
    where = config_path or (source.path if source.gguf_metadata else folder / "config.json")
    try:
        return _read_model_config(source, tensors, out_dtype, config_path)
    except (ConfigError, UnsupportedModelError) as e:
        raise type(e)(f"{where}: {e}") from e


def _read_model_config(
    source: Source, tensors: dict[str, TensorRef], out_dtype: str, config_path: Path | None
) -> ModelConfig | None:
    label = str(source.path)
    if config_path is not None:
        hf = read_json_file(config_path)
        return ModelConfig.from_hf_config(hf, dtype=out_dtype, source=label)
    if source.gguf_metadata is not None:
        factors = None
        if ROPE_FREQS in tensors:
            freqs = tensors[ROPE_FREQS]
            if freqs.dtype != "f32":
                raise InputError(f"{source.path}: {ROPE_FREQS} is {freqs.dtype}, expected f32")
            factors = tuple(read_range(freqs, 0, freqs.nbytes).view(np.float32).tolist())
        embd = tensors.get("token_embd.weight")
        return ModelConfig.from_gguf_metadata(
            source.gguf_metadata,
            vocab_size=embd.shape[0] if embd else None,
            tie_word_embeddings="output.weight" not in tensors,
            rope_freq_factors=factors,
            dtype=out_dtype,
            source=label,
        )
    if source.hf_config is not None:
        return ModelConfig.from_hf_config(source.hf_config, dtype=out_dtype, source=label)
    return None


def _quantized(tensors: list[PlannedTensor], s: Scheme) -> list[PlannedTensor]:
    """Each linear weight as the scheme's storage, followed by its scales (quantization.py)."""
    out = []
    for t in tensors:
        found = kind_of(t.name)
        if found is None or not found[0].linear:
            out.append(t)
            continue
        out.append(PlannedTensor(t.name, t.ref, s.storage, "quantize", s))
        out.append(PlannedTensor(s.scale_name(t.name), t.ref, SCALE_DTYPE, "scale", s))
    return out


def _untied_output(tensors: list[PlannedTensor], dtype: str | None) -> list[PlannedTensor]:
    """The tensors plus output.weight read from token_embd.weight, for `_quantized` to
    quantize: a tied head would read the embedding table in the activation dtype."""
    embd = next((t for t in tensors if t.name == "token_embd.weight"), None)
    if embd is None:
        return tensors  # check_tensors names what is missing
    return [*tensors, _plan_tensor(embd.ref, "output.weight", dtype)]


def _all_linear_q8_0(tensors: list[PlannedTensor]) -> bool:
    """A GGUF whose every linear weight is Q8_0: kept so (q8_0) instead of widened to f16."""
    linear = [t for t in tensors if (found := kind_of(t.name)) is not None and found[0].linear]
    return bool(linear) and all(t.ref.dtype == "q8_0" for t in linear)


def plan(
    source: Path,
    *,
    dtype: str | None = None,
    config: Path | None = None,
    quantize: str | None = None,
) -> Plan:
    """Open and validate a checkpoint; decide every output tensor's name, dtype and reader.

    `quantize` names a weight-only scheme (quantization.SCHEMES) for the linear layers;
    `dtype` is then the activations' (embeddings', norms') dtype.

    Raises:
        InputError, ConfigError, UnsupportedModelError.
    """
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(FLOAT_DTYPES)}, got {dtype!r}")
    quant = scheme(quantize) if quantize is not None else None
    src = open_source(Path(source))
    notes: list[str] = []
    named: dict[str, TensorRef] = {}
    for ref in src.tensors:
        name = _canonical_name(src, ref.name, notes)
        if name is None:
            continue
        if name in named:
            raise InputError(
                f"{src.path}: tensors {named[name].name!r} and {ref.name!r} both map to {name!r}"
            )
        named[name] = ref
    # rope_freqs.weight travels in the config as rope_freq_factors, not as a weight.
    weights = {name: ref for name, ref in named.items() if name != ROPE_FREQS}
    tensors, out_dtype = _uniform(weights, dtype)
    cfg = _model_config(src, named, out_dtype, config)
    if cfg is not None:
        if cfg.tie_word_embeddings and "output.weight" in named:
            tensors = [t for t in tensors if t.name != "output.weight"]
            notes.append("dropped output.weight: the config ties it to token_embd.weight")
        if quant is None and _all_linear_q8_0(tensors):
            quant = scheme("q8_0")
            notes.append("kept the Q8_0 linear weights as int8 blocks with their scales (q8_0)")
        if quant is not None and cfg.tie_word_embeddings:
            tensors = _untied_output(tensors, dtype)
            cfg = cfg.replace(tie_word_embeddings=False)
            notes.append(
                f"the output projection is a {quant.name} copy of token_embd.weight (which stays "
                "as it is for lookups): read whole every step, it is a tied model's largest "
                "weight"
            )
        if quant is not None:
            tensors = _quantized(tensors, quant)
            cfg = cfg.replace(quantization=quant.name)
        check_tensors(cfg, {t.name: t.shape for t in tensors}, str(src.path))
    elif quant is not None:
        raise ConfigError(
            f"{src.path}: quantizing needs the model's config (which tensors are linear "
            "layers); pass `--config config.json`"
        )
    else:
        notes.append(
            "no config.json beside the source: the archive has no hyperparameters; "
            "pass `--config config.json` so that export can use it"
        )
    return Plan(src, tensors, cfg, notes)


def plan_archive(path: Path, *, dtype: str | None = None) -> Plan:
    """A plan over an (unsharded) irforge archive, for re-sharding or casting it.

    Raises:
        InputError: the archive is malformed or already sharded.
    """
    from irforge.artifacts.archive import open_archive

    archive = open_archive(Path(path))
    if archive.rank_paths:
        raise InputError(f"{path}: already sharded; `irforge shard --unshard` joins it first")
    folder = archive.path.parent
    tokenizer = tokenizer_files(folder)
    src = Source(
        "irpa",
        archive.path,
        list(archive.tensors.values()),
        tokenizer_files=tokenizer,
        inputs=[archive.path],
    )
    tensors, out_dtype = _uniform(archive.tensors, dtype)
    cfg = archive.config
    return Plan(src, tensors, cfg.replace(dtype=out_dtype) if cfg else None)


def source_record(src: Source) -> dict[str, str]:
    return {"path": str(src.path.resolve()), "kind": src.kind}


def copy_tokenizer(src: Source, out: Path, notes: list[str]) -> list[Path]:
    """Copy the source's tokenizer files beside `out`; a GGUF without a tokenizer.json next to
    it gets one (and a tokenizer_config.json) rebuilt from its own tokenizer.ggml.* keys.
    Without a tokenizer the archive takes token ids only: said in one line in `notes`."""
    copied = copy_tokenizer_files(src.tokenizer_files, out.parent)
    names = {p.name for p in copied}
    if TOKENIZER_JSON in names:
        return copied
    need = f"put a {TOKENIZER_JSON} beside {out.name} for text prompts and chat"
    if src.gguf_metadata is None:
        notes.append(f"no {TOKENIZER_JSON} beside the source: {need}")
        return copied
    try:
        text, config = tokenizer_from_gguf(src.gguf_metadata)
    except UnsupportedTokenizer as e:
        notes.append(f"the GGUF's tokenizer cannot be rebuilt ({e}): {need}")
        return copied
    written = [out.parent / TOKENIZER_JSON]
    with AtomicFile(written[0]) as f:
        f.write(text.encode())
    if TOKENIZER_CONFIG not in names:
        written.append(out.parent / TOKENIZER_CONFIG)
        with AtomicFile(written[1]) as f:
            f.write(tokenizer_config_text(config).encode())
    return copied + written
