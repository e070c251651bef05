"""Conversion of GGUF and safetensors checkpoints to irforge IRPA archives."""

from irforge.stages.convert.converter import ConvertResult, convert

__all__ = ["ConvertResult", "convert"]
