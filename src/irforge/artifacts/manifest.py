"""manifest.json: what an artifact folder holds and what produced it.

export writes it; compile adds each target's VMFB; run and serve read it to find the
parameters, the program's batch sizes and the tokenizer. Paths are relative to the folder.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from irforge.artifacts.files import MLIR_NAME, is_bare_name
from irforge.errors import ConfigError, ManifestError
from irforge.facts.config import FLOAT_DTYPES, KV_CACHE_DTYPES, ModelConfig
from irforge.facts.sharding import MAX_TP
from irforge.facts.targets import F32_ROWS_WEIGHTS
from irforge.formats.atomic import AtomicFile

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


ATTENTION_KINDS = ("decomposed", "sdpa")
MAX_BATCH = 4096


def _ints(values: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer from {low} to {high}, got {value!r}")


MAX_SPECULATIVE_TOKENS = 16
# Speculative decoding pays k + 1 positions a row for a step: worth it while a step is
# bound by reading the weights, which stops being so somewhere past 8 rows of 4 positions
# on a CPU (bench/speculative.py); the engine steps aside above it, so larger decode batch
# sizes get no verify entry (each is a whole model's code to compile).
VERIFY_MAX_BATCH = 8
DEFAULT_ATTENTION = "decomposed"  # compiles for gfx942, where fused paged attention does not
DEFAULT_ATTENTION_DTYPE = "f32"  # see ExportOptions.attention_dtype


@dataclass(frozen=True)
class ExportOptions:
    """How the program was exported (what shortfin's config.json describes, and more).

    The one declaration of the export options and their defaults: the CLI and `build` make
    one and hand it to export(), the manifest records it, `cli_args()` spells it as `irforge
    export` flags, and ModelOptions takes its fields from it. Values are checked when the
    options are made, so a manifest with absurd ones is refused where it is read. A None
    dtype (or max_seq_len 0) follows the model; `resolve()` fills them in, and the manifest
    always holds resolved options.
    """

    prefill_batch_sizes: tuple[int, ...] = (4,)
    decode_batch_sizes: tuple[int, ...] = (4,)
    block_seq_stride: int = 32
    device_block_count: int = 512
    activation_dtype: str | None = None  # default: the model's dtype
    kv_cache_dtype: str | None = None  # default: the activations'
    # default: f32 (DEFAULT_ATTENTION_DTYPE). Half-precision attention (softmax in f32, then
    # cast for P.V) fuses into a CPU dispatch whose stack buffer grows with the longest
    # sequence: 8 MB at 131072 positions, over llvm-cpu's 32 KB limit. f32 attention reads the
    # half-precision cache and weights as they are and compiles for cpu and gfx942 alike.
    attention_dtype: str | None = None
    attention: str = DEFAULT_ATTENTION
    top_k: int | None = None
    max_seq_len: int = 0  # 0: the model's context length
    tensor_parallelism_size: int = 1
    # k of speculative decoding's verify_bs{N} (abi.VERIFY: a row's last token and up to k
    # proposed ones); 0: no verify entry points
    speculative_tokens: int = 0
    # f16 weights multiply f32 rows: with no activation dtype given, an unquantized f16 model
    # runs its activations in f32 and keeps its KV cache in f16 (model/widening.py: what
    # llvm-cpu runs fastest; `build` sets it when every target is the CPU, Target.f32_rows)
    f32_rows: bool = False

    def __post_init__(self) -> None:
        for name in ("prefill_batch_sizes", "decode_batch_sizes"):  # lists from JSON or a CLI
            sizes = getattr(self, name)
            if (
                not isinstance(sizes, list | tuple)
                or not sizes
                or not _ints(sizes)
                or not all(1 <= b <= MAX_BATCH for b in sizes)
                or len(set(sizes)) != len(sizes)
            ):
                raise ConfigError(
                    f"{name} must be distinct integers from 1 to {MAX_BATCH}, got {sizes!r}"
                )
            object.__setattr__(self, name, tuple(sorted(sizes)))
        _check_int("block_seq_stride", self.block_seq_stride, 1, 4096)
        _check_int("device_block_count", self.device_block_count, 2, 2**24)
        _check_int("max_seq_len", self.max_seq_len, 0, 2**24)
        _check_int("tensor_parallelism_size", self.tensor_parallelism_size, 1, MAX_TP)
        for name in ("activation_dtype", "kv_cache_dtype", "attention_dtype"):
            allowed = KV_CACHE_DTYPES if name == "kv_cache_dtype" else FLOAT_DTYPES
            if getattr(self, name) not in (*allowed, None):
                raise ConfigError(
                    f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
        if self.attention not in ATTENTION_KINDS:
            raise ConfigError(
                f"attention must be one of {', '.join(ATTENTION_KINDS)}, got {self.attention!r}"
            )
        if self.top_k is not None:
            _check_int("top_k", self.top_k, 1, 2**31)
        _check_int("speculative_tokens", self.speculative_tokens, 0, MAX_SPECULATIVE_TOKENS)
        if not isinstance(self.f32_rows, bool):
            raise ConfigError(f"f32_rows must be true or false, got {self.f32_rows!r}")

    @property
    def verify_batch_sizes(self) -> tuple[int, ...]:
        """The batch sizes verify_bs{N} is exported at: the decode sizes up to
        VERIFY_MAX_BATCH, when speculative_tokens is set."""
        if not self.speculative_tokens:
            return ()
        return tuple(b for b in self.decode_batch_sizes if b <= VERIFY_MAX_BATCH)

    def replace(self, **changes: Any) -> ExportOptions:
        return dataclasses.replace(self, **changes)

    def resolve(self, config: ModelConfig, tp: int = 1) -> ExportOptions:
        """The options for `config` with every default filled in, checked against the model."""
        activation = self.activation_dtype or config.dtype
        kv_cache = self.kv_cache_dtype or activation
        if (
            self.f32_rows
            and self.activation_dtype is None
            and config.quantization is None
            and config.dtype in F32_ROWS_WEIGHTS
        ):
            activation, kv_cache = "f32", self.kv_cache_dtype or config.dtype
        resolved = self.replace(
            activation_dtype=activation,
            kv_cache_dtype=kv_cache,
            attention_dtype=self.attention_dtype or DEFAULT_ATTENTION_DTYPE,
            max_seq_len=self.max_seq_len or config.context_length,
            tensor_parallelism_size=tp,
        )
        if self.top_k is not None and self.top_k > config.vocab_size:
            raise ConfigError(f"--top-k must be between 1 and vocab size {config.vocab_size}")
        if resolved.max_seq_len < self.block_seq_stride:
            raise ConfigError(
                f"max sequence length {resolved.max_seq_len} must be at least "
                f"--block-seq-stride {self.block_seq_stride}"
            )
        return resolved

    def cli_args(self) -> list[str]:
        """These options as `irforge export` flags (what `build` shows as the equivalent)."""
        args = [
            "--bs-prefill",
            ",".join(map(str, self.prefill_batch_sizes)),
            "--bs-decode",
            ",".join(map(str, self.decode_batch_sizes)),
            "--block-seq-stride",
            str(self.block_seq_stride),
            "--device-block-count",
            str(self.device_block_count),
        ]
        for flag, dtype in (
            ("--activation-dtype", self.activation_dtype),
            ("--kv-cache-dtype", self.kv_cache_dtype),
            ("--attention-dtype", self.attention_dtype),
        ):
            if dtype is not None:
                args += [flag, dtype]
        if self.attention != DEFAULT_ATTENTION:
            args += ["--attention", self.attention]
        if self.top_k is not None:
            args += ["--top-k", str(self.top_k)]
        if self.max_seq_len:
            args += ["--max-seq-len", str(self.max_seq_len)]
        if self.speculative_tokens:
            args += ["--speculative-tokens", str(self.speculative_tokens)]
        if self.f32_rows:
            args.append("--f32-rows")
        return args


DEFAULTS = ExportOptions()
# `irforge build`'s batch sizes. Prefill is compute-bound: rows beyond 4 gain little and
# multiply its transient memory. Decode reads every weight once per step whatever its rows,
# so one step for up to 32 sequences is how a server keeps up with 32 clients (issue 37).
BUILD_PREFILL_BS = (1, 4)
BUILD_DECODE_BS = (1, 4, 8, 32)
# `irforge build` exports verify_bs{N} for speculative decoding, so turning it on at serve
# time never needs a rebuild; k = 3 gave the best bound on SmolLM2 (bench/speculative.py).
BUILD_SPECULATIVE_TOKENS = 3


@dataclass(frozen=True)
class Compiled:
    vmfb: str
    target: str
    driver: str
    devices: int
    flags: tuple[str, ...]
    compiler: str
    mlir_sha256: str = ""  # the program it was compiled from: a re-export keeps it if unchanged


@dataclass(frozen=True)
class Manifest:
    config: ModelConfig
    options: ExportOptions
    mlir: str = MLIR_NAME
    parameters: tuple[str, ...] = ()  # IRPA files, the metadata file first
    tokenizer: tuple[str, ...] = ()
    compiled: tuple[Compiled, ...] = ()
    versions: dict[str, str] = field(default_factory=dict)
    source: str = ""
    build: dict[str, Any] = field(default_factory=dict)  # `irforge build`'s step records
    # prefill_bs{N} takes start_pos (artifacts.HAS_PREFILL_POSITION); folders exported
    # before it existed lack the key and prefill whole prompts only
    prefill_position: bool = False
    schema_version: int = SCHEMA_VERSION

    def replace(self, **changes: Any) -> Manifest:
        return dataclasses.replace(self, **changes)

    def with_compiled(self, c: Compiled) -> Manifest:
        def same(x: Compiled) -> bool:
            return (x.target, x.devices, x.compiler) == (c.target, c.devices, c.compiler)

        others = tuple(x for x in self.compiled if not same(x))
        return self.replace(compiled=(*others, c))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["config"] = self.config.to_dict()
        return d

    def save(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        with AtomicFile(path) as f:
            f.write(json.dumps(self.to_dict(), indent=2, sort_keys=True).encode() + b"\n")
        return path

    @classmethod
    def load(cls, path: Path) -> Manifest:
        """From a manifest.json, or a folder containing one.

        Raises:
            ManifestError: naming the file and what is wrong.
        """
        path = Path(path)
        if not path.exists():
            raise ManifestError(f"{path}: no such file or folder")
        if path.is_dir():
            path = path / MANIFEST_NAME
        if not path.is_file():
            raise ManifestError(
                f"{path}: no manifest; is this a folder written by `irforge export`?"
            )
        try:
            d = json.loads(path.read_text())
            if not isinstance(d, dict):
                raise ManifestError(f"{path}: not a JSON object")
            if d.get("schema_version") != SCHEMA_VERSION:
                raise ManifestError(
                    f"{path}: schema_version {d.get('schema_version')} is not supported "
                    f"(this irforge reads {SCHEMA_VERSION}); re-run `irforge export`"
                )
            names = [
                d["mlir"],
                *d["parameters"],
                *d["tokenizer"],
                *(c["vmfb"] for c in d["compiled"]),
            ]
            bad = next((n for n in names if not is_bare_name(n)), None)
            if bad is not None:  # an untrusted folder must not point outside itself
                raise ManifestError(f"{path}: {bad!r} is not a file name inside the folder")
            return cls(
                config=ModelConfig.from_dict(d["config"]),
                options=_tuples(ExportOptions, d["options"]),
                mlir=d["mlir"],
                parameters=tuple(d["parameters"]),
                tokenizer=tuple(d["tokenizer"]),
                compiled=tuple(_tuples(Compiled, c) for c in d["compiled"]),
                versions=dict(d["versions"]),
                source=d["source"],
                build=dict(d.get("build") or {}),
                prefill_position=_bool("prefill_position", d.get("prefill_position", False)),
            )
        except ManifestError:
            raise
        except ConfigError as e:
            raise ManifestError(f"{path}: {e}") from e
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ManifestError(f"{path}: malformed manifest ({type(e).__name__}: {e})") from e


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def _tuples(cls: type, d: dict[str, Any]) -> Any:
    """Build a frozen dataclass from JSON, turning lists back into tuples; unknown keys fail."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise KeyError(f"unknown keys {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
