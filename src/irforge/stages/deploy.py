"""Kubernetes manifests that serve a built folder: Deployment, Service and InferencePool, or
a KubeRay RayService.

`irforge deploy OUT --kubernetes -o DIR` writes them from OUT's manifest (tensor parallelism,
the targets it was compiled for). The pods run `irforge serve` on the folder, taken from a
PersistentVolumeClaim that holds it or built in the pod by an init container (`irforge build`),
ask for the devices the program spans (`amd.com/gpu`, `nvidia.com/gpu`), answer probes on
/health and are scraped on /metrics. The InferencePool (the Gateway API Inference Extension's,
inference.networking.k8s.io/v1) selects the same pods for an endpoint picker, which routes by
the vLLM series /metrics exposes (engine/metrics.py).

The RayService (KubeRay's ray.io/v1) is the other way to run the same folder: a Ray head that
runs no engine, and one worker pod per replica running an engine replica of irforge's Ray
Serve application (serve/ray_app.py, the app `irforge serve --replicas` runs), with the same
devices, volume or build and probes; Serve routes by prompt prefix between the replicas.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from irforge.artifacts.manifest import Manifest
from irforge.engine.options import EngineOptions
from irforge.errors import ConfigError
from irforge.facts.targets import TARGETS
from irforge.runtime.devices import cache_bytes

APP_LABEL = "app.kubernetes.io/name"
MODELS_DIR = "/models"  # where the folder is mounted (or built) in the pod
PORT_NAME = "http"
EPP_PORT = 9002  # the endpoint picker's ext-proc port in the extension's own charts
GPU_RESOURCE = {"hip": "amd.com/gpu", "cuda": "nvidia.com/gpu"}  # device plugins' names
DEPLOYMENT_FILE, SERVICE_FILE, POOL_FILE = "deployment.yaml", "service.yaml", "inferencepool.yaml"
RAY_SERVICE_FILE = "rayservice.yaml"
RAY_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001}  # KubeRay's defaults
# DNS-1123 label: what Deployment, Service and label values accept
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class DeployOptions:
    """What the manifests need beyond the folder itself."""

    image: str  # an image with irforge installed
    name: str  # Deployment, Service and pool name; the served model id
    replicas: int = 1
    port: int = 8000
    target: str | None = None  # one of the folder's compiled targets (default: a GPU one)
    volume_claim: str | None = None  # a PVC holding the folder under its own name
    build_source: str | None = None  # or: `irforge build` this source in an init container

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(
                f"name {self.name!r} is not a Kubernetes name: lower-case letters, digits "
                "and '-', at most 63, starting and ending with a letter or digit"
            )
        if not self.image.strip() or any(c.isspace() for c in self.image):
            raise ConfigError(f"image {self.image!r} is not an image reference")
        if not 1 <= self.replicas <= 1000:
            raise ConfigError(f"replicas must be from 1 to 1000, got {self.replicas}")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"port must be from 1 to 65535, got {self.port}")
        if (self.volume_claim is None) == (self.build_source is None):
            raise ConfigError(
                "say where the pods get the folder: --volume-claim (a PVC that holds it) or "
                "--build SOURCE (built in each pod before the server starts)"
            )
        if self.volume_claim is not None and not _NAME.match(self.volume_claim):
            raise ConfigError(f"volume claim {self.volume_claim!r} is not a Kubernetes name")
        source = self.build_source
        if source is not None and (shlex.quote(source) != source or source.startswith("-")):
            raise ConfigError(f"build source {source!r} must be a plain name, path or repo id")


@dataclass(frozen=True)
class Manifests:
    files: dict[str, dict[str, Any]]  # file name -> Kubernetes object
    notes: list[str]  # what the user should know, one line each


def manifests(folder: Path, options: DeployOptions) -> Manifests:
    """The Kubernetes objects that serve the built `folder`.

    Raises:
        ManifestError: `folder` is not an exported folder.
        ConfigError: it was compiled for no target, or not for `options.target`.
    """
    folder = Path(folder)
    manifest = Manifest.load(folder)
    target = _pick_target(manifest, options.target, folder)
    tp = manifest.options.tensor_parallelism_size
    labels = {APP_LABEL: options.name, "app.kubernetes.io/part-of": "irforge"}
    selector = {APP_LABEL: options.name}
    notes = []
    if TARGETS[target].driver not in GPU_RESOURCE and options.volume_claim is not None:
        notes.append(
            "the CPU program was compiled for the build machine's CPU; on nodes with another "
            "CPU use --build, which compiles it in the pod"
        )
    served = _Served(folder, manifest, options, target, tp, labels)
    files = {
        DEPLOYMENT_FILE: _deployment(served, selector),
        RAY_SERVICE_FILE: _ray_service(served),
        SERVICE_FILE: {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": options.name, "labels": labels},
            "spec": {
                "selector": selector,
                "ports": [{"name": PORT_NAME, "port": options.port, "targetPort": PORT_NAME}],
            },
        },
        POOL_FILE: {
            "apiVersion": "inference.networking.k8s.io/v1",
            "kind": "InferencePool",
            "metadata": {"name": options.name, "labels": labels},
            "spec": {
                "selector": {"matchLabels": selector},
                "targetPorts": [{"number": options.port}],
                # deployed with the extension's chart (README: running at scale)
                "endpointPickerRef": {
                    "name": f"{options.name}-epp",
                    "port": {"number": EPP_PORT},
                },
            },
        },
    }
    return Manifests(files, notes)


@dataclass(frozen=True)
class _Served:
    """What every manifest is made from: the folder, its manifest, the options, the target
    served, its TP, the labels of what is made."""

    folder: Path
    manifest: Manifest
    o: DeployOptions
    target: str
    tp: int
    labels: dict[str, str]

    @property
    def driver(self) -> str:
        return TARGETS[self.target].driver

    @property
    def path(self) -> str:  # the folder in the pod
        return f"{MODELS_DIR}/{self.folder.resolve().name}"


def _pick_target(manifest: Manifest, wanted: str | None, folder: Path) -> str:
    compiled = [c.target for c in manifest.compiled]
    if not compiled:
        raise ConfigError(f"{folder}: compiled for no target; run `irforge compile` first")
    if wanted is not None:
        if wanted not in compiled:
            raise ConfigError(f"{folder}: compiled for {', '.join(compiled)}, not {wanted}")
        return wanted
    gpus = [t for t in compiled if TARGETS[t].driver in GPU_RESOURCE]
    return (gpus or compiled)[0]


def _deployment(s: _Served, selector: dict[str, str]) -> dict[str, Any]:
    o = s.o
    serve = ["irforge", "serve", s.path, "--host", "0.0.0.0", "--port", str(o.port)]
    serve += ["--device", s.driver, "--model-name", o.name]
    container: dict[str, Any] = {"name": "server", "image": o.image, "command": serve}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": o.name, "labels": s.labels},
        "spec": {
            "replicas": o.replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": s.labels, "annotations": _scrape(o.port)},
                "spec": _engine_pod(s, container),
            },
        },
    }


def _scrape(port: int) -> dict[str, str]:
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics",
    }


def _engine_pod(s: _Served, container: dict[str, Any]) -> dict[str, Any]:
    """The spec of a pod whose `container` serves on `o.port`: the devices, the folder (from
    the volume claim, or built by an init container), probes on /health, time to drain."""
    o = s.o
    health = {"httpGet": {"path": "/health", "port": PORT_NAME}}
    container.update(
        {
            "ports": [*container.get("ports", []), {"name": PORT_NAME, "containerPort": o.port}],
            # loading the weights and the program takes a while on a large model
            "startupProbe": {**health, "periodSeconds": 10, "failureThreshold": 180},
            "readinessProbe": {**health, "periodSeconds": 5},
            "livenessProbe": {**health, "periodSeconds": 20, "failureThreshold": 3},
            "resources": _resources(s),
            "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR}],
        }
    )
    pod: dict[str, Any] = {"containers": [container]}
    if o.volume_claim is not None:
        container["volumeMounts"][0]["readOnly"] = True
        volume = {"persistentVolumeClaim": {"claimName": o.volume_claim, "readOnly": True}}
    else:
        volume = {"emptyDir": {}}
        build = _build_command(s)
        pod["initContainers"] = [
            {
                "name": "build",
                "image": o.image,
                "command": build,
                "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR}],
            }
        ]
    pod["volumes"] = [{"name": "models", **volume}]
    # drain: the server finishes its requests on SIGTERM (serve --drain-timeout)
    pod["terminationGracePeriodSeconds"] = 60
    return pod


def _ray_service(s: _Served) -> dict[str, Any]:
    """A RayService: a head that runs no engine, and `o.replicas` worker pods with one engine
    replica each, serving irforge's Ray Serve application on `o.port`."""
    import yaml

    from irforge.engine.replica_args import APP_NAME, BUILDER, RAY_ENV, replica_args

    o = s.o
    args = replica_args(
        Path(s.path),
        s.manifest,
        EngineOptions(device=s.driver),
        model_name=o.name,
        replicas=o.replicas,
    )
    serve_config = {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": o.port},
        "applications": [
            {
                "name": APP_NAME,
                "import_path": BUILDER,
                "route_prefix": "/",
                "args": args.model_dump(mode="json", exclude_defaults=True),
            }
        ],
    }
    head_ports = [{"name": name, "containerPort": port} for name, port in RAY_PORTS.items()]
    env = [{"name": name, "value": value} for name, value in RAY_ENV.items()]
    head = {
        "name": "ray-head",
        "image": o.image,
        "env": env,
        "ports": [*head_ports, {"name": PORT_NAME, "containerPort": o.port}],
        "resources": {"requests": {"cpu": "1", "memory": "4Gi"}},
    }
    worker = {"name": "ray-worker", "image": o.image, "env": env}
    on_gpu = s.driver in GPU_RESOURCE
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": o.name, "labels": s.labels},
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config, sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": _ray_version(),
                "headGroupSpec": {
                    # the head schedules Serve's controller and proxy, no engine
                    "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                    "template": {"metadata": {"labels": s.labels}, "spec": {"containers": [head]}},
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "engines",
                        "replicas": o.replicas,
                        "minReplicas": o.replicas,
                        "maxReplicas": o.replicas,
                        # one engine replica per pod: on the CPU it asks for one Ray CPU
                        "rayStartParams": {} if on_gpu else {"num-cpus": "1"},
                        "template": {
                            "metadata": {"labels": s.labels, "annotations": _scrape(o.port)},
                            "spec": _engine_pod(s, worker),
                        },
                    }
                ],
            },
        },
    }


