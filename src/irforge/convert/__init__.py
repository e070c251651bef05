"""Conversion of GGUF and safetensors checkpoints to irforge IRPA archives."""

from .converter import ConvertResult, convert

__all__ = ["ConvertResult", "convert"]
