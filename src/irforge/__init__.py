"""irforge: from published LLM weights to a running IREE server."""

__version__ = "0.1.0"