def _ray_version() -> str:
    """The Ray the image should hold: this machine's, else the least the `ray` extra accepts."""
    from importlib import metadata

    try:
        return metadata.version("ray")
    except metadata.PackageNotFoundError:
        (wanted,) = [r for r in metadata.requires("irforge") or [] if r.startswith("ray[")]
        return re.split(r">=|,|;", wanted)[1].strip()


def _build_command(s: _Served) -> list[str]:
    """The `irforge build` that remakes the folder in the pod, with the folder's options."""
    o = s.manifest.options
    command = ["irforge", "build", s.o.build_source or "", "-o", s.path]
    command += ["--target", s.target, "--tp", str(s.tp)]
    command += ["--bs-prefill", ",".join(map(str, o.prefill_batch_sizes))]
    command += ["--bs-decode", ",".join(map(str, o.decode_batch_sizes))]
    command += ["--block-seq-stride", str(o.block_seq_stride)]
    command += ["--device-block-count", str(o.device_block_count)]
    return command


def _resources(s: _Served) -> dict[str, Any]:
    """The devices the program spans. On the CPU a memory request: the weights twice (the
    archive mapped and its packed copy), the KV cache, and 2 GiB for a long prefill's
    transients and the runtime (SmolLM2 f16: 2.65 GB peak after a 4-row 512-token prefill,
    bench/RESULTS.md)."""
    manifest = s.manifest
    if s.driver in GPU_RESOURCE:
        return {"limits": {GPU_RESOURCE[s.driver]: str(s.tp)}}
    o = manifest.options
    weights = sum((s.folder / name).stat().st_size for name in manifest.parameters)
    page = manifest.config.page_elements(o.block_seq_stride) * cache_bytes(
        o.kv_cache_dtype or manifest.config.dtype
    )
    gib = -(-(2 * weights + o.device_block_count * page + 2 * 2**30) // 2**30)
    return {"requests": {"cpu": "2", "memory": f"{gib}Gi"}}
