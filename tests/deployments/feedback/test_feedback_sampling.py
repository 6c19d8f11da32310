"""The four sampling strategies, for classification and detection predictions."""

from __future__ import annotations

import random

import pytest

from deployments.feedback.sampling import (
    entropy,
    keep_sample,
    margin,
    prediction_scores,
)
from vocabulary.errors import InvalidArgument
from vocabulary.feedback_specs import Entropy, LeastConfidence, Margin, RandomSampling

RNG = random.Random(0)


def detection(*scores: float) -> dict[str, list[list[float]]]:
    return {"prediction": [[0, score, 0.1, 0.1, 0.5, 0.5] for score in scores]}


def test_entropy_is_in_nats_of_the_rescaled_probabilities() -> None:
    assert entropy([0.5, 0.25, 0.25]) == pytest.approx(1.0397, abs=1e-4)
    assert entropy([1.0, 0.5, 0.5]) == pytest.approx(1.0397, abs=1e-4)  # rescaled to sum to 1
    assert entropy([1.0, 0.0]) == 0.0


def test_margin_is_top1_minus_top2() -> None:
    assert margin([0.1, 0.6, 0.3]) == pytest.approx(0.3)
    assert margin([0.8]) == pytest.approx(0.8)


@pytest.mark.parametrize(("strategy", "kept", "dropped"), [
    (LeastConfidence(threshold=0.6), [0.5, 0.3, 0.2], [0.7, 0.2, 0.1]),
    (Margin(threshold=0.2), [0.45, 0.4, 0.15], [0.7, 0.2, 0.1]),
    (Entropy(threshold=1.0), [0.5, 0.25, 0.25], [0.9, 0.05, 0.05]),
    (None, [0.99, 0.01], [])
])
def test_classification_strategies(strategy, kept: list[float], dropped: list[float]) -> None:
    assert keep_sample(strategy, kept, RNG) is True
    if dropped:
        assert keep_sample(strategy, dropped, RNG) is False


def test_thresholds_are_strict() -> None:
    assert keep_sample(LeastConfidence(threshold=0.5), [0.5, 0.5], RNG) is False
    assert keep_sample(Entropy(threshold=0.0), [1.0, 0.0], RNG) is False


@pytest.mark.parametrize(("strategy", "kept", "dropped"), [
    (LeastConfidence(threshold=0.6), detection(0.55, 0.3), detection(0.9, 0.2)),
    (Margin(threshold=0.2), detection(0.8, 0.7), detection(0.9, 0.2)),
    (Entropy(threshold=0.5), detection(0.5, 0.5), detection(0.9)),
])
def test_detection_strategies_read_the_scores(strategy, kept, dropped) -> None:
    assert keep_sample(strategy, kept, RNG) is True
    assert keep_sample(strategy, dropped, RNG) is False


@pytest.mark.parametrize("strategy", [LeastConfidence(threshold=0.0), Margin(threshold=0.0),
                                      Entropy(threshold=100.0)])
def test_an_image_without_detections_is_kept_by_every_confidence_strategy(strategy) -> None:
    assert keep_sample(strategy, {"prediction": []}, RNG) is True
    padding_only = {"prediction": [[-1, 0.0, 0, 0, 0, 0]]}
    assert keep_sample(strategy, padding_only, RNG) is True


def test_padding_rows_are_not_detections() -> None:
    prediction = {"prediction": [[2, 0.9, 0, 0, 1, 1], [-1, 0.95, 0, 0, 0, 0]]}
    assert prediction_scores(prediction) == [0.9]


def test_random_sampling_keeps_when_random_is_below_the_rate() -> None:
    rng, reference = random.Random(42), random.Random(42)
    decisions = [keep_sample(RandomSampling(rate=0.3), [0.5, 0.5], rng) for _ in range(200)]
    assert decisions == [reference.random() < 0.3 for _ in range(200)]
    assert 30 < sum(decisions) < 90
    assert not any(keep_sample(RandomSampling(rate=0.0), [1.0], rng) for _ in range(50))
    assert all(keep_sample(RandomSampling(rate=1.0), [1.0], rng) for _ in range(50))


@pytest.mark.parametrize("prediction", [
    [], "0.3,0.7", [0.3, "0.7"], [0.3, float("nan")], [-0.1, 1.1], {"boxes": []},
    {"prediction": [[0, 0.9, 0, 0]]}, {"prediction": "none"}, 42,
])
def test_a_malformed_prediction_is_refused_whatever_the_strategy(prediction) -> None:
    for strategy in (None, RandomSampling(rate=1.0), LeastConfidence(threshold=1.0)):
        with pytest.raises(InvalidArgument, match="ModelPrediction"):
            keep_sample(strategy, prediction, RNG)
