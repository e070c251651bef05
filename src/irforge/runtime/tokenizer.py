"""The tokenizer of an artifact folder (tokenizer.json, via the `tokenizers` library)."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError


class Tokenizer:
    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(folder) / "tokenizer.json"
        if not path.is_file():
            raise InputError(
                f"{folder}: no tokenizer.json; pass token ids with --prompt-ids instead"
            )
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception subclasses
            raise InputError(f"{path}: cannot load tokenizer: {e}") from e

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)
