"""The app builder: typed config in, one Ray Serve application out.

Each service becomes a deployment named after its ``LocalInferenceServiceName``
with its resources (CPUs, GPUs, the memory limit as Ray's ``memory``
reservation, and ``connector-platform:<suffix>`` so it lands on a node of its
platform); one ingress deployment fronts them all, on the head node, behind
Ray Serve's HTTP proxy on every node.

Each deployment carries a version computed from what its replicas run (the
service's spec, its model's content hash, lis's code), so deploying the same
config again changes nothing, and a changed model replaces the service's
replicas one at a time, a new one ready before an old one stops.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from deployments.local_socket import current_node_id
from deployments.runtime import thread_environment
from deployments.service import MAX_ONGOING_REQUESTS, InferenceResult, InferenceService
from serve_app._handles import call_service
from serve_app._http_server import IngressHttpServer
from serve_app._local import Gone, LocalLimits, LocalRoute, LocalUnavailable, local_aware_policy
from serve_app.config import DEFAULT_TIMEOUT_S, LisConfig, ServiceSpec
from serve_app.errors import ServiceNotFound, ServiceUnavailable
from serve_app.ingress import ServiceInfo, build_http_app

__all__ = ["APP_NAME", "INGRESS_DEPLOYMENT", "HandleRouter", "LisIngress", "build_app",
           "replica_demand", "service_info", "service_states", "service_version",
           "short_message", "unplaceable_reason"]

APP_NAME = "lis"
log = logging.getLogger("lis.app")
# Each replica asks for a sliver of its platform's resource: a node that
# advertises ``connector-platform:X: 1`` can host a thousand of them.
PLATFORM_RESOURCE_PER_REPLICA = 0.001
# A replica over its memory limit is found by its next health check.
HEALTH_CHECK_PERIOD_S = 2.0
# Replica start-up includes fetching and loading the model.
HEALTH_CHECK_TIMEOUT_S = 30.0
# Model updates start one extra replica (Ray rounds the surge up to a whole
# replica) and stop an old one only once it is ready: replicas are replaced one
# at a time, and a service never serves with fewer replicas than it asks for.
MAX_SURGE_PERCENT = 1
# A stopping replica finishes its requests first; none runs past the
# service's timeout, plus this margin.
SHUTDOWN_GRACE_S = 5.0
INGRESS_DEPLOYMENT = "LisIngress"
# The ingress shares the head node's fate with Ray Serve's controller: losing
# a worker never takes the front door down.
HEAD_NODE_RESOURCE = "node:__internal_head__"
# How often the ingress looks for services that no node can host, and counts
# each service's running replicas (the local path needs all of them on its node).
PENDING_CHECK_PERIOD_S = 2.0
# Requests Ray Serve lets into the ingress at once, from its proxies (a
# cluster; on one box HTTP skips Ray's layer). The ingress only forwards: each
# service's own limits decide what waits or is refused. At Ray Serve's default
# of 5, the ingress held every request past the 5th of all services together
# in one queue, so a slow service stalled the others.
INGRESS_MAX_ONGOING_REQUESTS = 10_000
# Ray options that change without restarting replicas: not part of a version.
_SCALING_FIELDS = frozenset({"num_replicas", "autoscaling", "max_queued_requests"})
# What replicas run; a change to any of it restarts them on the next deploy.
_CODE_PACKAGES = ("deployments", "modelkit", "serve_app")
_REPO = Path(__file__).resolve().parent.parent


def service_info(spec: ServiceSpec) -> ServiceInfo:
    return ServiceInfo(
        name=spec.name, algorithm=spec.algorithm, connector_id=spec.connector_id,
        connector_arn=spec.connector_arn, platform=spec.platform, timeout_s=spec.timeout_s,
        max_request_bytes=spec.max_request_bytes, feedback_config_id=spec.feedback_config_id,
    )


def _custom_resources(spec: ServiceSpec) -> dict[str, float]:
    return {spec.platform_resource: PLATFORM_RESOURCE_PER_REPLICA, **spec.placement}


def replica_demand(spec: ServiceSpec) -> dict[str, float]:
    """The Ray resources one replica of ``spec`` needs, as a node reports them."""
    demand = {"CPU": spec.num_cpus, "GPU": spec.num_gpus,
              "memory": float((spec.memory_limit_kb or 0) * 1024), **_custom_resources(spec)}
    return {name: amount for name, amount in demand.items() if amount}


def _actor_options(spec: ServiceSpec) -> dict[str, Any]:
    options: dict[str, Any] = {
        "num_cpus": spec.num_cpus,
        "resources": _custom_resources(spec),
        # Thread pools are sized when native libraries load, before any lis
        # code runs in the worker: set them in the worker's environment.
        "runtime_env": {"env_vars": thread_environment(spec.runtime_threads)},
    }
    if spec.num_gpus:
        options["num_gpus"] = spec.num_gpus
    if spec.memory_limit_kb:
        options["memory"] = spec.memory_limit_kb * 1024
    return options


def _scaling_options(spec: ServiceSpec) -> dict[str, Any]:
    if spec.autoscaling is None:
        return {"num_replicas": spec.num_replicas or 1}
    scaling = spec.autoscaling
    timing = {key: value for key in ("upscale_delay_s", "downscale_delay_s", "look_back_period_s")
              if (value := getattr(scaling, key)) is not None}
    return {"autoscaling_config": {
        "min_replicas": scaling.min_replicas,
        "max_replicas": scaling.max_replicas,
        "target_ongoing_requests": scaling.target_ongoing_requests,
        **timing,
        # Ray's own policy, counting the requests that come over local sockets too.
        "policy": {"policy_function": local_aware_policy},
    }}


@functools.lru_cache(maxsize=1)
def _code_fingerprint() -> str:
    digest = hashlib.sha256()
    for package in _CODE_PACKAGES:
        for path in sorted((_REPO / package).rglob("*.py")):
            digest.update(str(path.relative_to(_REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _digest(*parts: object) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def service_version(spec: ServiceSpec, config: LisConfig, model_version: str | None,
                    restart: str | None = None) -> str:
    """The deployment version of a service: changes exactly when its replicas must.

    ``model_version`` is the model's content hash (None when only the replica
    can know it, as for ``s3://``); ``restart`` is a token that forces new
    replicas (``lis reload``).
    """
    fields = spec.model_dump(mode="json", exclude=set(_SCALING_FIELDS))
    return _digest(fields, config.model_store.model_dump(mode="json"),
                   config.feedback is not None, model_version, restart, _code_fingerprint())


def _service_deployment(spec: ServiceSpec, config: LisConfig, feedback: Any,
                        model_version: str | None, restart: str | None) -> Application:
    return InferenceService.options(
        name=spec.name,
        # Ray's imperative API gives every deploy a random version (every
        # replica restarts); a version of our own makes a deploy restart only
        # what changed. Ray accepts it only as an internal option.
        version=service_version(spec, config, model_version, restart), _internal=True,
        ray_actor_options=_actor_options(spec),
        max_ongoing_requests=MAX_ONGOING_REQUESTS,
        max_queued_requests=spec.max_queued_requests,
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
        health_check_timeout_s=HEALTH_CHECK_TIMEOUT_S,
        max_surge_percent=MAX_SURGE_PERCENT,
        graceful_shutdown_timeout_s=spec.timeout_s + SHUTDOWN_GRACE_S,
        **_scaling_options(spec),
    ).bind(spec, config.model_store, feedback, model_version)


def build_app(config: LisConfig, *, token: str | None = None,
              model_versions: Mapping[str, str | None] | None = None,
              restart: Mapping[str, str] | None = None,
              http: tuple[str, int] | None = None) -> Application:
    """The Ray Serve application for ``config``: services plus the ingress.

    ``model_versions`` maps services to their model's content hash where the
    deployer could compute it; ``restart`` maps services to a token that makes
    their replicas be replaced even if nothing else changed. With ``http`` =
    (host, port) the ingress replica serves HTTP itself (one box), so a new one
    can only start once the old one has let go of the port: no surge replica.
    """
    model_versions, restart = model_versions or {}, restart or {}
    feedback = None
    if config.feedback is not None:
        from deployments.feedback.deployment import build_feedback_worker

        feedback = build_feedback_worker(config.feedback)
    services = {spec.name: _service_deployment(spec, config, feedback,
                                               model_versions.get(spec.name),
                                               restart.get(spec.name))
                for spec in config.services}
    infos = [service_info(spec) for spec in config.services]
    demands = {spec.name: replica_demand(spec) for spec in config.services}
    local = {spec.name: LocalLimits(MAX_ONGOING_REQUESTS, spec.max_queued_requests)
             for spec in config.services} if config.http.local_socket else {}
    token_hash = hashlib.sha256(token.encode()).hexdigest() if token else None
    longest = max((spec.timeout_s for spec in config.services), default=DEFAULT_TIMEOUT_S)
    return LisIngress.options(
        version=_digest([asdict(info) for info in infos], demands, token_hash,
                        config.feedback is not None, [asdict(v) for v in local.values()],
                        http, _code_fingerprint()), _internal=True,
        ray_actor_options={"num_cpus": 0, "resources": {HEAD_NODE_RESOURCE: 0.001}},
        max_ongoing_requests=INGRESS_MAX_ONGOING_REQUESTS,
        max_surge_percent=0 if http else MAX_SURGE_PERCENT,
        graceful_shutdown_timeout_s=longest + SHUTDOWN_GRACE_S,
    ).bind(infos, services, feedback, token, demands, local, http)


# --- the ingress deployment ---------------------------------------------------------


def service_states(app_name: str = APP_NAME,
                   demands: Mapping[str, Mapping[str, float]] | None = None
                   ) -> dict[str, dict[str, Any]]:
    """Per deployment: state, replica counts, whether a rollout is under way, message.

    States: RUNNING (serving), STARTING, PENDING (no node can host a replica:
    the message says which resource is missing, from ``demands``, the
    resources one replica needs), UNHEALTHY, DEGRADED, FAILED.
    """
    application = _application_details(app_name)
    if application is None:
        return {}
    nodes = _alive_node_resources() if demands else []
    states = {}
    for name, deployment in application["deployments"].items():
        replicas = dict(Counter(_value(replica["state"]) for replica in deployment["replicas"]))
        ray_status = _value(deployment["status"])
        state = {
            "state": _state(ray_status, replicas.get("RUNNING", 0)),
            "replicas": replicas,
            "updating": ray_status == "UPDATING",
            "message": short_message(deployment.get("message") or ""),
        }
        # Ray only sees replicas that never start (at times as failures to
        # start): the cause is a resource that no live node has.
        waiting = state["state"] in ("STARTING", "UNHEALTHY")
        reason = unplaceable_reason(demands[name], nodes) \
            if waiting and demands and name in demands else None
        if reason:
            state.update(state="PENDING", message=f"pending: {reason}")
        states[name] = state
    return states


def _application_details(app_name: str) -> dict[str, Any] | None:
    """What Ray Serve's controller knows of one application, as plain data; None if absent.

    ``serve.status()`` reads the same details and then builds Ray's pydantic
    models from them, whose request-router config cloudpickles its router
    class once per deployment: 37 ms of CPU per call on the 2-core reference
    box, against 1.2 ms for the details alone. The ingress asks every 2 s
    while requests come in, and on every ``/readyz`` and ``/services``.
    """
    from ray.serve.context import _get_global_client  # noqa: PLC0415 - Ray's, no public twin

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return None
    return client.get_serve_details().get("applications", {}).get(app_name)


def _value(member: Any) -> str:
    """An enum member's value (Ray's states are str enums), or the string itself."""
    return str(getattr(member, "value", member))


def _alive_node_resources() -> list[dict[str, float]]:
    import ray

    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def _amount(resource: str, amount: float) -> str:
    if resource == "memory":
        return f"{amount / 2**20:.0f} MiB of memory"
    if resource in ("CPU", "GPU"):
        return f"{amount:g} {resource}"
    return f"{resource}: {amount:g}"


def unplaceable_reason(demand: Mapping[str, float], nodes: list[dict[str, float]]
                       ) -> str | None:
    """Why no node of ``nodes`` (their total resources) can ever host ``demand``; None if one can.

    Judged from totals, not from what is free: a replica that waits for room
    is starting, one that no node could ever host is pending until a node joins.
    """
    def offers(node: Mapping[str, float], resource: str) -> bool:
        return node.get(resource, 0.0) >= demand[resource]

    if any(all(offers(node, r) for r in demand) for node in nodes):
        return None
    platform = next((r for r in demand if r.startswith("connector-platform:")), None)
    if platform is not None:
        nodes = [node for node in nodes if offers(node, platform)]
        if not nodes:
            return f"no node offers {platform}"
    where = f"offering {platform} " if platform else ""
    rest = [r for r in demand if r != platform]
    missing = [r for r in rest if not any(offers(node, r) for node in nodes)]
    if missing:
        return f"no node {where}has {' and '.join(_amount(r, demand[r]) for r in missing)}"
    return f"no node {where}has {' and '.join(_amount(r, demand[r]) for r in rest)} together"


def _state(deployment_status: str, running: int) -> str:
    if deployment_status == "DEPLOY_FAILED":
        return "FAILED"
    if deployment_status == "UNHEALTHY":
        return "UNHEALTHY" if not running else "DEGRADED"
    return "RUNNING" if running else "STARTING"


def short_message(message: str) -> str:
    """Ray's status message without the traceback: its first sentence and the error line."""
    if "Traceback" not in message:
        return message.strip()
    first = message.split(". ", 1)[0].strip()
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return f"{first}: {lines[-1]}" if lines else first


