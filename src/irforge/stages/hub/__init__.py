"""Model download from the Hugging Face Hub and the registry of seed models."""

from __future__ import annotations

from irforge.facts.presets import ENTRIES, RegistryEntry
from irforge.stages.hub.download import (
    MANIFEST_NAME,
    DownloadedFile,
    DownloadResult,
    download,
    resolve_model,
)
from irforge.stages.hub.registry import REGISTRY, ModelPlan, lookup, plan
from irforge.stages.hub.select import select_files

__all__ = [
    "ENTRIES",
    "MANIFEST_NAME",
    "REGISTRY",
    "DownloadResult",
    "DownloadedFile",
    "ModelPlan",
    "RegistryEntry",
    "download",
    "lookup",
    "plan",
    "resolve_model",
    "select_files",
]
