"""The app builder: typed config in, one Ray Serve application out.

Each service becomes a deployment named after its ``LocalInferenceServiceName``
with its resources (CPUs, GPUs, the memory limit as Ray's ``memory``
reservation, and ``connector-platform:<suffix>`` so it lands on a node of its
platform); one ingress deployment fronts them all, on every node.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from deployments.runtime import thread_environment
from deployments.service import InferenceService
from serve_app._handles import call_service
from serve_app.config import LisConfig, ServiceSpec
from serve_app.errors import ServiceNotFound
from serve_app.ingress import ServiceInfo, build_http_app

__all__ = ["APP_NAME", "HandleRouter", "LisIngress", "build_app", "service_info",
           "service_states", "short_message"]

APP_NAME = "lis"
# Each replica asks for a sliver of its platform's resource: a node that
# advertises ``connector-platform:X: 1`` can host a thousand of them.
PLATFORM_RESOURCE_PER_REPLICA = 0.001
# A replica over its memory limit is found by its next health check.
HEALTH_CHECK_PERIOD_S = 2.0
# Replica start-up includes fetching and loading the model.
HEALTH_CHECK_TIMEOUT_S = 30.0


def service_info(spec: ServiceSpec) -> ServiceInfo:
    return ServiceInfo(
        name=spec.name, algorithm=spec.algorithm, connector_id=spec.connector_id,
        connector_arn=spec.connector_arn, platform=spec.platform, timeout_s=spec.timeout_s,
        max_request_bytes=spec.max_request_bytes, feedback_config_id=spec.feedback_config_id,
    )


def _actor_options(spec: ServiceSpec) -> dict[str, Any]:
    options: dict[str, Any] = {
        "num_cpus": spec.num_cpus,
        "resources": {spec.platform_resource: PLATFORM_RESOURCE_PER_REPLICA, **spec.placement},
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
    return {"autoscaling_config": {
        "min_replicas": scaling.min_replicas,
        "max_replicas": scaling.max_replicas,
        "target_ongoing_requests": scaling.target_ongoing_requests,
    }}


def _service_deployment(spec: ServiceSpec, config: LisConfig, feedback: Any) -> Application:
    return InferenceService.options(
        name=spec.name,
        ray_actor_options=_actor_options(spec),
        max_queued_requests=spec.max_queued_requests,
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
        health_check_timeout_s=HEALTH_CHECK_TIMEOUT_S,
        **_scaling_options(spec),
    ).bind(spec, config.model_store, feedback)


def build_app(config: LisConfig, *, token: str | None = None) -> Application:
    """The Ray Serve application for ``config``: services plus the ingress."""
    feedback = None
    if config.feedback is not None:
        from deployments.feedback.deployment import build_feedback_worker

        feedback = build_feedback_worker(config.feedback)
    services = {spec.name: _service_deployment(spec, config, feedback)
                for spec in config.services}
    infos = [service_info(spec) for spec in config.services]
    return LisIngress.options(ray_actor_options={"num_cpus": 0}).bind(
        infos, services, feedback, token)


# --- the ingress deployment ---------------------------------------------------------


def service_states(app_name: str = APP_NAME) -> dict[str, dict[str, Any]]:
    """Per deployment: state (RUNNING/STARTING/UNHEALTHY/...), replica counts, message."""
    status = serve.status()
    application = status.applications.get(app_name)
    if application is None:
        return {}
    states = {}
    for name, deployment in application.deployments.items():
        replicas = {str(getattr(state, "value", state)): count
                    for state, count in deployment.replica_states.items()}
        states[name] = {
            "state": _state(str(getattr(deployment.status, "value", deployment.status)),
                            replicas.get("RUNNING", 0)),
            "replicas": replicas,
            "message": short_message(deployment.message),
        }
    return states


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
                 feedback: DeploymentHandle | None) -> None:
        self.services = {info.name: info for info in services}
        self.handles = handles
        self.feedback = feedback

    async def infer(self, service: ServiceInfo, body: bytes, content_type: str | None,
                    algo_type: str | None) -> Any:
        return await call_service(self.handles[service.name], service.name, body,
                                  content_type, algo_type, service.timeout_s)

    async def service_states(self) -> dict[str, dict[str, Any]]:
        states = await asyncio.to_thread(service_states)
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


@serve.deployment
@serve.ingress()
class LisIngress:
    """The HTTP front door; runs on every node (Ray Serve's proxy location)."""

    def __init__(self, services: list[ServiceInfo], handles: dict[str, DeploymentHandle],
                 feedback: DeploymentHandle | None, token: str | None) -> None:
        self.router = HandleRouter(services, handles, feedback)
        self.token = token

    def __serve_build_asgi_app__(self) -> Any:
        return build_http_app(self.router, token=self.token)
