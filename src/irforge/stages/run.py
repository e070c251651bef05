"""run(): one prompt through a built folder on IREE, offline: the library side of `irforge run`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from irforge.artifacts.files import TOKENIZER_JSON
from irforge.errors import ConfigError
from irforge.runtime import Sampling, Session, generate
from irforge.runtime.devices import CPU_DRIVER


@dataclass
class RunResult:
    prompt_ids: list[int]
    tokens: list[int]
    text: str | None  # None when the folder has no tokenizer
    prefill_s: float
    decode_s: float
    decode_tokens_per_s: float
    logits: Any = field(default=None, repr=False)  # [steps, vocab] when asked for

    def timings(self) -> dict[str, float]:
        return {
            "prefill_s": round(self.prefill_s, 6),
            "decode_s": round(self.decode_s, 6),
            "decode_tokens_per_s": round(self.decode_tokens_per_s, 2),
        }


def run(
    folder: Path,
    *,
    prompt: str | None = None,
    prompt_ids: Sequence[int] | None = None,
    max_tokens: int = 32,
    sampling: Sampling | None = None,
    ignore_eos: bool = False,
    device: str = CPU_DRIVER,
    device_ids: list[int] | None = None,
    vmfb: Path | None = None,
    keep_logits: bool = False,
) -> RunResult:
    """Prefill then decode one prompt (text, or token ids) with the folder's program.

    Raises:
        ConfigError, InputError, ManifestError: one line each, as the CLI prints them.

    Example:
        >>> run(Path("out/tiny"), prompt="the quick brown fox", max_tokens=16).text
    """
    from irforge.engine.text import TextCodec

    if (prompt is None) == (prompt_ids is None):
        raise ConfigError("give exactly one of a prompt and prompt ids")
    folder = Path(folder)
    session = Session(folder, device=device, device_ids=device_ids, vmfb=vmfb)
    has_tokenizer = (folder / TOKENIZER_JSON).is_file()
    text_codec = TextCodec(folder) if prompt is not None or has_tokenizer else None
    ids = text_codec.encode(prompt) if prompt is not None and text_codec else list(prompt_ids or ())
    eos = () if ignore_eos else session.config.eos_token_ids
    result = generate(
        session,
        [ids],
        max_tokens=max_tokens,
        sampling=sampling,
        eos_ids=eos,
        keep_logits=keep_logits,
    )
    tokens = result.tokens[0]
    return RunResult(
        prompt_ids=ids,
        tokens=tokens,
        text=text_codec.decode(tokens) if text_codec else None,
        prefill_s=result.prefill_s,
        decode_s=result.decode_s,
        decode_tokens_per_s=result.decode_tokens_per_s,
        logits=result.logits[0] if keep_logits else None,
    )
