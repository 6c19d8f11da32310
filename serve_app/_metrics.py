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

__all__ = ["UNKNOWN_SERVICE", "RequestMetrics"]

# Requests for a name that is no service are counted under this label: a label
# per name a client made up would grow without bound.
UNKNOWN_SERVICE = "(unknown)"
# Upper bounds of the latency histogram's buckets, in seconds: from a small
# model's few milliseconds to past the connectors' default 10 s timeout.
BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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


class RequestMetrics:
    """Answers by service and status code, and the latency of each service's answers."""

    def __init__(self) -> None:
        self._answers: defaultdict[tuple[str, int], int] = defaultdict(int)
        self._latency: defaultdict[str, _Histogram] = defaultdict(_Histogram)

    def observe(self, service: str, status: int, seconds: float) -> None:
        self._answers[(service, status)] += 1
        self._latency[service].observe(seconds)

    def render(self) -> str:
        lines = ["# HELP lis_requests_total Inference requests answered by the HTTP ingress.",
                 "# TYPE lis_requests_total counter"]
        for (service, status), count in sorted(self._answers.items()):
            lines.append(f'lis_requests_total{{service="{_escape(service)}",code="{status}"}} '
                         f"{count}")
        lines += ["# HELP lis_request_duration_seconds Time from the request's arrival at the "
                  "ingress to its answer.",
                  "# TYPE lis_request_duration_seconds histogram"]
        for service, histogram in sorted(self._latency.items()):
            label = f'service="{_escape(service)}"'
            cumulative = 0
            for bound, count in zip(BUCKETS_S, histogram.buckets):
                cumulative += count
                lines.append(f'lis_request_duration_seconds_bucket{{{label},le="{bound:g}"}} '
                             f"{cumulative}")
            lines += [
                f'lis_request_duration_seconds_bucket{{{label},le="+Inf"}} {histogram.count}',
                f"lis_request_duration_seconds_sum{{{label}}} {histogram.sum_s:.6f}",
                f"lis_request_duration_seconds_count{{{label}}} {histogram.count}",
            ]
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
