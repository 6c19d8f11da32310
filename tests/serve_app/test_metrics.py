"""The ingress's /metrics text: Prometheus's exposition format, cumulative buckets."""

from __future__ import annotations

from serve_app._metrics import BUCKETS_S, RequestMetrics


def _lines(metrics: RequestMetrics) -> dict[str, float]:
    text = metrics.render()
    assert text.endswith("\n")
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if not line.startswith("#")}


def test_answers_are_counted_by_service_and_code() -> None:
    metrics = RequestMetrics()
    for status in (200, 200, 504):
        metrics.observe("cls", status, 0.01)
    metrics.observe("det", 200, 0.2)
    lines = _lines(metrics)
    assert lines['lis_requests_total{service="cls",code="200"}'] == 2
    assert lines['lis_requests_total{service="cls",code="504"}'] == 1
    assert lines['lis_requests_total{service="det",code="200"}'] == 1


def test_latency_buckets_are_cumulative_and_bounds_inclusive() -> None:
    metrics = RequestMetrics()
    for seconds in (0.004, 0.005, 0.3, 100.0):
        metrics.observe("cls", 200, seconds)
    lines = _lines(metrics)

    def bucket(bound: str) -> float:
        return lines[f'lis_request_duration_seconds_bucket{{service="cls",le="{bound}"}}']

    assert bucket("0.005") == 2  # 0.005 itself is "less than or equal"
    assert bucket("0.25") == 2
    assert bucket("0.5") == 3
    assert bucket(f"{BUCKETS_S[-1]:g}") == 3  # 100 s is past the last bound
    assert bucket("+Inf") == 4
    assert lines['lis_request_duration_seconds_count{service="cls"}'] == 4
    assert abs(lines['lis_request_duration_seconds_sum{service="cls"}'] - 100.309) < 1e-6


def test_label_values_are_escaped() -> None:
    metrics = RequestMetrics()
    metrics.observe('a"b\\c', 200, 0.1)
    assert 'service="a\\"b\\\\c"' in metrics.render()