class HandleRouter:
    """Reaches each service through its Ray Serve deployment handle."""

    def __init__(self, services: list[ServiceInfo], handles: dict[str, DeploymentHandle],
                 feedback: DeploymentHandle | None,
                 demands: Mapping[str, Mapping[str, float]] | None = None,
                 local: Mapping[str, LocalLimits] | None = None) -> None:
        self.services = {info.name: info for info in services}
        self.handles = handles
        self.feedback = feedback
        self.demands = dict(demands or {})
        # Services reached over their replicas' sockets while all of those
        # run on this node (serve_app._local); the rest go through handles.
        node = current_node_id() if local else ""
        self.local = {name: LocalRoute(name, node, limits)
                      for name, limits in (local or {}).items()}
        self.running: dict[str, int] = {}
        # Services no node can host, with the reason: a request to one is
        # answered at once instead of waiting in Ray's queue until it times out.
        self.pending: dict[str, str] = {}
        self._checked_at = -PENDING_CHECK_PERIOD_S
        self._checking: asyncio.Task[Any] | None = None

    async def infer(self, service: ServiceInfo, body: bytes, content_type: str | None,
                    algo_type: str | None, gone: Gone | None = None) -> InferenceResult:
        self._check_pending_soon()
        if service.name in self.pending:
            raise ServiceUnavailable(service.name, self.pending[service.name])
        route = self.local.get(service.name)
        if route is not None and route.covers(self.running.get(service.name, 0)):
            try:
                return await route.call(body, content_type, algo_type, service.timeout_s, gone)
            except LocalUnavailable:
                pass  # no local replica took it: Ray Serve routes it
        return await call_service(self.handles[service.name], service.name, body,
                                  content_type, algo_type, service.timeout_s)

    def _check_pending_soon(self) -> None:
        if self._checking is None and \
                time.monotonic() - self._checked_at > PENDING_CHECK_PERIOD_S:
            self._checking = asyncio.get_running_loop().create_task(self._check_pending())

    async def _check_pending(self) -> None:
        try:
            await self._states()
        except Exception:  # noqa: BLE001 - requests go to Ray, which has its own errors
            log.warning("could not check for pending services", exc_info=True)

    async def _states(self) -> dict[str, dict[str, Any]]:
        try:
            states = await asyncio.to_thread(service_states, APP_NAME, self.demands)
            self.pending = {name: state["message"] for name, state in states.items()
                            if state["state"] == "PENDING"}
            self.running = {name: state["replicas"].get("RUNNING", 0)
                            for name, state in states.items()}
            return states
        finally:
            self._checked_at, self._checking = time.monotonic(), None

    async def service_states(self) -> dict[str, dict[str, Any]]:
        states = await self._states()
        for name, state in states.items():
            if name in self.handles and state["state"] == "RUNNING":
                state.update(await self._describe(name))
        return states

    async def _describe(self, name: str) -> dict[str, Any]:
        try:
            found = await asyncio.wait_for(self.handles[name].describe.remote(), 5)
        except Exception:  # noqa: BLE001 - a listing must not fail for one slow replica
            return {}
        return {"version": found["version"], "labels": found["labels"]}

    async def publish_feedback(self, config_id: str, body: bytes, prediction: Any,
                               metadata: dict[str, str]) -> dict[str, Any]:
        if self.feedback is None:
            raise ServiceNotFound(f"feedback config {config_id} (no MLFeedback connector)")
        return await self.feedback.publish.remote(config_id, body, prediction, metadata)


