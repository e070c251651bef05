"""The one exception hierarchy of irforge; the CLI maps these to one-line messages.

Every message says what is wrong (with the offending value and the file) and, where there
is one, what to do about it.
"""

from __future__ import annotations


class ToolchainError(Exception):
    """Base class for expected, user-facing failures (exit code 2 at the CLI)."""


class InputError(ToolchainError):
    """A file or folder given as input is missing, malformed, truncated or inconsistent."""


class UnsupportedModelError(ToolchainError):
    """The model's architecture, dtype, quantization or hyperparameters are not supported."""


class ConfigError(ToolchainError):
    """Hyperparameters are missing or inconsistent."""


class ManifestError(ToolchainError):
    """A manifest.json cannot be read or does not match what is on disk."""


class ShardingError(ToolchainError):
    """A tensor-parallel size does not fit the model, or rank files do not match."""


class OutputError(ToolchainError):
    """An output path cannot be written."""


class ToolNotFoundError(ToolchainError):
    """An external tool (e.g. iree-compile) is not installed."""


class CompileError(ToolchainError):
    """iree-compile failed; the message carries its first error and the log path."""


class DownloadError(ToolchainError):
    """A model cannot be downloaded: gated, missing, offline, unreachable or nothing to select."""
