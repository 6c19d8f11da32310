"""What the HTTP ingress has answered, per service, in Prometheus's text format.

On one box lis serves HTTP with its own server (``serve_app._http_server``),
so Ray Serve's proxy metrics never see a request; ``GET /metrics`` is where a
scraper finds them instead. One ingress answers every HTTP request of the
cluster, so its counts are the whole service's. In-cluster SDK calls over a
Ray Serve handle do not pass the ingress and are not counted here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from vocabulary.wire import StageTimes

__all__ = ["UNKNOWN_SERVICE", "RequestMetrics", "pipeline_metrics"]

# Requests for a name that is no service are counted under this label: a label
# per name a client made up would grow without bound.
UNKNOWN_SERVICE = "(unknown)"
# Upper bounds of the latency histograms' buckets, in seconds: from a small
# model's millisecond to past the connectors' default 10 s timeout.
BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# What ``generate_latest`` writes: text format 0.0.4. (The client's
# CONTENT_TYPE_LATEST names version 1.0.0, which it sends only to a scraper
# that asked for it in its Accept header.)
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_PLAIN_0_0_4

# The 0.0.4 text format shows each counter's and histogram's creation time as
# an extra ``*_created`` gauge, a series /metrics never had. The switch is for
# the whole process; the ingress's are its only prometheus_client metrics.
prometheus_client.disable_created_metrics()


class RequestMetrics:
    """What the ingress answered and how long it took, per service.

    Besides each answer's whole latency, the replica's own steps (``prepare``:
    decode and preprocess; ``wait``: for the model, behind other requests;
    ``model``: run and output format), which a replica returns with each
    answer: the difference is where a request spent the rest (queues, hops).
    """

    def __init__(self) -> None:
        # A registry of its own, not the client's global one: that one adds the
        # process's and the platform's series, and two ingresses in a process
        # (tests) would register the same names twice.
        self._registry = CollectorRegistry()
        self._answers = Counter(
            "lis_requests_total", "Inference requests answered by the HTTP ingress.",
            ["service", "code"], registry=self._registry)
        self._in_flight = Gauge(
            "lis_requests_in_flight", "Inference requests the HTTP ingress is answering now.",
            ["service"], registry=self._registry)
        self._latency = Histogram(
            "lis_request_duration_seconds",
            "Time from the request's arrival at the ingress to its answer.",
            ["service"], buckets=BUCKETS_S, registry=self._registry)
        self._stages = Histogram(
            "lis_replica_stage_seconds",
            "Time a replica spent in each step of the requests it answered: prepare (decode, "
            "preprocess), wait (for the model), model (run, output format).",
            ["service", "stage"], buckets=BUCKETS_S, registry=self._registry)

    def started(self, service: str) -> None:
        self._in_flight.labels(service).inc()

    def observe(self, service: str, status: int, seconds: float,
                stages_s: StageTimes = ()) -> None:
        """One answer (``started`` was called for it), with the replica's stage times if any."""
        self._in_flight.labels(service).dec()
        self._answers.labels(service, str(status)).inc()
        self._latency.labels(service).observe(seconds)
        for stage, stage_s in stages_s:
            self._stages.labels(service, stage).observe(stage_s)

    def render(self) -> str:
        return prometheus_client.generate_latest(self._registry).decode()


# Each pipeline's counters (``GET /pipelines``'s fields) and what /metrics calls them.
_PIPELINE_COUNTERS = (
    ("frames_read", "lis_pipeline_frames_read_total", "Frames (or files) a pipeline read."),
    ("frames_inferred", "lis_pipeline_frames_inferred_total",
     "Frames a pipeline's service answered."),
    ("frames_skipped", "lis_pipeline_frames_skipped_total",
     "Frames read and replaced by a newer one before inference (the latest-frame policy)."),
    ("frames_failed", "lis_pipeline_frames_failed_total",
     "Frames the service could not answer."),
    ("published", "lis_pipeline_results_published_total",
     "Results handed to a pipeline's sinks' broker connection or ML Feedback."),
    ("dropped", "lis_pipeline_results_dropped_total",
     "Results lost: older ones dropped from a full buffer while the broker was away."),
)


class _PipelineCollector:
    """The pipelines' counters as their replicas reported them just now."""

    def __init__(self, states: dict[str, dict[str, Any]]) -> None:
        self._states = states

    def collect(self) -> Iterator[Metric]:
        for key, name, text in _PIPELINE_COUNTERS:
            family = CounterMetricFamily(name.removesuffix("_total"), text, labels=["pipeline"])
            for pipeline, state in sorted(self._states.items()):
                if key in state:
                    family.add_metric([pipeline], float(state[key]))
            yield family
        buffered = GaugeMetricFamily("lis_pipeline_results_buffered",
                                     "Results waiting for the broker.", labels=["pipeline"])
        running = GaugeMetricFamily("lis_pipeline_running",
                                    "1 while a pipeline runs, else 0.", labels=["pipeline"])
        for pipeline, state in sorted(self._states.items()):
            buffered.add_metric([pipeline], float(state.get("buffered", 0)))
            running.add_metric([pipeline], 1.0 if state.get("state") == "RUNNING" else 0.0)
        yield buffered
        yield running


def pipeline_metrics(states: dict[str, dict[str, Any]]) -> str:
    """The pipelines' series in the text format; empty without pipelines."""
    if not states:
        return ""
    registry = CollectorRegistry()
    registry.register(_PipelineCollector(states))  # type: ignore[arg-type]
    return prometheus_client.generate_latest(registry).decode()
