"""Which files of a Hub repo irforge downloads: weights, config and tokenizer, never pickles."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase

from irforge.artifacts.files import TOKENIZER_FILES
from irforge.errors import DownloadError

FORMATS = ("safetensors", "gguf")

SAFETENSORS_PATTERNS = ("*.safetensors", "*.safetensors.index.json")
METADATA_PATTERNS = ("config.json", *TOKENIZER_FILES)
# Loading a pickle runs arbitrary code; these come only with allow_pickle.
PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".pkl", ".pickle", ".ckpt")
PICKLE_WEIGHT_PATTERNS = ("*.bin", "*.bin.index.json", "*.pth", "*.pt")
# Meta's repos carry the consolidated .pth checkpoint under original/ beside the HF weights.
DEFAULT_EXCLUDE = ("original/*",)

_SPLIT_SUFFIX = re.compile(r"-\d{5}-of-\d{5}$")  # llama.cpp's split GGUF parts


def is_pickle(name: str) -> bool:
    return name.lower().endswith(PICKLE_SUFFIXES)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    # Same rule as huggingface_hub's allow_patterns: fnmatch on the whole path, "dir/" = "dir/*".
    return any(fnmatchcase(name, p + "*" if p.endswith("/") else p) for p in patterns)


def _short(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


def select_files(
    names: Iterable[str],
    *,
    where: str,
    format: str = "safetensors",
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    quant: str | None = None,
    allow_pickle: bool = False,
) -> tuple[list[str], list[str]]:
    """Choose the files to download from a repo's file list.

    Args:
        names: every file path in the repo at the resolved revision.
        where: how to name the repo in messages, e.g. "org/model@abc123".
        format: "safetensors" (weights + config + tokenizer) or "gguf" (one GGUF file,
            split parts included, + config/tokenizer files if the repo has them).
        include: globs replacing the default selection (with gguf: the non-GGUF files).
        exclude: globs removed from the selection.
        quant: with gguf, the quantization to pick (e.g. f16, q8_0, Q4_K_M).
        allow_pickle: also allow .bin/.pth pickle files (and fall back to pickle weights
            when a repo has no safetensors).

    Returns:
        (the sorted file names to download, notes for the user).

    Raises:
        DownloadError: nothing usable matches, or the GGUF quantization is missing or ambiguous.
    """
    names = sorted(names)
    exclude = tuple(exclude) if include else tuple(exclude) + DEFAULT_EXCLUDE
    kept = [n for n in names if not _matches(n, exclude)]
    notes: list[str] = []
    if format == "gguf":
        ggufs = [n for n in kept if n.lower().endswith(".gguf")]
        extra = [n for n in kept if n not in ggufs and _matches(n, include or METADATA_PATTERNS)]
        chosen = _choose_gguf(ggufs, quant, where) + extra
    elif format == "safetensors":
        chosen = _safetensors_selection(kept, where, include, allow_pickle)
    else:
        raise DownloadError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")

    pickles = [n for n in chosen if is_pickle(n)]
    if pickles and not allow_pickle:
        chosen = [n for n in chosen if n not in pickles]
        if not chosen:
            raise DownloadError(
                f"only pickle files of {where} match ({_short(pickles)}): loading a pickle can "
                "run code; pass --allow-pickle to download them"
            )
        notes.append(
            f"skipped {len(pickles)} pickle file(s) ({_short(pickles)}): loading a pickle can "
            "run code; pass --allow-pickle to download them"
        )
    if not chosen:
        wanted = ", ".join(include) if include else "the default selection"
        raise DownloadError(f"no file in {where} matches {wanted}")
    return sorted(chosen), notes


def _safetensors_selection(
    kept: list[str], where: str, include: Sequence[str], allow_pickle: bool
) -> list[str]:
    if include:
        return [n for n in kept if _matches(n, include)]
    chosen = [n for n in kept if _matches(n, SAFETENSORS_PATTERNS + METADATA_PATTERNS)]
    if any(n.endswith(".safetensors") for n in chosen):
        return chosen
    pickled = [n for n in kept if _matches(n, PICKLE_WEIGHT_PATTERNS)]
    if pickled and allow_pickle:
        return chosen + pickled
    hints = []
    if pickled:
        hints.append(f"it has pickle weights ({_short(pickled)}): pass --allow-pickle to take them")
    if any(n.lower().endswith(".gguf") for n in kept):
        hints.append("it has GGUF files: pass --format gguf")
    hint = f" ({'; '.join(hints)})" if hints else ""
    raise DownloadError(f"{where} has no safetensors weights{hint}")


def gguf_quant_label(name: str) -> str:
    """The quantization part of a GGUF file name: 'Llama-3.1-8B-Q4_K_M.gguf' -> 'Q4_K_M'."""
    stem = _SPLIT_SUFFIX.sub("", name.rsplit("/", 1)[-1][: -len(".gguf")])
    return re.split(r"[.\-]", stem)[-1]


def _choose_gguf(ggufs: list[str], quant: str | None, where: str) -> list[str]:
    if not ggufs:
        raise DownloadError(f"{where} has no .gguf files (drop --format gguf for safetensors)")
    # Parts of one split GGUF (x-00001-of-00003.gguf, ...) are one choice.
    groups: dict[str, list[str]] = {}
    for name in ggufs:
        groups.setdefault(_SPLIT_SUFFIX.sub("", name[: -len(".gguf")]), []).append(name)
    available = ", ".join(sorted({gguf_quant_label(g[0]) for g in groups.values()}, key=str.lower))
    if quant is None:
        if len(groups) == 1:
            return next(iter(groups.values()))
        raise DownloadError(
            f"{where} has {len(groups)} GGUF files: choose one with --quant "
            f"(available: {available})"
        )
    # The quant must stand alone in the name: "f16" matches "model.f16.gguf", not "bf16".
    word = re.compile(rf"(?<![a-z0-9]){re.escape(quant.lower())}(?![a-z0-9])")
    hits = [g for stem, g in groups.items() if word.search(stem.rsplit("/", 1)[-1].lower())]
    exact = [g for g in hits if gguf_quant_label(g[0]).lower() == quant.lower()]
    if len(hits) > 1 and len(exact) == 1:
        hits = exact
    if not hits:
        raise DownloadError(
            f"no GGUF file in {where} has quantization {quant!r} (available: {available})"
        )
    if len(hits) > 1:
        names = [g[0] for g in hits]
        raise DownloadError(
            f"quantization {quant!r} matches {len(hits)} GGUF files in {where} ({_short(names)}): "
            "pass a more specific --quant"
        )
    return hits[0]
