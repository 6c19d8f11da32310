"""Rolling model updates under continuous load (``_scenarios/rolling_update.py``).

A service with two replicas serves model A while a client sends requests
throughout; ``lis up`` switches it to model B (a new path), then model C is put
at B's path and ``lis reload`` picks it up. The three models answer the same
image differently, so every answer shows which model gave it.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from deployments.archive import artifact_version

pytestmark = pytest.mark.slow

SERVICE = "rollingClassifier"


@pytest.fixture(scope="module")
def seen(run_scenario, classifier_variants: list[Path]) -> dict:
    run = run_scenario("rolling_update", models=[str(m) for m in classifier_variants])
    assert run.exit_code == 0, run.log_tail
    return run.seen


@pytest.fixture(scope="module")
def versions(classifier_variants: list[Path]) -> list[str]:
    return [artifact_version(model) for model in classifier_variants]


def test_no_request_fails_during_either_update(seen: dict) -> None:
    answers = seen["answers"]
    assert len(answers) > seen["reload_to"] > seen["reload_from"] > seen["up_b_to"], \
        "the client was not sending throughout"
    assert [a for a in answers if a[0] != 200] == []


def test_the_answers_switch_from_model_to_model(seen: dict) -> None:
    answers = [body for _, body in seen["answers"]]
    a, b, c = answers[seen["up_b_from"] - 1], answers[seen["reload_from"] - 1], answers[-1]
    assert len({a, b, c}) == 3, "the three models must answer differently"
    # Answers from A until `lis up` starts, B between the two updates, then C
    # (skipping the one request each command's return may have overtaken).
    runs = [body for body, _ in itertools.groupby(answers)]
    assert runs[0] == a and runs[-1] == c and set(runs) == {a, b, c}
    assert set(answers[:seen["up_b_from"]]) == {a}
    assert set(answers[seen["up_b_to"] + 1:seen["reload_from"]]) == {b}
    assert set(answers[seen["reload_to"] + 1:]) == {c}


def test_the_new_version_is_visible_when_each_command_returns(seen: dict,
                                                             versions: list[str]) -> None:
    assert seen["versions_a"] == [versions[0]]
    assert seen["up_b"]["exit"] == 0
    assert (seen["services_b"]["version"], seen["versions_b"]) == (versions[1], [versions[1]])
    assert seen["services_b"]["replicas"]["RUNNING"] == 2
    reload = seen["reload"]
    assert reload["exit"] == 0, reload["output"]
    assert f"now {versions[1]}; model {versions[2]}" in reload["output"]
    assert f"serves version {versions[2]} on 2 replica(s)" in reload["output"]
    assert (seen["services_c"]["version"], seen["versions_c"]) == (versions[2], [versions[2]])


def test_replicas_are_replaced_one_at_a_time_without_losing_capacity(seen: dict) -> None:
    samples = seen["replica_samples"]
    assert samples
    assert min(s.get("RUNNING", 0) for s in samples) >= 2
    assert max(s.get("STARTING", 0) for s in samples) == 1
