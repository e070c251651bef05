"""What irforge's Ray Serve application is built from: `ReplicaArgs`, the args of the
application builder (serve/ray_app.py), which `irforge serve --replicas` and a RayService
manifest (stages/deploy.py) both derive from a folder with `replica_args`. No Ray here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from irforge.artifacts.manifest import Manifest
from irforge.engine.options import DRAIN_TIMEOUT_S, EngineOptions
from irforge.errors import InputError
from irforge.runtime.devices import CPU_DRIVER, normalize_driver

APP_NAME = "irforge"
# Ray's environment for irforge's app, wherever it runs: Serve's own throughput settings (logs
# buffered, gRPC between replicas; bench/RESULTS.md) but not their direct ingress, which holds a
# SIGTERM's shutdown for 30 s; and no usage report to Ray's servers unless the user asks for it
RAY_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}
BUILDER = "irforge.serve.ray_app:build_app"  # the application builder's import path
Routing = Literal["prefix", "load"]
DEFAULT_ROUTING: Routing = "prefix"


class ReplicaArgs(BaseModel):
    """What the application is built from (a RayService's `args`, checked by Ray on deploy)."""

    model_config = ConfigDict(extra="forbid")

    folder: str  # the built folder, at this path on every node that runs an engine replica
    model_name: str
    engine: dict[str, Any] = Field(default_factory=dict)  # EngineOptions' fields
    replicas: int = Field(1, ge=1)
    min_replicas: int | None = Field(None, ge=1)  # both set: autoscale on queue depth
    max_replicas: int | None = Field(None, ge=1)
    num_gpus: int = Field(0, ge=0)  # per replica: the program's TP on a GPU; 0: one CPU
    batch: int = Field(1, ge=1)  # sequences a replica decodes at once: its target load
    routing: Routing = DEFAULT_ROUTING
    drain_timeout: float = Field(DRAIN_TIMEOUT_S, ge=0)

    @model_validator(mode="after")
    def _check(self) -> ReplicaArgs:
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("give both min_replicas and max_replicas to autoscale")
        if self.min_replicas is not None and self.replicas != 1:
            raise ValueError("give replicas, or min_replicas and max_replicas: not both")
        if self.min_replicas is not None and self.min_replicas > (self.max_replicas or 0):
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        EngineOptions(**self.engine_options())  # its own checks, before any replica starts
        return self

    def engine_options(self) -> dict[str, Any]:
        ids = self.engine.get("device_ids")
        return {**self.engine, "device_ids": tuple(ids) if ids is not None else None}


def replica_args(
    folder: Path,
    manifest: Manifest,
    options: EngineOptions,
    *,
    model_name: str,
    replicas: int = 1,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    routing: str = DEFAULT_ROUTING,
    drain_timeout: float = DRAIN_TIMEOUT_S,
) -> ReplicaArgs:
    """The application's args for serving `folder` (whose manifest is `manifest`): each
    replica asks for the program's TP GPUs on a GPU driver, else one CPU, and its target load
    is the program's largest decode batch. Bad values (from a command line or a manifest's
    args) are one InputError naming the field."""
    engine = dataclasses.asdict(options)
    if engine["device_ids"] is not None:
        engine["device_ids"] = list(engine["device_ids"])
    on_cpu = normalize_driver(options.device) == CPU_DRIVER
    try:
        return ReplicaArgs(
            folder=str(folder),
            model_name=model_name,
            engine=engine,
            replicas=replicas,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            num_gpus=0 if on_cpu else manifest.options.tensor_parallelism_size,
            batch=max(manifest.options.decode_batch_sizes),
            routing=routing,  # type: ignore[arg-type]  # pydantic checks it, as the rest
            drain_timeout=drain_timeout,
        )
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(map(str, first["loc"]))
        message = first["msg"].removeprefix("Value error, ")  # a validator's own words
        raise InputError(f"{where + ': ' if where else ''}{message}") from None
