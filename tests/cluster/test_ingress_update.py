"""A single box's direct ingress when the services change (``_scenarios/ingress_update.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def seen(run_scenario, tiny_classifier_artifact: Path) -> dict:
    run = run_scenario("ingress_update", model=str(tiny_classifier_artifact))
    assert run.exit_code == 0, run.log_tail
    return run.seen


def test_a_new_service_replaces_the_ingress_on_the_same_port(seen: dict) -> None:
    assert seen["first_before"] == 200
    assert seen["ingress_before"] is not None
    # A new replica process owns the port now, and answers for old and new services.
    assert seen["ingress_after"] not in (None, seen["ingress_before"])
    assert (seen["first_after"], seen["second_after"]) == (200, 200)


def test_the_port_is_dark_only_while_the_ingress_is_swapped(seen: dict) -> None:
    # One ingress replica owns the port, so a swap leaves it unanswered for a
    # moment (the old one drains, then the new one binds), not a failure: every
    # try before the new config was deployed, and after its ingress listens, is answered.
    polls, swap_from, swap_to = seen["polls"], seen["swap_from"], seen["swap_to"]
    assert polls[:swap_from] and all(polls[:swap_from]), polls[:swap_from]
    assert polls[swap_to:] and all(polls[swap_to:]), polls[swap_to:]


def test_an_unchanged_redeploy_keeps_the_ingress(seen: dict) -> None:
    assert seen["ingress_unchanged"] == seen["ingress_after"]
