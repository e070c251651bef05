"""`irforge deploy`: files that run a built folder elsewhere (Kubernetes manifests)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from irforge.cli._options import QuietOpt


def deploy_cmd(
    folder: Annotated[
        Path, typer.Argument(help="A folder written by `irforge build`.", show_default=False)
    ],
    kubernetes: Annotated[
        bool,
        typer.Option(
            "--kubernetes",
            help="Write Kubernetes manifests: a Deployment, a Service and an InferencePool; "
            "and, for clusters with KubeRay, a RayService instead of those.",
        ),
    ] = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="The folder to write them into.")] = (
        Path("deploy")
    ),
    image: Annotated[
        str, typer.Option(help="Container image with irforge installed.", show_default=False)
    ] = "",
    name: Annotated[
        str | None,
        typer.Option(
            help="Name of the Deployment, Service and pool, and the served model id "
            "[default: the folder's name].",
            show_default=False,
        ),
    ] = None,
    replicas: Annotated[int, typer.Option(help="Server pods.", min=1)] = 1,
    port: Annotated[int, typer.Option(help="Port the servers listen on.", min=1, max=65535)] = (
        8000
    ),
    target: Annotated[
        str | None,
        typer.Option(
            help="Which compiled target to serve [default: a GPU one if any].", show_default=False
        ),
    ] = None,
    volume_claim: Annotated[
        str | None,
        typer.Option(
            help="A PersistentVolumeClaim holding FOLDER (under its own name).", show_default=False
        ),
    ] = None,
    build: Annotated[
        str | None,
        typer.Option(
            "--build",
            help="Instead: build this source in each pod before serving "
            "(an init container runs `irforge build` with FOLDER's options).",
            show_default=False,
        ),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Write what runs FOLDER's server on a cluster, as files a user applies as they are.

    With --kubernetes: OUT/deployment.yaml (pods running `irforge serve`, asking for the
    devices the program spans, probes on /health, Prometheus scraping /metrics),
    OUT/service.yaml and OUT/inferencepool.yaml (the Gateway API Inference Extension's pool,
    for an endpoint picker that routes by the vLLM series on /metrics). Or, with KubeRay,
    OUT/rayservice.yaml alone: a Ray head and one worker pod per replica running irforge's
    Ray Serve application (as `irforge serve --replicas`), routing by prompt prefix.
    """
    import yaml

    from irforge.cli._output import err, note
    from irforge.errors import InputError
    from irforge.formats.atomic import AtomicFile
    from irforge.stages.deploy import DeployOptions, manifests

    if not kubernetes:
        raise InputError("say what to write: --kubernetes (the only kind so far)")
    if not image:
        raise InputError("--image is needed: a container image with irforge installed")
    default = re.sub(r"[^a-z0-9-]+", "-", folder.resolve().name.lower()).strip("-")[:63]
    options = DeployOptions(
        image=image,
        name=name or default,
        replicas=replicas,
        port=port,
        target=target,
        volume_claim=volume_claim,
        build_source=build,
    )

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: object) -> bool:
            return True  # a shared dict written out each time, not as &id001 / *id001

    made = manifests(folder, options)
    for file_name, obj in made.files.items():
        with AtomicFile(out / file_name) as f:
            f.write(yaml.dump(obj, Dumper=Dumper, sort_keys=False).encode())
    for line in made.notes:
        note(line)
    if not quiet:
        for file_name in made.files:
            err.print(f"  {out / file_name}", highlight=False)
    typer.echo(out)
