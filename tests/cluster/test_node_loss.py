"""Losing worker nodes (``_scenarios/node_loss.py``).

Two x86-64 nodes, a Jetson and a Pi, each service on its platform. The x86-64
node running the slow service dies while that service answers requests; later
the only Jetson dies, and a new Jetson joins.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

JETSON_MISSING = "pending: no node offers connector-platform:Aarch64JTX2"


@pytest.fixture(scope="module")
def seen(run_scenario, tiny_classifier_artifact: Path, slow_classifier_artifact: Path) -> dict:
    run = run_scenario("node_loss", model=str(tiny_classifier_artifact),
                       slow_model=str(slow_classifier_artifact))
    assert run.exit_code == 0, run.log_tail
    return run.seen


def test_requests_in_flight_on_a_lost_node_get_a_lis_error_not_a_hang(seen: dict) -> None:
    answers = seen["in_flight"]
    assert answers and all(a["status"] in (200, 500, 503) for a in answers), answers
    failed = [a for a in answers if a["status"] != 200]
    assert failed, "the node died before any request was lost: nothing was shown"
    assert all(a["type"] in ("InferenceFailed", "ServiceUnavailable") for a in failed)
    assert all("replica" in a["message"] for a in failed)


def test_the_lost_replica_is_placed_on_the_other_x86_node(seen: dict) -> None:
    before, after = seen["slow_node_before"], seen["slow_node_after"]
    assert {before, after} == {"x86_a", "x86_b"}
    assert seen["slow_answer_after"] == 200


def test_the_rest_of_the_cluster_keeps_serving(seen: dict) -> None:
    assert seen["others_right_after_x86_loss"] == {"jetsonClassifier": 200, "piClassifier": 200}
    assert seen["others_after_jetson_loss"] == {"x86Slow": 200, "piClassifier": 200}


def test_a_service_with_no_eligible_node_left_is_pending_with_the_reason(seen: dict) -> None:
    jetson = seen["jetson_after_loss"]
    assert (jetson["state"], jetson["message"]) == ("PENDING", JETSON_MISSING)
    assert f"why: {JETSON_MISSING}" in seen["status_after_jetson_loss"]["output"]
    # A request is refused at once with the reason instead of waiting out its timeout.
    refused = seen["jetson_request_while_pending"]
    assert (refused["status"], refused["type"]) == (503, "ServiceUnavailable")
    assert JETSON_MISSING in refused["message"]


def test_the_pending_service_starts_when_a_node_of_its_platform_joins(seen: dict) -> None:
    assert seen["jetson_after_rejoin"]["state"] == "RUNNING"
    assert seen["jetson_node_after_rejoin"] == seen["nodes"]["jetson_2"]
