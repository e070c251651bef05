"""Rotary embeddings: inverse frequencies (plain, llama3, GGUF factors) and the rotation."""

from __future__ import annotations

import math

import torch

from irforge.facts.config import ModelConfig, RopeScaling


def default_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """theta^(-2i/d) for i < d/2, in float64 so the scaled variants round only once."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64, device="cpu") / head_dim
    return 1.0 / (theta**exponents)


def llama3_inv_freq(inv_freq: torch.Tensor, scaling: RopeScaling) -> torch.Tensor:
    """Llama-3.1's frequency scaling: keep short wavelengths, divide long ones by `factor`.

    Wavelengths between the two thresholds are blended linearly in 1/wavelength, so the
    spectrum stays continuous (Meta's reference and transformers' `llama3` rope type).
    """
    low_wavelen = scaling.original_context_length / scaling.low_freq_factor
    high_wavelen = scaling.original_context_length / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (scaling.original_context_length / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, blended, scaled)


def inv_frequencies(config: ModelConfig) -> torch.Tensor:
    """The [head_dim / 2] float32 inverse frequencies a model's config asks for.

    HF checkpoints carry Llama-3.1 scaling as `rope_scaling`; llama.cpp GGUFs carry the same
    result as per-frequency divisors (`rope_freqs.weight`), which ModelConfig records as
    `rope_freq_factors`. The config guarantees at most one of the two is set. Computed on the
    CPU even under `torch.device("meta")`, since the model keeps them as a real buffer.
    """
    inv_freq = default_inv_freq(config.head_dim, config.rope_freq_base)
    if config.rope_scaling is not None:
        inv_freq = llama3_inv_freq(inv_freq, config.rope_scaling)
    if config.rope_freq_factors is not None:
        factors = torch.tensor(config.rope_freq_factors, dtype=torch.float64, device="cpu")
        inv_freq = inv_freq / factors
    return inv_freq.to(torch.float32)


def inv_freq_tensor(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """[D/2] float32 frequencies as graph ops on an arange, so they exist on any device.

    torch.full/torch.tensor would allocate, and export's meta-device allocations do not
    lower in IREE; a chain of where() over an index vector is folded to a constant.
    """
    index = torch.arange(len(values), device=device)
    out = index.to(torch.float32) * 0.0
    for i, value in enumerate(values):
        out = torch.where(index == i, value, out)
    return out


def rope_tables(
    positions: torch.Tensor, inv_freq: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [N, S, 1, D/2] (float32) for integer positions [N, S].

    Computed from the positions rather than gathered from a precomputed table, so nothing
    depends on a maximum sequence length and the graph stays shape-polymorphic.
    """
    angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq  # [N, S, D/2]
    angles = angles.unsqueeze(2)  # [N, S, 1, D/2]: broadcasts over heads
    return torch.cos(angles), torch.sin(angles)


def apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, interleaved: bool
) -> torch.Tensor:
    """Rotate x [N, S, heads, D] by the angles in cos/sin [N, S, 1, D/2]; same dtype out.

    `interleaved` pairs dims (2i, 2i+1) (GPT-J / llama.cpp q/k row order); otherwise dims
    (i, i + D/2) (NeoX / HF order). Both rotate pair i by frequency i, so a checkpoint in
    either row order gives the same attention scores. Rotation runs in float32.
    """
    # One elementwise expression over x and x with each pair's halves swapped (a flip, which
    # IREE fuses into its neighbours): out = x·cos + swap(x)·(-sin, sin). Splitting x and
    # concatenating the halves cost SmolLM2's decode 6 dispatches a layer for q and k (copies
    # of halves); the tables' widening is shared by every layer and folded once.
    xf = x.float()
    if interleaved:  # pairs (2i, 2i+1)
        swapped = xf.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
        cos_d = torch.stack((cos, cos), dim=-1).flatten(-2)
        sin_d = torch.stack((-sin, sin), dim=-1).flatten(-2)
    else:  # pairs (i, i + D/2)
        swapped = xf.unflatten(-1, (2, -1)).flip(-2).flatten(-2)
        cos_d = torch.cat((cos, cos), dim=-1)
        sin_d = torch.cat((-sin, sin), dim=-1)
    return (xf * cos_d + swapped * sin_d).to(x.dtype)  # [N, S, heads, D]
