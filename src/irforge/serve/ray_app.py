"""The Ray Serve application behind `irforge serve --replicas` and the KubeRay RayService.

Two deployments, as Ray's own LLM serving splits them: a front replica (no devices) reads each
HTTP request and hands it whole to one of the engine replicas through a deployment handle;
each engine replica answers it with the same FastAPI app as the one-process server, over its
own Engine, and streams the answer back. The handle's router sees the prompt, so requests
that begin alike go to the replica whose prefix cache holds their beginning
(`PrefixAffinityRouter`), unless that replica is loaded well beyond the least-loaded one.
A replica that dies is restarted by Ray; the requests it held end in a JSON error. A /metrics
scrape is the one request the front sends to every replica (serve/replica_metrics.py).

`build_app` is the application builder: `serve_replicas` calls it, and a RayService's
`serveConfigV2` names it (`import_path: irforge.serve.ray_app:build_app`) with the same args.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import RayError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from irforge.engine.options import EngineOptions
from irforge.engine.replica_args import DEFAULT_ROUTING, ReplicaArgs
from irforge.serve import replica_metrics
from irforge.serve.affinity import PrefixTable, chain
from irforge.serve.app import METRICS_CONTENT_TYPE, METRICS_PATH
from irforge.serve.errors import error_body
from irforge.serve.forward import Forwarded, answer, prompt_text
from irforge.serve.limits import BodyLimit

ENGINE, FRONT = "engine", "front"
REPLICA_HEADER = "x-irforge-replica"  # which engine replica answered (routing is visible)
# Ray Serve's default (5) would queue a replica's requests in Ray instead of in its engine,
# which batches them: let the engine see all it can hold
MAX_ONGOING = 1024
FRONT_MAX_ONGOING = 16384  # the front only forwards
# a new replica loads its program for seconds to minutes: add one only for a lasting queue,
# and give one back only after a long quiet
UPSCALE_DELAY_S, DOWNSCALE_DELAY_S = 10.0, 300.0
HTTP_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]


class EngineReplica:
    """One engine of the folder, answering forwarded requests with the server's app."""

    def __init__(self, folder: str, engine: dict[str, Any], model_name: str) -> None:
        from irforge.engine.engine import Engine
        from irforge.serve.app import create_app

        self.engine = Engine(Path(folder), EngineOptions(**engine))
        self.app = create_app(self.engine, model_name=model_name)
        self.tag = serve.get_replica_context().replica_tag

    async def __call__(self, request: Forwarded) -> AsyncIterator[Any]:
        async for part in answer(self.app, request):
            if isinstance(part, tuple):
                status, headers = part
                part = (status, [*headers, (REPLICA_HEADER, self.tag)])
            yield part

    def check_health(self) -> None:
        if not self.engine.running:
            raise RuntimeError("the engine's scheduler thread has stopped")

    def __del__(self) -> None:  # Serve has drained this replica's requests by now
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown(drain=False, timeout=10)
            engine.close()


front_api = FastAPI(title="irforge serve (Ray Serve front)")
front_api.add_middleware(BodyLimit)


@front_api.get(METRICS_PATH)
async def _metrics(request: Request) -> Response:
    front = cast("Front", serve.get_replica_context().servable_object)
    return await front.scrape(request)


@front_api.api_route("/{path:path}", methods=HTTP_METHODS)
async def _any_route(path: str, request: Request) -> Response:
    # a plain function, not a method: Serve's class-based views miss the `self` of a method
    # route under FastAPI >= 0.137 (it stays a required query parameter)
    front = cast("Front", serve.get_replica_context().servable_object)
    return await front.forward(request)


@serve.ingress(front_api)  # here, not in build_app: a replica imports the routes it serves
class Front:
    """Reads a request and hands it to an engine replica; streams the answer back."""

    def __init__(self, engines: DeploymentHandle) -> None:
        self.engines = engines.options(stream=True)

    async def scrape(self, request: Request) -> Response:
        """Every engine replica's metrics, each series labelled with its replica. The first
        scrape goes to any replica (the handle's router starts with it); then each replica the
        router knows of is asked by name. A replica that fails to answer is left out, as a
        dead pod is from a scrape."""
        first = await self._metrics_text(request, None)
        texts = dict([first] if first else [])
        others = [rid for rid in replica_metrics.known_replicas() if rid not in texts]
        for found in await asyncio.gather(*(self._metrics_text(request, r) for r in others)):
            if found:
                texts.setdefault(*found)
        if not texts:  # an empty scrape would read as an application with no series
            return JSONResponse(
                error_body(METRICS_PATH, 503, _NONE_ANSWERED, "REPLICA_STOPPED"),
                status_code=503,
                headers={"Retry-After": "1"},
            )
        return Response(replica_metrics.merge(texts), media_type=METRICS_CONTENT_TYPE)

    async def _metrics_text(self, request: Request, replica: str | None) -> tuple[str, str] | None:
        scope = request.scope
        forwarded = Forwarded(
            method="GET", path=METRICS_PATH, query=b"", headers=list(scope["headers"]), body=b"",
            replica=replica,
        )  # fmt: skip
        stream = cast(DeploymentResponseGenerator, self.engines.remote(forwarded))
        try:
            status, headers = await stream.__anext__()
            content = b"".join([chunk async for chunk in stream])
        except (RayError, StopAsyncIteration):
            stream.cancel()
            return None
        tag = dict(headers).get(REPLICA_HEADER)
        return (tag, content.decode()) if status == 200 and tag else None

    async def forward(self, request: Request) -> Response:
        body = await request.body()
        scope = request.scope
        forwarded = Forwarded(
            method=request.method,
            path=scope["path"],
            query=scope.get("query_string", b""),
            headers=list(scope["headers"]),
            body=body,
            client=tuple(scope["client"]) if scope.get("client") else None,
            prefix=tuple(chain(prompt_text(body))),
        )
        stream = cast(DeploymentResponseGenerator, self.engines.remote(forwarded))
        try:
            status, headers = await stream.__anext__()
            kept = {k: v for k, v in headers if k.lower() != "content-length"}
            if kept.get("content-type", "").startswith("text/event-stream"):
                return StreamingResponse(_rest(stream), status_code=status, headers=kept)
            # anything else is one small body: whole, or a clean error if the replica dies
            content = b"".join([chunk async for chunk in stream])
            return Response(content, status_code=status, headers=kept)
        except (RayError, StopAsyncIteration):
            stream.cancel()
            return JSONResponse(
                error_body(forwarded.path, 503, _GONE, "REPLICA_STOPPED"),
                status_code=503,
                headers={"Retry-After": "1"},
            )


