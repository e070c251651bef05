"""The names of an artifact folder's files, and the parameter scope its program reads.

export writes these, compile adds its VMFBs, run, serve and shortfin read them: each name is
declared here once.
"""

from __future__ import annotations

from pathlib import Path

ARCHIVE_NAME = "model.irpa"  # plus model.rank{i}.irpa for a TP program
MLIR_NAME = "model.mlir"
SHORTFIN_CONFIG_NAME = "config.json"  # shortfin's, exactly its keys
PARAMETER_SCOPE = "model"  # the scope every external parameter of the program lives in
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
# transformers 5 saves a chat template in its own file, not in tokenizer_config.json
CHAT_TEMPLATE_JINJA = "chat_template.jinja"
CHAT_TEMPLATE_JSON = "chat_template.json"  # {"chat_template": ...}, as processors save it
# Files a tokenizer needs, carried from a source to its archive and on into the folder.
TOKENIZER_FILES = (
    TOKENIZER_JSON,
    TOKENIZER_CONFIG,
    CHAT_TEMPLATE_JINJA,
    CHAT_TEMPLATE_JSON,
    "special_tokens_map.json",
    "tokenizer.model",
    "generation_config.json",
)


def vmfb_name(target: str, compiler: str | None = None) -> str:
    """model.<target>.vmfb: one program per compile target, side by side.

    A program from another IREE release than the installed one (for shortfin 3.9, say) is
    model.<target>.iree<version>.vmfb: each runtime loads only its own release's VMFBs.
    """
    return f"model.{target}.vmfb" if compiler is None else f"model.{target}.iree{compiler}.vmfb"


def tokenizer_files(folder: Path) -> list[Path]:
    """The tokenizer files present in `folder`."""
    return [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]


def copy_tokenizer_files(files: list[Path], dest: Path) -> list[Path]:
    """Copy tokenizer files into the folder `dest` (atomically; a file onto itself is kept)."""
    from irforge.formats.atomic import copy_file

    copied = []
    for f in files:
        target = dest / f.name
        if target.resolve() != f.resolve():
            copy_file(f, target)
        copied.append(target)
    return copied


def folder_file(folder: Path, name: str) -> Path:
    """`folder/name` for a file a manifest names, refused unless it stays inside `folder`.

    Artifact folders travel (CI artifacts, shared disks, downloads), so a manifest is
    untrusted input: a name must be a bare file name, and the file it is must resolve inside
    the folder, symlinks followed (a link to /etc/passwd named model.cpu.vmfb is refused).

    Raises:
        ManifestError: naming the entry.
    """
    from irforge.errors import ManifestError

    if not is_bare_name(name):
        raise ManifestError(f"{folder}: manifest names {name!r}, which is not a file in the folder")
    path = Path(folder) / name
    if path.exists() and path.resolve().parent != Path(folder).resolve():
        raise ManifestError(
            f"{path}: resolves to {path.resolve()}, outside the folder; refusing to open it"
        )
    return path


def is_bare_name(name: object) -> bool:
    """A file name with no folder part: not absolute, no separator, not . or .."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
    )
