"""What the HTTP ingress has answered, per service, in Prometheus's text format.

On one box lis serves HTTP with its own server (``serve_app._http_server``),
so Ray Serve's proxy metrics never see a request; ``GET /metrics`` is where a
scraper finds them instead. One ingress answers every HTTP request of the
cluster, so its counts are the whole service's. In-cluster SDK calls over a
Ray Serve handle do not pass the ingress and are not counted here.

The ingress runs on one event loop, so the counts need no lock.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deployments.service import StageTimes

__all__ = ["UNKNOWN_SERVICE", "RequestMetrics"]

# Requests for a name that is no service are counted under this label: a label
# per name a client made up would grow without bound.
UNKNOWN_SERVICE = "(unknown)"
# Upper bounds of the latency histograms' buckets, in seconds: from a small
# model's millisecond to past the connectors' default 10 s timeout.
BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Labels = tuple[tuple[str, str], ...]


class _Histogram:
    def __init__(self) -> None:
        self.buckets = [0] * len(BUCKETS_S)  # not cumulative; summed when rendered
        self.count = 0
        self.sum_s = 0.0

    def observe(self, seconds: float) -> None:
        index = bisect.bisect_left(BUCKETS_S, seconds)
        if index < len(BUCKETS_S):
            self.buckets[index] += 1
        self.count += 1
        self.sum_s += seconds

    def render(self, name: str, labels: Labels) -> list[str]:
        label = _labels(labels)
        lines = []
        cumulative = 0
        for bound, count in zip(BUCKETS_S, self.buckets):
            cumulative += count
            lines.append(f'{name}_bucket{{{label},le="{bound:g}"}} {cumulative}')
        return lines + [f'{name}_bucket{{{label},le="+Inf"}} {self.count}',
                        f"{name}_sum{{{label}}} {self.sum_s:.6f}",
                        f"{name}_count{{{label}}} {self.count}"]


class RequestMetrics:
    """What the ingress answered and how long it took, per service.

    Besides each answer's whole latency, the replica's own steps (``prepare``:
    decode and preprocess; ``wait``: for the model, behind other requests;
    ``model``: run and output format), which a replica returns with each
    answer: the difference is where a request spent the rest (queues, hops).
    """

    def __init__(self) -> None:
        self._answers: defaultdict[tuple[str, int], int] = defaultdict(int)
        self._latency: defaultdict[str, _Histogram] = defaultdict(_Histogram)
        self._stages: defaultdict[tuple[str, str], _Histogram] = defaultdict(_Histogram)
        self._in_flight: defaultdict[str, int] = defaultdict(int)

    def started(self, service: str) -> None:
        self._in_flight[service] += 1

    def observe(self, service: str, status: int, seconds: float,
                stages_s: StageTimes = ()) -> None:
        """One answer (``started`` was called for it), with the replica's stage times if any."""
        self._in_flight[service] -= 1
        self._answers[(service, status)] += 1
        self._latency[service].observe(seconds)
        for stage, stage_s in stages_s:
            self._stages[(service, stage)].observe(stage_s)

    def render(self) -> str:
        lines = _family("lis_requests_total", "counter",
                        "Inference requests answered by the HTTP ingress.")
        for (service, status), count in sorted(self._answers.items()):
            labels = _labels((("service", service), ("code", str(status))))
            lines.append(f"lis_requests_total{{{labels}}} {count}")
        lines += _family("lis_requests_in_flight", "gauge",
                         "Inference requests the HTTP ingress is answering now.")
        for service, count in sorted(self._in_flight.items()):
            lines.append(f"lis_requests_in_flight{{{_labels((('service', service),))}}} {count}")
        lines += _family("lis_request_duration_seconds", "histogram",
                         "Time from the request's arrival at the ingress to its answer.")
        for service, histogram in sorted(self._latency.items()):
            lines += histogram.render("lis_request_duration_seconds", (("service", service),))
        lines += _family("lis_replica_stage_seconds", "histogram",
                         "Time a replica spent in each step of the requests it answered: "
                         "prepare (decode, preprocess), wait (for the model), model (run, "
                         "output format).")
        for (service, stage), histogram in sorted(self._stages.items()):
            lines += histogram.render("lis_replica_stage_seconds",
                                      (("service", service), ("stage", stage)))
        return "\n".join(lines) + "\n"


def _family(name: str, kind: str, help_text: str) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]


def _labels(labels: Labels) -> str:
    return ",".join(f'{key}="{_escape(value)}"' for key, value in labels)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
