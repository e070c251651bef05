"""The tensor-parallel rule table: which weights split along which dim (shark-ai's layout).

Column-parallel weights split their output rows (each device owns some heads or some FFN
channels); row-parallel weights split their input columns and their partial products are
summed across devices. Everything else is replicated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from irforge.errors import InputError, ShardingError
from irforge.facts.config import ModelConfig
from irforge.facts.quantization import scheme
from irforge.facts.tensor_kinds import expected_shapes, kind_of

MAX_TP = 8


def split_dim(name: str) -> int | None:
    """0 for column-parallel, 1 for row-parallel, None for replicated (tensor_kinds.py)."""
    found = kind_of(name)
    return found[0].split_dim if found else None


def shard_name(name: str, rank: int) -> str:
    return f"{name}.shard.{rank}"


def check_tp(config: ModelConfig, tp: int) -> None:
    """Every split size divides evenly.

    Raises:
        ShardingError: naming the number that `tp` does not divide.
    """
    if not 1 <= tp <= MAX_TP:
        raise ShardingError(f"tensor-parallel size must be between 1 and {MAX_TP}, got {tp}")
    sizes = {
        "attention_head_count_kv": config.attention_head_count_kv,
        "attention_head_count": config.attention_head_count,
        "feed_forward_length": config.feed_forward_length,
        "embedding_length": config.embedding_length,
    }
    for what, size in sizes.items():
        if size % tp:
            raise ShardingError(f"tensor-parallel size {tp} must divide {what}={size}")
    block = scheme(config.quantization).block if config.quantization else None
    if block and tp > 1:  # row-parallel weights split their columns, whole blocks each
        cols = {
            "attention_head_count * head_dim": config.attention_head_count * config.head_dim,
            "feed_forward_length": config.feed_forward_length,
            "embedding_length": config.embedding_length,
        }
        for what, size in cols.items():
            if (size // tp) % block:
                raise ShardingError(
                    f"{config.quantization} blocks of {block}: {what}={size} / {tp} ranks "
                    f"is not a whole number of blocks"
                )


def check_tensors(
    config: ModelConfig, shapes: Mapping[str, Sequence[int]], where: object, tp: int = 1
) -> None:
    """Every weight the config implies is there with its shape (each rank's part when `tp` > 1).

    Checked where weights are first read (convert's source, an archive): a missing or
    misshapen weight would otherwise pass shard, export and compile, and surface only in `run`
    as a page of IREE output.

    Raises:
        InputError: naming the first missing or misshapen tensor.
    """
    want: dict[str, tuple[int, ...]] = {}
    for name, shape in expected_shapes(config).items():
        dim = split_dim(name) if tp > 1 else None
        if dim is None:
            want[name] = shape
            continue
        part = list(shape)
        part[dim] //= tp
        for rank in range(tp):
            want[shard_name(name, rank)] = tuple(part)
    for name, shape in want.items():
        got = shapes.get(name)
        if got is None:
            raise InputError(f"{where}: tensor {name!r} is missing (the config implies it)")
        if tuple(got) != shape:
            raise InputError(
                f"{where}: tensor {name!r} has shape {list(got)}, the config implies {list(shape)}"
            )
