"""Running compiled artifacts with iree.runtime: devices, parameters, pages, generation."""

from irforge.runtime.generate import GenerationResult, generate
from irforge.runtime.pages import PageAllocator
from irforge.runtime.sampling import Sampling
from irforge.runtime.session import Session

__all__ = ["GenerationResult", "PageAllocator", "Sampling", "Session", "generate"]
