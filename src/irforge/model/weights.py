"""Loading canonical-name (GGUF-style) tensors into a PagedLlama, checked against its config."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from irforge.errors import InputError, UnsupportedModelError
from irforge.facts.config import ModelConfig

if TYPE_CHECKING:
    from irforge.model.llama import PagedLlama

# Tensors whose content the config already carries (GGUF's rope divisors: rope_freq_factors).
IGNORED = frozenset({"rope_freqs.weight"})


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
        target = name  # PagedLlama's parameters have the canonical names
        if name in IGNORED or (tied and target.startswith("output.weight")):
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
        problems.append(f"missing {_list(missing)}")
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
