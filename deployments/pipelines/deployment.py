"""A pipeline as a Ray Serve deployment: one replica runs one ``PipelineRunner``.

The pipeline calls its service over a replica's socket when one runs on its node
(``deployments.local_caller``: the short road the ingress takes, the replica
keeping its limit), else through a Ray Serve handle, where Ray Serve picks the
replica and applies the service's limits. Measured on the 2-core reference box
(``make bench``), the handle cost a demo SSD pipeline 0.77x the service's HTTP
throughput at concurrency 1.
Its health check fails when the loop has died, and Ray Serve then replaces
the replica: a new one starts the pipeline again (a folder source goes on from
its record). One replica per pipeline: two would read the same camera.

This is the only pipeline module that imports Ray.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import socket
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from deployments.feedback.mqtt import MqttPublisher
from deployments.local_caller import LocalCaller, LocalUnreachable
from deployments.local_socket import current_node_id
from deployments.pipelines.runner import PipelineRunner, ServiceFacts
from deployments.pipelines.sinks import FeedbackResults, MqttResults, ResultSink
from deployments.pipelines.sources import open_source
from deployments.ray_internals import versioned
from vocabulary.errors import InferenceFailed, LisError
from vocabulary.feedback_specs import MqttSpec
from vocabulary.names import camera_resource
from vocabulary.pipeline_specs import GREENGRASS_V2_TOPICS, FeedbackSink, PipelineSpec

__all__ = [
    "CAMERA_RESOURCE_PER_PIPELINE",
    "PIPELINE_DEPLOYMENT_PREFIX",
    "PipelineWorker",
    "build_pipeline",
    "pipeline_actor_options",
    "pipeline_deployment",
]

# Deployment names are ``pipeline.<name>``: a service name has no dot, so none can clash.
PIPELINE_DEPLOYMENT_PREFIX = "pipeline."
# The service enforces its own timeout; the pipeline waits this much longer for a dead replica.
_GUARD_S = 5.0
# A pipeline asks for a sliver of its camera's resource: one camera can feed several pipelines.
CAMERA_RESOURCE_PER_PIPELINE = 0.001


def pipeline_deployment(name: str) -> str:
    """The Ray Serve deployment that runs pipeline ``name``."""
    return f"{PIPELINE_DEPLOYMENT_PREFIX}{name}"


def _as_lis_error(error: Exception, service: str) -> LisError:
    # A replica's LisError comes back as RayTaskError(<cls>), whose ``cause`` is the original.
    cause = getattr(error, "cause", None)
    if isinstance(cause, LisError):
        return cause
    if isinstance(error, LisError):
        return error
    return InferenceFailed(service, f"{type(error).__name__}: {error}")


def _publisher(mqtt: MqttSpec, pipeline: str) -> MqttPublisher:
    # One client per pipeline, with an id of its own: a broker drops the older of two alike.
    base = mqtt.client_id or f"lis-{socket.gethostname()}-{os.getpid()}"
    return MqttPublisher(mqtt.model_copy(update={"client_id": f"{base}-pipeline-{pipeline}"}))


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=16,
                  health_check_period_s=2.0)
class PipelineWorker:
    """Runs one pipeline; ``stats`` is what ``GET /pipelines`` shows."""

    def __init__(self, spec: PipelineSpec, service: DeploymentHandle, timeout_s: float,
                 mqtt: MqttSpec | None = None, feedback: DeploymentHandle | None = None) -> None:
        self._service = service
        self._timeout_s = timeout_s + _GUARD_S
        self._local = LocalCaller(spec.service, current_node_id(), timeout_s)
        self._publisher: MqttPublisher | None = None
        sinks: list[ResultSink] = []
        for sink in spec.sinks:
            if isinstance(sink, FeedbackSink):
                if feedback is not None:
                    sinks.append(FeedbackResults(feedback, sink, spec.name))
                continue
            if self._publisher is None:
                self._publisher = _publisher(mqtt or MqttSpec(), spec.name)
            sinks.append(MqttResults(self._publisher, sink,
                                     sink.topic or GREENGRASS_V2_TOPICS[spec.algorithm]))
        if self._publisher is not None:
            self._publisher.start()
        self.runner = PipelineRunner(spec, open_source(spec), sinks, self._infer, self._describe)
        self.runner.start()

    def _infer(self, body: bytes, content_type: str) -> bytes | str:
        try:
            return self._local.call(body, content_type).body
        except LocalUnreachable:
            pass  # no replica on this node took it: Ray Serve queues it
        try:
            response = self._service.infer.remote(body, content_type, None)
            return response.result(timeout_s=self._timeout_s).body
        except Exception as error:  # noqa: BLE001 - every failure becomes a LisError
            raise _as_lis_error(error, self.runner.spec.service) from error

    def _describe(self) -> ServiceFacts:
        try:
            found = self._service.describe.remote().result(timeout_s=self._timeout_s)
        except Exception as error:  # noqa: BLE001
            raise _as_lis_error(error, self.runner.spec.service) from error
        labels = found.get("labels") or None
        width, height = found.get("input_size") or (512, 512)
        return labels, (int(width), int(height))

    def stats(self) -> dict[str, Any]:
        return {**self.runner.stats(), "broker_connected":
                None if self._publisher is None else self._publisher.connected}

    def check_health(self) -> None:
        if self.runner.crashed is not None or not self.runner.alive:
            raise LisError(f"pipeline {self.runner.spec.name} stopped: "
                           f"{self.runner.crashed or 'its loop ended'}")

    def __del__(self) -> None:
        runner = getattr(self, "runner", None)  # None if the constructor failed early
        if runner is not None:
            runner.stop()
        publisher = getattr(self, "_publisher", None)
        if publisher is not None:
            publisher.close()
        local = getattr(self, "_local", None)
        if local is not None:
            local.close()


def build_pipeline(spec: PipelineSpec, service: Application, timeout_s: float,
                   mqtt: MqttSpec | None, feedback: Application | None,
                   code_version: str = "") -> Application:
    """The bound deployment of pipeline ``spec``, fed by the ``service`` application."""
    version = hashlib.sha256(pickle.dumps((spec, mqtt, timeout_s, code_version))).hexdigest()[:16]
    return versioned(PipelineWorker, version, name=pipeline_deployment(spec.name),
                     num_replicas=1, ray_actor_options=pipeline_actor_options(spec),
                     ).bind(spec, service, timeout_s, mqtt, feedback)


def pipeline_actor_options(spec: PipelineSpec) -> dict[str, Any]:
    """No CPU reserved (its service does the work); on its camera's node if it names one."""
    options: dict[str, Any] = {"num_cpus": 0}
    if spec.camera is not None:
        options["resources"] = {camera_resource(spec.camera): CAMERA_RESOURCE_PER_PIPELINE}
    return options
