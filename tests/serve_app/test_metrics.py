"""The ingress's /metrics: the series a scrape shows, read with Prometheus's own parser."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from serve_app._metrics import UNKNOWN_SERVICE, RequestMetrics
from vocabulary.wire import StageTimes

Series = tuple[str, tuple[tuple[str, str], ...]]
# The buckets' upper bounds as a scrape spells them, the last one for every answer.
LE = ("0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
      "1.0", "2.5", "5.0", "10.0", "30.0", "+Inf")


def _scrape(metrics: RequestMetrics) -> dict[Series, float]:
    """Each sample of a scrape, by name and (sorted) labels."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(metrics.render())
            for sample in family.samples}


def _series(name: str, **labels: str) -> Series:
    return name, tuple(sorted(labels.items()))


def _histogram(name: str, cumulative: list[int], sum_s: float, **labels: str
               ) -> dict[Series, float]:
    """The samples of one histogram with these cumulative bucket counts, ``+Inf`` last."""
    assert len(cumulative) == len(LE)
    buckets = {_series(f"{name}_bucket", **labels, le=le): count
               for le, count in zip(LE, cumulative)}
    return buckets | {_series(f"{name}_count", **labels): cumulative[-1],
                      _series(f"{name}_sum", **labels): sum_s}


def _answer(metrics: RequestMetrics, service: str, status: int, seconds: float,
            stages_s: StageTimes = ()) -> None:
    metrics.started(service)
    metrics.observe(service, status, seconds, stages_s)


def test_a_scrape_shows_exactly_these_series() -> None:
    metrics = RequestMetrics()
    _answer(metrics, "cls", 200, 0.004, (("prepare", 0.004), ("wait", 0.0), ("model", 0.03)))
    _answer(metrics, "cls", 499, 1.0)  # the caller hung up: no replica steps
    _answer(metrics, UNKNOWN_SERVICE, 404, 0.0005)
    metrics.started("cls")

    duration, stage = "lis_request_duration_seconds", "lis_replica_stage_seconds"
    assert _scrape(metrics) == pytest.approx({
        _series("lis_requests_total", service="cls", code="200"): 1,
        _series("lis_requests_total", service="cls", code="499"): 1,
        _series("lis_requests_total", service="(unknown)", code="404"): 1,
        _series("lis_requests_in_flight", service="cls"): 1,
        _series("lis_requests_in_flight", service="(unknown)"): 0,
        **_histogram(duration, [0, 0, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2], 1.004,
                     service="cls"),
        **_histogram(duration, [1] * 15, 0.0005, service="(unknown)"),
        **_histogram(stage, [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], 0.004,
                     service="cls", stage="prepare"),
        **_histogram(stage, [1] * 15, 0.0, service="cls", stage="wait"),
        **_histogram(stage, [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], 0.03,
                     service="cls", stage="model"),
    })


def test_each_family_is_named_typed_and_explained_before_any_answer() -> None:
    text = RequestMetrics().render()
    assert [line for line in text.splitlines() if line.startswith("# TYPE")] == [
        "# TYPE lis_requests_total counter",
        "# TYPE lis_requests_in_flight gauge",
        "# TYPE lis_request_duration_seconds histogram",
        "# TYPE lis_replica_stage_seconds histogram",
    ]
    # The parser names a counter's family without its samples' _total.
    helps = {family.name: family.documentation
             for family in text_string_to_metric_families(text)}
    assert helps == {
        "lis_requests": "Inference requests answered by the HTTP ingress.",
        "lis_requests_in_flight": "Inference requests the HTTP ingress is answering now.",
        "lis_request_duration_seconds":
            "Time from the request's arrival at the ingress to its answer.",
        "lis_replica_stage_seconds":
            "Time a replica spent in each step of the requests it answered: prepare (decode, "
            "preprocess), wait (for the model), model (run, output format).",
    }
    assert _scrape(RequestMetrics()) == {}


def test_latency_buckets_are_cumulative_and_bounds_inclusive() -> None:
    metrics = RequestMetrics()
    for seconds in (0.004, 0.005, 0.3, 100.0):
        _answer(metrics, "cls", 200, seconds)
    scrape = _scrape(metrics)
    buckets = [scrape[_series("lis_request_duration_seconds_bucket", service="cls", le=le)]
               for le in LE]
    # 0.005 itself is "less than or equal"; 100 s is past the last bound.
    assert buckets == [0, 0, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 4]
    assert scrape[_series("lis_request_duration_seconds_sum", service="cls")] == \
        pytest.approx(100.309)


def test_label_values_are_escaped() -> None:
    metrics = RequestMetrics()
    _answer(metrics, 'a"b\\c\nd', 200, 0.1)
    assert 'service="a\\"b\\\\c\\nd"' in metrics.render()
    assert _scrape(metrics)[_series("lis_requests_total", service='a"b\\c\nd', code="200")] == 1


def test_requests_in_flight_rise_on_arrival_and_fall_on_answer() -> None:
    metrics = RequestMetrics()
    in_flight = _series("lis_requests_in_flight", service="cls")
    metrics.started("cls")
    metrics.started("cls")
    assert _scrape(metrics)[in_flight] == 2
    metrics.observe("cls", 200, 0.01)
    assert _scrape(metrics)[in_flight] == 1


def test_each_ingress_counts_its_own_answers() -> None:
    first, second = RequestMetrics(), RequestMetrics()
    _answer(first, "cls", 200, 0.01)
    assert _scrape(first)[_series("lis_requests_total", service="cls", code="200")] == 1
    assert _scrape(second) == {}
