"""Loading canonical-name (GGUF-style) tensors into a PagedLlama, checked against its config."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from irforge.errors import InputError, UnsupportedModelError
from irforge.facts.config import ModelConfig
from irforge.facts.tensor_kinds import ALL_KINDS

if TYPE_CHECKING:
    from irforge.model.llama import PagedLlama

# Canonical name -> PagedLlama parameter name; `{i}` is the block index.
CANONICAL_TO_MODULE: dict[str, str] = {k.canonical: k.module for k in ALL_KINDS}

# Tensors whose content the config already carries (GGUF's rope divisors: rope_freq_factors).
IGNORED = frozenset({"rope_freqs.weight"})


def module_name(canonical: str) -> str | None:
    """The PagedLlama parameter a canonical tensor loads into, or None if none does."""
    parts = canonical.split(".")
    if len(parts) > 2 and parts[0] == "blk" and parts[1].isdigit():
        pattern = ".".join(["blk", "{i}", *parts[2:]])
        target = CANONICAL_TO_MODULE.get(pattern)
        return None if target is None else target.replace("{i}", parts[1])
    return CANONICAL_TO_MODULE.get(canonical)


_MODULE_TO_CANONICAL = {v: k for k, v in CANONICAL_TO_MODULE.items()}


def canonical_name(module: str) -> str:
    """The canonical tensor name of a PagedLlama parameter (export names parameters so)."""
    parts = module.split(".")
    if len(parts) > 2 and parts[0] == "blk" and parts[1].isdigit():
        pattern = ".".join(["blk", "{i}", *parts[2:]])
        return _MODULE_TO_CANONICAL[pattern].replace("{i}", parts[1])
    return _MODULE_TO_CANONICAL[module]


def _list(names: list[str], limit: int = 8) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(sorted(names)[:limit]) + more


def load_canonical(
    model: PagedLlama,
    tensors: Mapping[str, torch.Tensor],
    *,
    device: torch.device | str | None = None,
) -> None:
    """Replace model's parameters by `tensors` (canonical names), each cast to its parameter's
    dtype (config.dtype, as an archive stores them; a quantized model's int8 weights and f32
    scales stay so).

    Tensors already in that dtype and device are used without a copy. With tied embeddings
    the output projection is token_embd.weight; a stored output.weight is then ignored.

    Raises:
        InputError: a tensor is missing, unknown, of the wrong kind of dtype or shape.
    """
    tied = model.config.tie_word_embeddings
    params = model.state_dict()
    expected = {k: v.shape for k, v in params.items()}
    if tied:
        for name in [k for k in expected if k.startswith("output.weight")]:
            del expected[name]
    state: dict[str, torch.Tensor] = {}
    unknown = []
    for name, tensor in tensors.items():
        target = module_name(name)
        if name in IGNORED or (tied and target is not None and target.startswith("output.weight")):
            continue
        if target not in expected:
            unknown.append(name)
            continue
        tensor = torch.as_tensor(tensor)
        want = params[target].dtype
        if want.is_floating_point and not tensor.is_floating_point():
            raise InputError(f"tensor {name} has dtype {tensor.dtype}, expected floating point")
        if not want.is_floating_point and tensor.dtype != want:
            raise InputError(
                f"tensor {name} has dtype {tensor.dtype}, the quantized model stores it as {want}"
            )
        if tuple(tensor.shape) != tuple(expected[target]):
            raise InputError(
                f"tensor {name} has shape {tuple(tensor.shape)}, the model config expects "
                f"{tuple(expected[target])}"
            )
        state[target] = tensor.to(device=device, dtype=want)
    missing = sorted(set(expected) - set(state))
    problems = []
    if missing:
        canonical = {v: k for k, v in _canonical_names(model.config.block_count).items()}
        problems.append(f"missing {_list([canonical.get(m, m) for m in missing])}")
    if unknown:
        problems.append(f"unknown {_list(unknown)}")
    if problems:
        raise InputError("weights do not match the model config: " + "; ".join(problems))
    if tied:
        state["output.weight"] = state["token_embd.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if tied:  # assign=True wrapped each entry in its own Parameter; share one again
        model.output.weight = model.token_embd.weight
    model.requires_grad_(False)


def _canonical_names(block_count: int) -> dict[str, str]:
    """Every canonical name of a model with block_count blocks -> its module name."""
    out = {}
    for pattern, target in CANONICAL_TO_MODULE.items():
        blocks = range(block_count) if "{i}" in pattern else [None]
        for i in blocks:
            out[pattern.replace("{i}", str(i))] = target.replace("{i}", str(i))
    return out


def load_archive(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The config and canonical-name tensors of an irforge IRPA (as `irforge convert` writes).

    Raises:
        InputError: the archive is malformed or has no model config.
        UnsupportedModelError: the archive is tensor-parallel (rank files).
    """
    from irforge.artifacts.archive import open_archive
    from irforge.formats.tensor_ref import read_tensor

    archive = open_archive(Path(path))
    config = archive.require_config()
    if archive.rank_paths:
        raise UnsupportedModelError(
            f"{path}: tensor-parallel archives are not supported by the PyTorch model yet; "
            "load the unsharded archive"
        )
    return config, {name: read_tensor(ref) for name, ref in archive.tensors.items()}
