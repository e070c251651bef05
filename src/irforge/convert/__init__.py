"""Conversion of GGUF and safetensors checkpoints to irforge IRPA archives."""
