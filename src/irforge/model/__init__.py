"""The paged Llama-family model in plain PyTorch (no IREE), as export traces it."""

from .kv_cache import PagedKVCache
from .llama import PagedLlama
from .options import ModelOptions
from .rope import inv_frequencies
from .weights import load_archive, load_canonical

__all__ = [
    "ModelOptions",
    "PagedKVCache",
    "PagedLlama",
    "inv_frequencies",
    "load_archive",
    "load_canonical",
]
