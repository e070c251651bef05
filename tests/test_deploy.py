"""irforge deploy --kubernetes: manifests checked against Kubernetes' own API types (the
`kubernetes` client's models, generated from the API's OpenAPI spec), the Gateway API
Inference Extension's InferencePool CRD schema and KubeRay's RayService CRD schema (both
vendored in tests/data/k8s), and the RayService's Serve config against Ray's own schema."""

from __future__ import annotations

import functools
import gzip
import importlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from irforge.cli.main import app

runner = CliRunner()
K8S = Path(__file__).parent / "data" / "k8s"
CRD = K8S / "inference.networking.k8s.io_inferencepools.yaml"
RAY_CRD = K8S / "ray.io_rayservices.yaml.gz"
FILES = {"deployment.yaml", "service.yaml", "inferencepool.yaml", "rayservice.yaml"}
IMAGE = "registry.example/irforge:0.1"
PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float)}


def check_k8s(value: Any, type_name: str, where: str = "") -> None:
    """`value` is a valid `type_name` (a kubernetes client model name like V1Deployment, or
    its notation for lists, maps and primitives): every key is a field of the type, every
    value of the field's type, every required field present."""
    import kubernetes.client as k

    if m := re.fullmatch(r"[Ll]ist\[(.+)\]", type_name):
        assert isinstance(value, list), f"{where}: not a list"
        for i, item in enumerate(value):
            check_k8s(item, m[1], f"{where}[{i}]")
        return
    if m := re.fullmatch(r"dict\(str, (.+)\)|Dict\[str, (.+)\]", type_name):
        assert isinstance(value, dict), f"{where}: not a map"
        for key, item in value.items():
            check_k8s(item, m[1] or m[2], f"{where}.{key}")
        return
    if type_name == "object":  # IntOrString, Quantity and the like
        assert isinstance(value, str | int), f"{where}: {value!r}"
        return
    if type_name in PRIMITIVES:
        ok = isinstance(value, PRIMITIVES[type_name]) and not (
            isinstance(value, bool) and type_name != "bool"
        )
        assert ok, f"{where}: {value!r} is not {type_name}"
        return
    model = getattr(k, type_name)
    assert isinstance(value, dict), f"{where}: {type_name} must be a mapping"
    fields = {json_key: attr for attr, json_key in model.attribute_map.items()}
    for key, item in value.items():
        assert key in fields, f"{where}: {type_name} has no field {key!r}"
        check_k8s(item, model.openapi_types[fields[key]], f"{where}.{key}")
    # the model's own constructor refuses a missing required field
    model(**{fields[key]: item for key, item in value.items()})


