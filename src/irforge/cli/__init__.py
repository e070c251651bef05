"""Command line entrypoint of irforge: one small module per command over a library call."""
