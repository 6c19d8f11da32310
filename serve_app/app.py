"""The app builder: typed config in, one Ray Serve application out.

Each service becomes a deployment named after its ``LocalInferenceServiceName``
with its resources (CPUs, GPUs, the memory limit as Ray's ``memory``
reservation, and ``connector-platform:<suffix>`` so it lands on a node of its
platform); one ingress deployment (``serve_app.ingress_deployment``) fronts
them all, on the head node.

Each deployment carries a version computed from what its replicas run (the
service's spec, its model's content hash, lis's code), so deploying the same
config again changes nothing, and a changed model replaces the service's
replicas one at a time, a new one ready before an old one stops.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ray.serve import Application

from deployments.pipelines.deployment import (
    build_pipeline,
    pipeline_actor_options,
    pipeline_deployment,
)
from deployments.ray_internals import versioned
from cluster.ray_start import worker_threads
from deployments.runtime import thread_environment
from deployments.service import InferenceService
from serve_app._local import LocalLimits, local_aware_policy
from serve_app.http_token import bound_http_host, is_loopback
from serve_app.ingress import ServiceInfo
from serve_app.ingress_deployment import LisIngress
from vocabulary.limits import DEFAULT_TIMEOUT_S, MAX_ONGOING_REQUESTS
from vocabulary.specs import LisConfig, ServiceSpec

__all__ = [
    "HEAD_NODE_RESOURCE",
    "HEALTH_CHECK_PERIOD_S",
    "HEALTH_CHECK_TIMEOUT_S",
    "INGRESS_MAX_ONGOING_REQUESTS",
    "MAX_SURGE_PERCENT",
    "PLATFORM_RESOURCE_PER_REPLICA",
    "SHUTDOWN_GRACE_S",
    "build_app",
    "replica_demand",
    "service_info",
    "service_version",
]

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
# The ingress shares the head node's fate with Ray Serve's controller: losing
# a worker never takes the front door down.
HEAD_NODE_RESOURCE = "node:__internal_head__"
# Requests Ray Serve lets into the ingress at once, from its proxies (a
# cluster; on one box HTTP skips Ray's layer). The ingress only forwards: each
# service's own limits decide what waits or is refused. At Ray Serve's default
# of 5, the ingress held every request past the 5th of all services together
# in one queue, so a slow service stalled the others.
INGRESS_MAX_ONGOING_REQUESTS = 10_000
# Ray options that change without restarting replicas: not part of a version.
_SCALING_FIELDS = frozenset({"num_replicas", "autoscaling", "max_queued_requests"})
# What replicas run; a change to any of it restarts them on the next deploy.
_CODE_PACKAGES = ("vocabulary", "deployments", "serve_app")
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


def _actor_options(spec: ServiceSpec, node_threads: int | None) -> dict[str, Any]:
    options: dict[str, Any] = {"num_cpus": spec.num_cpus, "resources": _custom_resources(spec)}
    # Thread pools are sized when native libraries load, before any lis code
    # runs in the worker: a replica needs them in its worker's environment.
    # A box's own Ray starts every worker with them for `node_threads` threads
    # (cluster.ray_start.worker_threads); otherwise the replica asks Ray for them.
    if spec.runtime_threads != node_threads:
        options["runtime_env"] = {"env_vars": thread_environment(spec.runtime_threads)}
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
                   config.feedback is not None, model_version, restart,
                   config.http.local_socket, _code_fingerprint())


def _service_deployment(spec: ServiceSpec, config: LisConfig, feedback: Any,
                        model_version: str | None, restart: str | None,
                        node_threads: int | None) -> Application:
    return versioned(
        InferenceService, service_version(spec, config, model_version, restart),
        name=spec.name,
        ray_actor_options=_actor_options(spec, node_threads),
        max_ongoing_requests=MAX_ONGOING_REQUESTS,
        max_queued_requests=spec.max_queued_requests,
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
        health_check_timeout_s=HEALTH_CHECK_TIMEOUT_S,
        max_surge_percent=MAX_SURGE_PERCENT,
        graceful_shutdown_timeout_s=spec.timeout_s + SHUTDOWN_GRACE_S,
        **_scaling_options(spec),
    ).bind(spec, config.model_store, feedback, model_version, config.http.local_socket)


def _proxies_on_loopback() -> bool:
    """Whether the running Ray Serve's proxies listen on loopback (Serve keeps the host of
    its first start, so this asks it); False when this process has not joined a Ray."""
    import ray

    if not ray.is_initialized():
        return False
    host = bound_http_host()
    return host is not None and is_loopback(host)


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
    threads = worker_threads()
    services = {spec.name: _service_deployment(spec, config, feedback,
                                               model_versions.get(spec.name),
                                               restart.get(spec.name), threads)
                for spec in config.services}
    # Each pipeline calls its service through the handle this binding gives it.
    pipelines = {spec.name: build_pipeline(spec, services[spec.service],
                                           config.service(spec.service).timeout_s, config.mqtt,
                                           feedback, _code_fingerprint())
                 for spec in config.pipelines}
    infos = [service_info(spec) for spec in config.services]
    demands = {spec.name: replica_demand(spec) for spec in config.services}
    # A pipeline bound to a camera's node waits for it: /pipelines says which resource is missing.
    demands.update({pipeline_deployment(spec.name): pipeline_actor_options(spec)["resources"]
                    for spec in config.pipelines if spec.camera is not None})
    local = {spec.name: LocalLimits(MAX_ONGOING_REQUESTS, spec.max_queued_requests)
             for spec in config.services} if config.http.local_socket else {}
    token_hash = hashlib.sha256(token.encode()).hexdigest() if token else None
    longest = max((spec.timeout_s for spec in config.services), default=DEFAULT_TIMEOUT_S)
    # On one box the ingress serves HTTPS itself with these files; on a cluster
    # Ray Serve's proxies do (serve_app.deploy).
    tls = config.http.tls if http else None
    # On one box lis's own server checks Host; behind Ray Serve's proxies the app does.
    host_guard = http is None and _proxies_on_loopback()
    version = _digest([asdict(info) for info in infos], demands, token_hash,
                      config.feedback is not None, [asdict(v) for v in local.values()],
                      http, tls and tls.model_dump(), host_guard, sorted(pipelines),
                      _code_fingerprint())
    return versioned(
        LisIngress, version,
        ray_actor_options={"num_cpus": 0, "resources": {HEAD_NODE_RESOURCE: 0.001}},
        max_ongoing_requests=INGRESS_MAX_ONGOING_REQUESTS,
        max_surge_percent=0 if http else MAX_SURGE_PERCENT,
        graceful_shutdown_timeout_s=longest + SHUTDOWN_GRACE_S,
    ).bind(infos, services, feedback, token, demands, local, http, tls, host_guard,
           pipelines=pipelines)