@serve.deployment(name=INGRESS_DEPLOYMENT)
@serve.ingress()
class LisIngress:
    """The HTTP front door, on the head node.

    On one box it serves HTTP itself on ``http`` = (host, port), see
    ``serve_app._http_server``; on a cluster Ray Serve's proxy on every node
    forwards to it.
    """

    def __init__(self, services: list[ServiceInfo], handles: dict[str, DeploymentHandle],
                 feedback: DeploymentHandle | None, token: str | None,
                 demands: Mapping[str, Mapping[str, float]] | None = None,
                 local: Mapping[str, LocalLimits] | None = None,
                 http: tuple[str, int] | None = None) -> None:
        self.router = HandleRouter(services, handles, feedback, demands, local)
        self.token = token
        self._shutdown_s = max((info.timeout_s for info in services), default=DEFAULT_TIMEOUT_S)
        self._http: IngressHttpServer | None = None
        if http is not None:
            self._http = IngressHttpServer(build_http_app(self.router, token=token), *http)
            self._http.start()

    def __serve_build_asgi_app__(self) -> Any:
        return build_http_app(self.router, token=self.token)

    def check_health(self) -> None:
        if self._http is not None:
            self._http.check()

    async def __del__(self) -> None:
        # Ray Serve calls this when the replica stops: requests under way get
        # as long as the slowest service's timeout.
        server = getattr(self, "_http", None)  # None if the constructor failed early
        if server is not None:
            await server.stop(self._shutdown_s)
