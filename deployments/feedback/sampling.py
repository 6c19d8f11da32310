"""Which samples are worth uploading: the connector's four sampling strategies.

For a classification prediction (a list of per-class probabilities ``p``), as
the ML Feedback connector defines them:

* ``RANDOM_SAMPLING(rate)``: keep when ``random() < rate``;
* ``LEAST_CONFIDENCE(threshold)``: keep when ``max(p) < threshold``;
* ``MARGIN(threshold)``: keep when ``top1 - top2 < threshold`` (a single class
  has ``top2 = 0``);
* ``ENTROPY(threshold)``: rescale ``p`` to sum to 1, keep when its entropy in
  nats is ``> threshold`` (``[.5, .25, .25]`` has entropy 1.0397).

The connector never said how the confidence strategies read a detection
prediction, ``{"prediction": [[class_id, score, xmin, ymin, xmax, ymax], ...]}``.
lis's rule: the strategies read the vector of detection *scores*, as they read
probabilities, so

* the image's confidence is its highest detection score (LEAST_CONFIDENCE);
* MARGIN compares the two highest scores (a single detection: ``top2 = 0``);
* ENTROPY normalises the score vector to sum to 1;
* rows with class id -1 (GluonCV's padding) are not detections;
* an image with no detection is the least confident sample there is: every
  confidence strategy keeps it.

A score vector that sums to 0 counts as uniform (the most uncertain).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

from vocabulary.errors import InvalidArgument
from vocabulary.feedback_specs import (
    Entropy,
    LeastConfidence,
    Margin,
    RandomSampling,
    SamplingStrategy,
)

__all__ = ["entropy", "keep_sample", "margin", "prediction_scores"]

_DETECTION_ROW = "[class_id, score, xmin, ymin, xmax, ymax]"


def keep_sample(strategy: SamplingStrategy | None, prediction: Any, rng: random.Random) -> bool:
    """Whether ``strategy`` keeps a sample with this model prediction.

    Raises ``InvalidArgument`` when the prediction is neither a list of
    probabilities nor a detection dict, whatever the strategy, so a malformed
    prediction is never uploaded.
    """
    scores = prediction_scores(prediction)
    if strategy is None:
        return True
    if isinstance(strategy, RandomSampling):
        return rng.random() < strategy.rate
    if not scores:
        return True  # no detection at all: the least confident sample there is
    if isinstance(strategy, LeastConfidence):
        return max(scores) < strategy.threshold
    if isinstance(strategy, Margin):
        return margin(scores) < strategy.threshold
    assert isinstance(strategy, Entropy), strategy
    return entropy(scores) > strategy.threshold


def prediction_scores(prediction: Any) -> list[float]:
    """The scores the strategies read: probabilities, or detection scores (maybe none)."""
    if isinstance(prediction, Mapping):
        return _detection_scores(prediction)
    if isinstance(prediction, Sequence) and not isinstance(prediction, (str, bytes)):
        if not prediction:
            raise InvalidArgument("ModelPrediction", prediction, "at least one class probability")
        return [_score("ModelPrediction", value, prediction) for value in prediction]
    raise InvalidArgument("ModelPrediction", prediction,
                          "a list of probabilities or {'prediction': [...]} for detection")


def margin(scores: Sequence[float]) -> float:
    """Highest score minus the second highest (0 for the second when there is one score)."""
    top = sorted(scores, reverse=True)[:2] + [0.0]
    return top[0] - top[1]


def entropy(scores: Sequence[float]) -> float:
    """Entropy in nats of the scores rescaled to sum to 1."""
    total = math.fsum(scores)
    if total <= 0:
        return math.log(len(scores))
    return -math.fsum(p / total * math.log(p / total) for p in scores if p > 0)


def _detection_scores(prediction: Mapping[str, Any]) -> list[float]:
    rows = prediction.get("prediction")
    if set(prediction) != {"prediction"} or not isinstance(rows, list):
        raise InvalidArgument("ModelPrediction", prediction,
                              "{'prediction': [[class_id, score, xmin, ymin, xmax, ymax], ...]}")
    scores = []
    for row in rows:
        if not isinstance(row, (list, tuple)) or len(row) != 6:
            raise InvalidArgument("ModelPrediction", row, f"a detection row {_DETECTION_ROW}")
        if _number("ModelPrediction", row[0], row) != -1:  # -1: padding, not a detection
            scores.append(_score("ModelPrediction", row[1], row))
    return scores


def _score(parameter: str, value: Any, context: Any) -> float:
    score = _number(parameter, value, context)
    if score < 0:
        raise InvalidArgument(parameter, context, "scores of at least 0")
    return score


def _number(parameter: str, value: Any, context: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidArgument(parameter, context, "finite numbers")
    return float(value)