_GONE = "the replica answering this request stopped (Ray restarts it); retry"
_NONE_ANSWERED = "no engine replica answered the metrics scrape (Ray restarts them); retry"


async def _rest(stream: Any) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            yield chunk
    except RayError:  # as the server ends a stream it cannot finish
        error = {"message": _GONE, "type": "server_error", "code": "REPLICA_STOPPED"}
        yield f"data: {json.dumps({'error': error})}\n\n".encode()
    finally:
        stream.cancel()  # a client gone early: the engine replica stops the request too


class PrefixAffinityRouter(RequestRouter):
    """Sends a request to the replica that first took the longest prefix of its prompt
    (serve/affinity.py), unless that replica's queue is more than `imbalance` requests
    longer than the shortest; otherwise, or with `affinity` off (`--routing load`), to the
    least-loaded replica. A request that names a replica (`Forwarded.replica`) goes there."""

    def initialize_state(self, **kwargs: Any) -> None:
        self._imbalance = int(kwargs.get("imbalance", 8))
        self._affinity = bool(kwargs.get("affinity", True))
        self._table: PrefixTable[ReplicaID] = PrefixTable()
        replica_metrics.ROUTERS.add(self)

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        by_id = {r.replica_id: r for r in candidate_replicas}
        cache = self.replica_queue_len_cache
        load = {rid: cache.get(rid) or 0 for rid in by_id}
        least = random.sample(candidate_replicas, len(candidate_replicas))  # ties spread
        least.sort(key=lambda r: load[r.replica_id])
        named = _request(pending_request)
        if named is not None and named.replica is not None:
            # gone since it was named: any other answers, and says who it is
            return [[r for r in candidate_replicas if r.replica_id.unique_id == named.replica]
                    or least]  # fmt: skip
        owner, _ = self._table.owner(_keys(pending_request), by_id)
        if owner is not None and load[owner] - load[least[0].replica_id] <= self._imbalance:
            return [[by_id[owner]], least]  # the owner, or if it is full the least loaded
        return [least]

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any
    ) -> None:
        if self._affinity:
            self._table.record(_keys(pending_request), replica_id)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._table.forget(replica_id)


def _request(pending_request: PendingRequest | None) -> Forwarded | None:
    args = pending_request.args if pending_request is not None else ()
    return args[0] if args and isinstance(args[0], Forwarded) else None


def _keys(pending_request: PendingRequest | None) -> tuple[int, ...]:
    request = _request(pending_request)
    return request.prefix if request is not None else ()


def build_app(args: ReplicaArgs) -> Any:
    """The Serve application: the front over `args`' engine replicas."""
    if isinstance(args, dict):  # Ray hands a typed builder its model; a caller may not
        args = ReplicaArgs(**args)
    engine_options: dict[str, Any] = {
        "name": ENGINE,
        "ray_actor_options": {"num_gpus": args.num_gpus} if args.num_gpus else {"num_cpus": 1},
        "max_ongoing_requests": MAX_ONGOING,
        "graceful_shutdown_timeout_s": args.drain_timeout,
    }
    engine_options["request_router_config"] = {
        "request_router_class": PrefixAffinityRouter,
        "request_router_kwargs": {
            "imbalance": args.batch,
            "affinity": args.routing == DEFAULT_ROUTING,  # "prefix"
        },
    }
    if args.min_replicas is not None:
        engine_options["autoscaling_config"] = {
            "min_replicas": args.min_replicas,
            "max_replicas": args.max_replicas,
            # a replica's requests beyond what it decodes at once wait: add one
            "target_ongoing_requests": args.batch,
            "upscale_delay_s": UPSCALE_DELAY_S,
            "downscale_delay_s": DOWNSCALE_DELAY_S,
        }
    else:
        engine_options["num_replicas"] = args.replicas
    engines = serve.deployment(**engine_options)(EngineReplica)
    front = serve.deployment(
        name=FRONT,
        num_replicas=1,
        ray_actor_options={"num_cpus": 0},  # devices and CPUs go to the engines
        max_ongoing_requests=FRONT_MAX_ONGOING,
        graceful_shutdown_timeout_s=args.drain_timeout,
    )(Front)
    return front.bind(engines.bind(args.folder, args.engine_options(), args.model_name))
