"""The one table between Hugging Face tensor names and irforge's canonical (GGUF-style) names."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from irforge.facts.tensor_kinds import KINDS

if TYPE_CHECKING:
    pass

# HF name pattern -> canonical name; `{i}` is the block index (from the one tensor table).
HF_TO_CANONICAL: dict[str, str] = {k.hf: k.canonical for k in KINDS}

# HF tensors that carry no weights irforge needs (recomputed from the config).
HF_IGNORED = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")


def _compile(table: dict[str, str]) -> list[tuple[re.Pattern[str], str]]:
    out = []
    for src, dst in table.items():
        pattern = re.escape(src).replace(re.escape("{i}"), r"(?P<i>\d+)")
        out.append((re.compile(f"^{pattern}$"), dst))
    return out


_HF_RULES = _compile(HF_TO_CANONICAL)
_CANONICAL_RULES = _compile({v: k for k, v in HF_TO_CANONICAL.items()})


def _lookup(rules: list[tuple[re.Pattern[str], str]], name: str) -> str | None:
    for pattern, dst in rules:
        m = pattern.match(name)
        if m:
            return dst.replace("{i}", m.group("i")) if "i" in pattern.groupindex else dst
    return None


def hf_to_canonical(name: str) -> str | None:
    """Canonical name of an HF tensor, or None when the table does not know it."""
    return _lookup(_HF_RULES, name)


def canonical_to_hf(name: str) -> str | None:
    """HF name of a canonical tensor, or None when the table does not know it."""
    return _lookup(_CANONICAL_RULES, name)
