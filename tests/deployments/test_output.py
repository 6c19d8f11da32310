"""The connectors' output formats, parsed the way their users' code parses them."""

from __future__ import annotations

import ast
import json

import numpy as np

from deployments.output import (
    detections,
    format_classification,
    format_detection,
    softmax_if_needed,
)


def test_classification_text_parses_like_the_seed_example() -> None:
    text = format_classification(np.array([[0.3, 0.1, 0.6]], np.float32))
    assert text.startswith("[") and text.endswith("]") and " " not in text
    inner = text[1:-1]
    parsed = np.fromstring(inner, count=len(inner.split(",")), sep=",")
    np.testing.assert_allclose(parsed, [0.3, 0.1, 0.6], rtol=1e-6)


def test_logits_become_probabilities_but_probabilities_stay() -> None:
    assert softmax_if_needed(np.array([0.2, 0.8])).tolist() == [0.2, 0.8]
    probabilities = softmax_if_needed(np.array([2.0, -1.0, 0.5]))
    assert abs(probabilities.sum() - 1) < 1e-12
    assert probabilities.argmax() == 0


def test_detection_rows_dropped_sorted_scaled_clipped() -> None:
    ids = np.array([[[1], [-1], [0], [2]]], np.float32)
    scores = np.array([[[0.5], [0.99], [0.9], [0.04]]], np.float32)
    boxes = np.array([[[0, 0, 256, 512], [1, 1, 2, 2], [-10, 100, 600, 200],
                       [256, 256, 512, 512]]], np.float32)
    rows = detections(ids, scores, boxes, 512, 512)
    assert [row[0] for row in rows] == [0, 1, 2]  # padding row (-1) gone, by score
    assert rows[0][2:] == [0.0, 100 / 512, 1.0, 200 / 512]  # clipped to [0, 1]
    assert all(isinstance(row[0], int) for row in rows)
    assert detections(ids, scores, boxes, 512, 512, score_threshold=0.3)[-1][0] == 1
    assert len(detections(ids, scores, boxes, 512, 512, top_k=1)) == 1


def test_detection_text_is_json_and_a_python_literal() -> None:
    rows = [[14, 0.9384938478469849, 0.37, 0.51, 0.66, 0.85], [12, 0.04, 0.0, 0.4, 0.3, 0.9]]
    text = format_detection(rows)
    assert json.loads(text) == {"prediction": rows}
    assert eval(text) == {"prediction": rows}  # noqa: S307 - the seed example's own parsing
    assert ast.literal_eval(text) == {"prediction": rows}


def test_non_finite_scores_still_parse() -> None:
    rows = detections(np.array([0.0]), np.array([np.nan]), np.array([[0, 0, np.inf, 1]]), 10, 10)
    json.loads(format_detection(rows))
    format_classification(np.array([np.nan, np.inf]))


# --- the exact text a caller receives -------------------------------------------------------
# The expected strings are written out by hand: a float32 score shows as the
# shortest repr of the float64 it widens to, which is what callers parse.


def test_classification_text_is_exact_for_float32_scores() -> None:
    text = format_classification(np.array([[0.3, 0.1, 0.6]], np.float32))
    assert text == "[0.30000001192092896,0.10000000149011612,0.6000000238418579]"


def test_classification_text_uses_python_float_repr() -> None:
    assert format_classification(np.array([0.25, 0.5, 0.25])) == "[0.25,0.5,0.25]"
    assert format_classification(np.array([1e-05, 0.99999])) == "[1e-05,0.99999]"
    assert format_classification(np.array([1, 0])) == "[1.0,0.0]"


def test_classification_text_of_no_classes_and_of_non_finite_scores() -> None:
    assert format_classification(np.array([])) == "[]"
    assert format_classification(np.array([np.nan, np.inf, -np.inf, 0.5])) == "[0.0,1.0,0.0,0.5]"


def test_classification_answer_of_probabilities_and_of_logits() -> None:
    probabilities = np.array([[0.25, 0.75]], np.float32)
    assert format_classification(softmax_if_needed(probabilities)) == "[0.25,0.75]"
    # All-zero logits (sum 0, not a distribution) become a uniform one.
    assert format_classification(softmax_if_needed(np.zeros((1, 4), np.float32))) == \
        "[0.25,0.25,0.25,0.25]"


def _gluoncv_outputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A detector's (class ids, scores, boxes), batch of one, with one padding row (-1)."""
    ids = np.array([[[1], [-1], [0], [2]]], np.float32)
    scores = np.array([[[0.5], [0.99], [0.9], [0.04]]], np.float32)
    boxes = np.array([[[0, 0, 256, 512], [1, 1, 2, 2], [-10, 100, 600, 200],
                       [256, 256, 512, 512]]], np.float32)
    return ids, scores, boxes


def test_detection_text_is_exact() -> None:
    text = format_detection(detections(*_gluoncv_outputs(), 512, 512))
    assert text == ('{"prediction": [[0, 0.8999999761581421, 0.0, 0.1953125, 1.0, 0.390625], '
                    '[1, 0.5, 0.0, 0.0, 0.5, 1.0], '
                    '[2, 0.03999999910593033, 0.5, 0.5, 1.0, 1.0]]}')


def test_detection_text_with_a_threshold_keeps_scores_at_it() -> None:
    text = format_detection(detections(*_gluoncv_outputs(), 512, 512, score_threshold=0.5))
    assert text == ('{"prediction": [[0, 0.8999999761581421, 0.0, 0.1953125, 1.0, 0.390625], '
                    '[1, 0.5, 0.0, 0.0, 0.5, 1.0]]}')


def test_detection_text_with_top_k() -> None:
    assert format_detection(detections(*_gluoncv_outputs(), 512, 512, top_k=1)) == \
        '{"prediction": [[0, 0.8999999761581421, 0.0, 0.1953125, 1.0, 0.390625]]}'
    assert format_detection(detections(*_gluoncv_outputs(), 512, 512, top_k=5)) == \
        format_detection(detections(*_gluoncv_outputs(), 512, 512))


def test_detection_text_when_nothing_is_detected() -> None:
    assert format_detection([]) == '{"prediction": []}'
    only_padding = detections(np.array([-1.0, -1.0]), np.array([0.0, 0.0]), np.zeros((2, 4)),
                              300, 300)
    assert format_detection(only_padding) == '{"prediction": []}'
    assert format_detection(detections(*_gluoncv_outputs(), 512, 512, score_threshold=0.95)) == \
        '{"prediction": []}'


def test_detection_ties_keep_the_models_order_and_boxes_scale_per_axis() -> None:
    rows = detections(np.array([3.0, 1.0]), np.array([0.5, 0.5]),
                      np.array([[0, 0, 200, 100], [50, 25, 100, 50]]), 200, 100)
    assert format_detection(rows) == ('{"prediction": [[3, 0.5, 0.0, 0.0, 1.0, 1.0], '
                                      '[1, 0.5, 0.25, 0.25, 0.5, 0.5]]}')


def test_detection_text_of_a_nan_score_and_a_negative_infinite_coordinate() -> None:
    rows = detections(np.array([0.0]), np.array([np.nan]), np.array([[-np.inf, 0, 5, 5]]), 10, 10)
    assert format_detection(rows) == '{"prediction": [[0, 0.0, 0.0, 0.0, 0.5, 0.5]]}'
