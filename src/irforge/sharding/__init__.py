"""Tensor parallelism: the split rules and the writer of rank files."""

from .shard import ShardResult, shard, unshard
from .spec import check_tp, shard_name, split_dim

__all__ = ["ShardResult", "check_tp", "shard", "shard_name", "split_dim", "unshard"]
