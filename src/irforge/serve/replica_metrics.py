"""One /metrics scrape over all engine replicas: each replica's exposition text, its series
labelled with the replica that wrote them.

Ray Serve routes a scrape like any request, to one replica; a scraper of the Serve port would
see a different engine each time. The front asks every replica instead and merges their
answers here: series keep their names, help and types, and gain a `replica` label (its Serve
replica tag, as in the `x-irforge-replica` header), so `sum by (...)` over replicas gives the
whole application's count, as for the pods of a Deployment.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

REPLICA_LABEL = "replica"
# The request routers of this process (the front's handle's), which know the replicas. Kept
# here, not in serve/ray_app.py: Serve ships the router class there by value, with its own
# copies of that module's globals.
ROUTERS: weakref.WeakSet[Any] = weakref.WeakSet()


def known_replicas() -> list[str]:
    """The replicas this process's routers route to, by Serve replica tag."""
    return sorted({rid.unique_id for router in ROUTERS for rid in router.curr_replicas})


def merge(texts: Mapping[str, str]) -> bytes:
    """The exposition text of every replica's series: replica tag -> that replica's text."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(texts))
    return generate_latest(registry)


class _Merged(Collector):
    def __init__(self, texts: Mapping[str, str]) -> None:
        self.texts = texts

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for replica, text in sorted(self.texts.items()):
            for family in text_string_to_metric_families(text):
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type, family.unit)
                )
                merged.samples += _labelled(family.samples, replica)
        yield from families.values()


def _labelled(samples: Iterable, replica: str) -> list:
    return [s._replace(labels={**s.labels, REPLICA_LABEL: replica}) for s in samples]
