"""The ingress's /metrics text: Prometheus's exposition format, cumulative buckets."""

from __future__ import annotations

from deployments.service import StageTimes
from serve_app._metrics import BUCKETS_S, RequestMetrics


def _lines(metrics: RequestMetrics) -> dict[str, float]:
    text = metrics.render()
    assert text.endswith("\n")
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if not line.startswith("#")}


def _answer(metrics: RequestMetrics, service: str, status: int, seconds: float,
            stages_s: StageTimes = ()) -> None:
    metrics.started(service)
    metrics.observe(service, status, seconds, stages_s)


def test_answers_are_counted_by_service_and_code() -> None:
    metrics = RequestMetrics()
    for status in (200, 200, 504):
        _answer(metrics, "cls", status, 0.01)
    _answer(metrics, "det", 200, 0.2)
    lines = _lines(metrics)
    assert lines['lis_requests_total{service="cls",code="200"}'] == 2
    assert lines['lis_requests_total{service="cls",code="504"}'] == 1
    assert lines['lis_requests_total{service="det",code="200"}'] == 1


def test_latency_buckets_are_cumulative_and_bounds_inclusive() -> None:
    metrics = RequestMetrics()
    for seconds in (0.004, 0.005, 0.3, 100.0):
        _answer(metrics, "cls", 200, seconds)
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
    _answer(metrics, 'a"b\\c', 200, 0.1)
    assert 'service="a\\"b\\\\c"' in metrics.render()


def test_requests_in_flight_rise_on_arrival_and_fall_on_answer() -> None:
    metrics = RequestMetrics()
    metrics.started("cls")
    metrics.started("cls")
    assert _lines(metrics)['lis_requests_in_flight{service="cls"}'] == 2
    metrics.observe("cls", 200, 0.01)
    assert _lines(metrics)['lis_requests_in_flight{service="cls"}'] == 1


def test_replica_stages_get_a_histogram_each() -> None:
    metrics = RequestMetrics()
    _answer(metrics, "cls", 200, 0.05, (("prepare", 0.004), ("wait", 0.0), ("model", 0.03)))
    _answer(metrics, "cls", 200, 0.05, (("prepare", 0.006), ("wait", 0.01), ("model", 0.03)))
    _answer(metrics, "cls", 504, 10.0)  # no answer, no stages
    lines = _lines(metrics)

    def stage(stage: str, part: str) -> float:
        return lines[f'lis_replica_stage_seconds_{part}{{service="cls",stage="{stage}"}}']

    assert [stage(name, "count") for name in ("prepare", "wait", "model")] == [2, 2, 2]
    assert abs(stage("prepare", "sum") - 0.010) < 1e-9
    assert lines['lis_replica_stage_seconds_bucket{service="cls",stage="prepare",le="0.005"}'] == 1
    assert lines['lis_replica_stage_seconds_bucket{service="cls",stage="wait",le="0.001"}'] == 1
    assert lines['lis_request_duration_seconds_count{service="cls"}'] == 3
