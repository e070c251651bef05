"""Running compiled artifacts with iree.runtime: devices, parameters, pages, generation."""

from .generate import GenerationResult, generate
from .pages import PageAllocator
from .sampling import Sampling
from .session import Session

__all__ = ["GenerationResult", "PageAllocator", "Sampling", "Session", "generate"]