def strict(schema: Any) -> Any:
    """The CRD's schema with unknown fields refused (Kubernetes prunes them silently, so one
    in irforge's manifest would be a field that does nothing)."""
    if isinstance(schema, dict):
        out = {key: strict(item) for key, item in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@functools.cache
def crd_schema(text: str) -> dict[str, Any]:
    crd = yaml.safe_load(text)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return strict(version["schema"]["openAPIV3Schema"])


def pool_schema() -> dict[str, Any]:
    return crd_schema(CRD.read_text())


def check_ray_service(service: dict[str, Any]) -> dict[str, Any]:
    """`service` is valid for KubeRay's CRD, its pods for Kubernetes, its Serve config for
    Ray and its app's args for irforge's builder; returns the application's config."""
    jsonschema.validate(service, crd_schema(gzip.decompress(RAY_CRD.read_bytes()).decode()))
    cluster = service["spec"]["rayClusterConfig"]
    check_k8s(cluster["headGroupSpec"]["template"], "V1PodTemplateSpec")
    for group in cluster["workerGroupSpecs"]:
        check_k8s(group["template"], "V1PodTemplateSpec")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    (application,) = config["applications"]
    module, name = application["import_path"].split(":")
    from irforge.engine.replica_args import ReplicaArgs

    ReplicaArgs(**application["args"])
    if importlib.util.find_spec("ray") is not None:  # the `ray` extra: Ray's own checks too
        from ray.serve.schema import ServeDeploySchema

        ServeDeploySchema(**config)
        assert callable(getattr(importlib.import_module(module), name))
    return application


def built(tmp_path: Path, llama_artifacts: Path, targets: dict[str, str], tp: int = 1) -> Path:
    """A copy of the tiny folder's manifest and weights, recorded as compiled for `targets`
    (name -> driver) at tensor parallelism `tp`."""
    folder = tmp_path / "Tiny_Llama"
    folder.mkdir()
    manifest = json.loads((llama_artifacts / "manifest.json").read_text())
    for name in manifest["parameters"]:
        shutil.copy(llama_artifacts / name, folder / name)
    manifest["compiled"] = [
        {
            "vmfb": f"model.{t}.vmfb",
            "target": t,
            "driver": d,
            "devices": tp,
            "flags": [],
            "compiler": "3.13",
        }  # fmt: skip
        for t, d in targets.items()
    ]
    manifest["options"]["tensor_parallelism_size"] = tp
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def deploy(folder: Path, out: Path, *options: str) -> tuple[int, str, dict[str, Any]]:
    args = ["deploy", str(folder), "--kubernetes", "-o", str(out), "--image", IMAGE, *options]
    result = runner.invoke(app, args)
    files = {f.name: yaml.safe_load(f.read_text()) for f in out.glob("*.yaml")}
    return result.exit_code, result.output, files


@pytest.mark.iree
def test_gpu_manifests_are_valid_and_ask_for_the_programs_devices(
    tmp_path: Path, llama_artifacts: Path
) -> None:
    folder = built(tmp_path, llama_artifacts, {"cpu": "local-task", "gfx942": "hip"}, tp=2)
    code, output, files = deploy(
        folder, tmp_path / "k8s", "--replicas", "3", "--volume-claim", "models"
    )
    assert code == 0, output
    assert set(files) == FILES
    check_k8s(files["deployment.yaml"], "V1Deployment")
    check_k8s(files["service.yaml"], "V1Service")
    jsonschema.validate(files["inferencepool.yaml"], pool_schema())

    d = files["deployment.yaml"]
    assert d["metadata"]["name"] == "tiny-llama" and d["spec"]["replicas"] == 3
    pod = d["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    assert server["resources"] == {"limits": {"amd.com/gpu": "2"}}  # TP 2 on gfx942
    assert server["command"] == [
        "irforge", "serve", "/models/Tiny_Llama", "--host", "0.0.0.0", "--port", "8000",
        "--device", "hip", "--model-name", "tiny-llama",
    ]  # fmt: skip
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert pod["volumes"] == [
        {"name": "models", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}}
    ]
    annotations = d["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    labels = d["spec"]["template"]["metadata"]["labels"]
    selector = files["inferencepool.yaml"]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert files["service.yaml"]["spec"]["selector"].items() <= labels.items()

    application = check_ray_service(files["rayservice.yaml"])
    assert application["args"] == {
        "folder": "/models/Tiny_Llama", "model_name": "tiny-llama", "engine": {
            **application["args"]["engine"], "device": "hip"}, "replicas": 3, "num_gpus": 2,
        "batch": max(json.loads((folder / "manifest.json").read_text())["options"][
            "decode_batch_sizes"]),
    }  # fmt: skip
    (workers,) = files["rayservice.yaml"]["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert workers["replicas"] == 3
    worker = workers["template"]["spec"]["containers"][0]
    assert worker["resources"] == server["resources"]
    assert worker["readinessProbe"] == server["readinessProbe"]
    assert workers["template"]["spec"]["volumes"] == pod["volumes"]


@pytest.mark.iree
def test_cpu_pods_build_the_folder_with_its_own_options(
    tmp_path: Path, llama_artifacts: Path
) -> None:
    folder = built(tmp_path, llama_artifacts, {"cpu": "local-task"})
    code, output, files = deploy(
        folder, tmp_path / "k8s", "--build", "smollm2", "--name", "smol", "--port", "9000"
    )
    assert code == 0, output
    check_k8s(files["deployment.yaml"], "V1Deployment")
    jsonschema.validate(files["inferencepool.yaml"], pool_schema())
    pod = files["deployment.yaml"]["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    options = json.loads((folder / "manifest.json").read_text())["options"]
    assert init["command"] == [
        "irforge", "build", "smollm2", "-o", "/models/Tiny_Llama", "--target", "cpu",
        "--tp", "1", "--bs-prefill", ",".join(map(str, options["prefill_batch_sizes"])),
        "--bs-decode", ",".join(map(str, options["decode_batch_sizes"])),
        "--block-seq-stride", str(options["block_seq_stride"]),
        "--device-block-count", str(options["device_block_count"]),
    ]  # fmt: skip
    assert pod["volumes"] == [{"name": "models", "emptyDir": {}}]
    server = pod["containers"][0]
    assert "--device" in server["command"] and "local-task" in server["command"]
    assert server["resources"]["requests"]["memory"].endswith("Gi")
    assert files["inferencepool.yaml"]["spec"]["targetPorts"] == [{"number": 9000}]
    application = check_ray_service(files["rayservice.yaml"])
    assert application["args"]["engine"]["device"] == "local-task"
    (workers,) = files["rayservice.yaml"]["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert workers["rayStartParams"] == {"num-cpus": "1"}  # one engine replica a pod
    assert workers["template"]["spec"]["initContainers"] == pod["initContainers"]
    serve_config = yaml.safe_load(files["rayservice.yaml"]["spec"]["serveConfigV2"])
    assert serve_config["http_options"]["port"] == 9000


@pytest.mark.iree
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--volume-claim", "m", "--build", "smollm2"], "say where the pods get the folder"),
        ([], "say where the pods get the folder"),
        (["--build", "x", "--name", "Not_A_Name"], "is not a Kubernetes name"),
        (["--build", "x", "--target", "gfx942"], "compiled for cpu, not gfx942"),
        (["--build", "--oops"], "must be a plain name"),
    ],
)
def test_bad_options_are_one_line_errors(
    tmp_path: Path, llama_artifacts: Path, options: list[str], message: str
) -> None:
    folder = built(tmp_path, llama_artifacts, {"cpu": "local-task"})
    code, output, files = deploy(folder, tmp_path / "k8s", *options)
    assert code == 2 and message in output and len(output.strip().splitlines()) == 1, output
    assert not files  # nothing half-written


def test_without_kubernetes_or_a_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["deploy", str(tmp_path), "--image", IMAGE])
    assert result.exit_code == 2 and "--kubernetes" in result.output
    result = runner.invoke(app, ["deploy", str(tmp_path), "--kubernetes", "--image", IMAGE,
                                 "--build", "x", "-o", str(tmp_path / "o")])  # fmt: skip
    assert result.exit_code == 2 and "manifest" in result.output


@pytest.mark.iree
def test_a_cpu_program_on_a_volume_is_said_to_be_this_machines(
    tmp_path: Path, llama_artifacts: Path
) -> None:
    folder = built(tmp_path, llama_artifacts, {"cpu": "local-task"})
    code, output, files = deploy(folder, tmp_path / "k8s", "--volume-claim", "models")
    assert code == 0 and "compiled for the build machine's CPU" in output, output
    assert set(files) == FILES
