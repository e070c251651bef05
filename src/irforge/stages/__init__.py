"""The pipeline's stages: download, convert, shard, export, compile, verify, build, run."""
