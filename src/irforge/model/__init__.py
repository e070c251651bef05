"""The paged Llama-family model in plain PyTorch (no IREE), as export traces it."""

from irforge.model.kv_cache import PagedKVCache
from irforge.model.llama import PagedLlama
from irforge.model.options import ModelOptions
from irforge.model.rope import inv_frequencies
from irforge.model.weights import load_archive, load_canonical

__all__ = [
    "ModelOptions",
    "PagedKVCache",
    "PagedLlama",
    "inv_frequencies",
    "load_archive",
    "load_canonical",
]
