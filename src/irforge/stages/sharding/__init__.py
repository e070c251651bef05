"""Tensor parallelism: the split rules and the writer of rank files."""

from irforge.facts.sharding import check_tp, shard_name, split_dim
from irforge.stages.sharding.shard import ShardResult, shard, unshard

__all__ = ["ShardResult", "check_tp", "shard", "shard_name", "split_dim", "unshard"]
