"""Validating readers for GGUF, safetensors and IRPA, and a streaming IRPA writer.

Every reader yields TensorRef records (name, dtype, shape and where the bytes are) without
reading tensor data; `read_tensor` materializes one tensor when a caller needs it.
"""

from irforge.formats.tensor_ref import TensorRef, read_tensor

__all__ = ["TensorRef", "read_tensor"]
