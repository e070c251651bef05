"""Tensor parallelism: the writer of rank files (the split rules are facts/sharding.py)."""

from irforge.facts.sharding import check_tp, shard_name, split_dim
from irforge.stages.sharding.shard import ShardResult, shard, unshard

__all__ = ["ShardResult", "check_tp", "shard", "shard_name", "split_dim", "unshard"]
