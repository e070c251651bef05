"""Conversion of GGUF and safetensors checkpoints to irforge IRPA archives."""

from .convert import ConvertResult, convert

__all__ = ["ConvertResult", "convert"]
