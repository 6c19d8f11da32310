"""How the ingress reaches a service: local sockets first, Ray Serve handles second."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from ray.serve.handle import DeploymentHandle

from deployments.local_socket import current_node_id
from deployments.pipelines.deployment import pipeline_deployment
from serve_app._handles import call_service
from serve_app._local import Gone, LocalLimits, LocalRoute, LocalUnavailable
from serve_app.ingress import ServiceInfo
from serve_app.service_state import service_states
from vocabulary.errors import ServiceNotFound, ServiceUnavailable
from vocabulary.names import APP_NAME
from vocabulary.wire import InferenceResult

__all__ = ["PENDING_CHECK_PERIOD_S", "SocketFirstRouter"]

log = logging.getLogger("lis.router")
# How often the router looks for services that no node can host, and counts
# each service's running replicas (the local path needs all of them on its node).
PENDING_CHECK_PERIOD_S = 2.0


class SocketFirstRouter:
    """Reaches each service over its replicas' local sockets first, its Ray Serve handle second.

    A service whose running replicas all share this node gets requests over
    their Unix sockets (``serve_app._local``); any other service, and any
    request no local replica took, goes through the deployment handle.
    """

    def __init__(self, services: list[ServiceInfo], handles: dict[str, DeploymentHandle],
                 feedback: DeploymentHandle | None,
                 demands: Mapping[str, Mapping[str, float]] | None = None,
                 local: Mapping[str, LocalLimits] | None = None,
                 pipelines: Mapping[str, DeploymentHandle] | None = None) -> None:
        self.services = {info.name: info for info in services}
        self.pipelines = dict(pipelines or {})
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
        return {"version": found["version"], "labels": found["labels"],
                "input_size": found.get("input_size"), "runtime": found.get("runtime"),
                "input_shape": found.get("input_shape")}

    async def pipeline_states(self) -> dict[str, dict[str, Any]]:
        """Each pipeline's counters and state from its replica; Ray Serve's state and message
        for one with no replica running (PENDING: no node has its camera)."""
        ray_states = await self._states() if self.pipelines else {}
        names = sorted(self.pipelines)
        found = await asyncio.gather(*(
            self._pipeline_stats(name, ray_states.get(pipeline_deployment(name), {}))
            for name in names))
        return dict(zip(names, found))

    async def _pipeline_stats(self, name: str, ray_state: dict[str, Any]) -> dict[str, Any]:
        problem = ray_state.get("message") or ""
        if ray_state.get("replicas", {}).get("RUNNING"):
            try:
                return await asyncio.wait_for(self.pipelines[name].stats.remote(), 5)
            except Exception as error:  # noqa: BLE001 - a listing must not fail for one
                problem = f"{type(error).__name__}: {error}"
        return {"name": name, "state": ray_state.get("state", "STARTING"),
                "last_error": problem or None}

    async def publish_feedback(self, config_id: str, body: bytes, prediction: Any,
                               metadata: dict[str, str]) -> dict[str, Any]:
        if self.feedback is None:
            raise ServiceNotFound(f"feedback config {config_id} (no MLFeedback connector)")
        return await self.feedback.publish.remote(config_id, body, prediction, metadata)
