"""Compile target presets: names users know (cpu, mi300x, sm_90) to iree-compile flags."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from irforge.errors import ConfigError, ToolNotFoundError

# Data tiling packs each matmul's operands into the CPU's register tiles (weights once, at
# load) and runs mmt4d ukernels: 1B-shaped prefill 2.1-2.3x faster on IREE 3.13 (bench/RESULTS.md).
# Verified on 3.13 only. It costs a packed copy of the weights in memory; pass
# `--iree-flag=--iree-global-opt-data-tiling=false` to go without (the last occurrence wins).
CPU_DATA_TILING = ["--iree-global-opt-data-tiling", "--iree-llvmcpu-enable-ukernels=mmt4d"]


# Weight dtypes whose matmuls llvm-cpu runs faster on f32 rows than on rows of their own
# dtype (IREE 3.13, data tiling; ExportOptions.f32_rows): its f16 x f16 tile converts every
# broadcast row element, the f32 x f16 one (model/widening.py) broadcasts it as it is.
# SmolLM2 decode steps of 4-32 rows 1.1-1.6x faster, prefill within 5% (bench/RESULTS.md).
F32_ROWS_WEIGHTS = ("f16",)


@dataclass(frozen=True)
class Target:
    """One compile target: the HAL device kind, its backend flags, and the runtime driver."""

    name: str  # canonical name, used in file names: model.<name>.vmfb
    device: str  # HAL target device kind: local, hip, cuda, vulkan
    driver: str  # runtime driver that runs the result: local-task, hip, cuda
    arch: str | None = None  # gfx942, sm_90, ...
    description: str = ""
    # fp8 element types (weights or KV cache) IREE compiles for it, measured with 3.13 on the
    # tiny model: llvm-cpu emulates both; gfx942 takes only its own e4m3fnuz ("F8E4M3FN types
    # are not supported on gfx942 (MI-300) or older"); CUDA fails to translate either.
    fp8: tuple[str, ...] = ()
    # builds for it alone multiply f16 weights by f32 rows (F32_ROWS_WEIGHTS)
    f32_rows: bool = False

    def flags(self, devices: int = 1, compiler_version: tuple[int, int] = (3, 9)) -> list[str]:
        """iree-compile flags for `devices` devices of this target."""
        if devices < 1:
            raise ConfigError(f"device count must be at least 1, got {devices}")
        if devices == 1:
            out = [f"--iree-hal-target-device={self.device}"]
        else:
            out = [f"--iree-hal-target-device={self.device}[{i}]" for i in range(devices)]
        if self.device == "local":
            out += [
                "--iree-hal-local-target-device-backends=llvm-cpu",
                "--iree-llvmcpu-target-cpu=host",
            ]
            if compiler_version >= (3, 13):
                out += CPU_DATA_TILING
        elif self.device == "hip":
            # IREE 3.9-3.10 spell the ROCm architecture flag --iree-hip-target; 3.11 renamed it.
            flag = "--iree-hip-target" if compiler_version < (3, 11) else "--iree-rocm-target"
            out += [
                f"{flag}={self.arch}",
                # shark-ai's MI300 flags for LLMs (docs/shortfin/llm/user/llama_serving.md).
                "--iree-hal-indirect-command-buffers=true",
                "--iree-stream-resource-memory-model=discrete",
                "--iree-hal-memoization=true",
            ]
        elif self.device == "cuda":
            out.append(f"--iree-cuda-target={cuda_compile_arch(self.arch or '')}")
        if devices > 1:
            out.append("--iree-stream-affinity-solver-max-iterations=1024")
        return out


# IREE's GPU target table (KnownTargets.cpp) has no Hopper entry up to 3.13 at least (sm_89 arrived
# in 3.13): `--iree-cuda-target=sm_90` fails with "missing GPU target in #hal.executable.target".
# IREE embeds PTX, not machine code, and the CUDA driver JIT-compiles PTX for any newer chip, so a
# Hopper program is compiled for the newest chip the table knows in every release we support.
_CUDA_COMPILE_ARCH = {"sm_90": "sm_80"}


def cuda_compile_arch(arch: str) -> str:
    """The arch passed to iree-compile for a CUDA chip: itself, or the PTX baseline it runs."""
    return _CUDA_COMPILE_ARCH.get(arch, arch)


_TARGETS = [
    Target(
        "cpu",
        "local",
        "local-task",
        description="this machine's CPU (llvm-cpu, host)",
        fp8=("f8_e4m3fn", "f8_e4m3fnuz"),
        f32_rows=True,
    ),
    Target(
        "gfx942", "hip", "hip", "gfx942", "AMD Instinct MI300X / MI300A / MI325X", ("f8_e4m3fnuz",)
    ),
    Target("gfx90a", "hip", "hip", "gfx90a", "AMD Instinct MI250X / MI210"),
    Target("gfx1100", "hip", "hip", "gfx1100", "AMD Radeon RX 7900 XTX / PRO W7900"),
    Target("sm_80", "cuda", "cuda", "sm_80", "NVIDIA A100"),
    Target("sm_90", "cuda", "cuda", "sm_90", "NVIDIA H100 / H200 (sm_80 PTX, JIT by the driver)"),
]
TARGETS = {t.name: t for t in _TARGETS}
ALIASES = {
    "host": "cpu",
    "llvm-cpu": "cpu",
    "mi300x": "gfx942",
    "mi300": "gfx942",
    "mi325x": "gfx942",
    "mi250": "gfx90a",
    "mi250x": "gfx90a",
    "a100": "sm_80",
    "h100": "sm_90",
    "h200": "sm_90",
}


def check_fp8(target: Target, uses: dict[str, str]) -> None:
    """Refuse, before compiling, a program whose fp8 types the target cannot compile.

    `uses`: what -> dtype-table name, e.g. {"weights": "f8_e4m3fn", "KV cache": "f8_e4m3fnuz"}.

    Raises:
        ConfigError: naming the part, its type and what this target takes instead.
    """
    for what, dtype in uses.items():
        if dtype.startswith("f8") and dtype not in target.fp8:
            takes = " or ".join(target.fp8) if target.fp8 else "no fp8 type"
            raise ConfigError(
                f"the program's {what} are {dtype}, which IREE does not compile for "
                f"{target.name} (it takes {takes}); rebuild them in another type "
                "(fp8-fnuz for gfx942, int8 or a float dtype elsewhere)"
            )


def get_target(name: str) -> Target:
    """The preset for a target name or alias (case-insensitive).

    Raises:
        ConfigError: listing the known names.
    """
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in TARGETS:
        known = ", ".join([*TARGETS, *ALIASES])
        raise ConfigError(f"unknown target {name!r}; known targets: {known}")
    return TARGETS[key]


def compiler_version(binary: str | None = None) -> tuple[int, int]:
    """(major, minor) of the installed iree-base-compiler, or of the iree-compile at `binary`.

    Raises:
        ToolNotFoundError: `binary` does not run or does not say an IREE compiler version.
    """
    if binary is not None:
        return _binary_version(binary)
    return _package_version("iree-base-compiler")


def runtime_version() -> tuple[int, int]:
    """(major, minor) of the installed iree-base-runtime: it loads only VMFBs of its own release."""
    return _package_version("iree-base-runtime")


def version_text(version: tuple[int, int]) -> str:
    return ".".join(map(str, version))


def _package_version(package: str) -> tuple[int, int]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        parts = version(package).split(".")
        return int(parts[0]), int(parts[1])
    except (PackageNotFoundError, ValueError, IndexError):
        return (0, 0)


def _binary_version(binary: str) -> tuple[int, int]:
    try:
        done = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ToolNotFoundError(f"cannot run {binary}: {e}") from None
    found = re.search(r"IREE compiler version (\d+)\.(\d+)", done.stdout + done.stderr)
    if found is None:
        raise ToolNotFoundError(f"{binary} does not print an IREE compiler version")
    return int(found[1]), int(found[2])
