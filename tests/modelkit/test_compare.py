"""How `lis compile` pairs a detector's detections with their twins before comparing them."""

from __future__ import annotations

import numpy as np
import pytest

from modelkit.compile import compare_outputs, pair_detections
from vocabulary.errors import CompileError


def _detector(rows: list[tuple[int, float, tuple[float, float, float, float]]],
              k: int = 4) -> list[np.ndarray]:
    """A detector's three outputs from (class id, score, box) rows, padded to ``k``."""
    ids = np.full((1, k, 1), -1, dtype=np.float32)
    scores = np.full((1, k, 1), -1, dtype=np.float32)
    boxes = np.full((1, k, 4), -1, dtype=np.float32)
    for i, (class_id, score, box) in enumerate(rows):
        ids[0, i, 0], scores[0, i, 0], boxes[0, i] = class_id, score, box
    return [ids, scores, boxes]


_A = (10.0, 10.0, 100.0, 100.0)
_B = (300.0, 200.0, 500.0, 400.0)


def test_near_tied_detections_pair_by_their_boxes() -> None:
    """Two detections of one class 4e-4 apart come out in the other order: each is paired
    with the one whose box matches, not the one in its place."""
    reference = _detector([(3, 0.9500, _A), (3, 0.9496, _B), (1, 0.5, _A)])
    compiled = _detector([(3, 0.9499, (300.01, 200.0, 500.0, 400.0)), (3, 0.9497, _A),
                          (1, 0.5, _A)])
    assert compare_outputs(reference, compiled) == pytest.approx(0.01, abs=1e-4)
    twins = pair_detections(reference[0][0, :3, 0], reference[1][0, :3, 0],
                            compiled[0][0, :3, 0], compiled[1][0, :3, 0],
                            reference_boxes=reference[2][0, :3], boxes=compiled[2][0, :3])
    assert twins.tolist() == [1, 0, 2]


def test_without_boxes_the_nearest_in_the_list_is_the_twin() -> None:
    twins = pair_detections(np.array([3, 3]), np.array([0.95, 0.9496]), np.array([3, 3]),
                            np.array([0.9499, 0.9497]))
    assert twins.tolist() == [0, 1]


def test_a_box_that_moved_still_fails_verification() -> None:
    reference = _detector([(3, 0.95, _A), (1, 0.5, _B)])
    compiled = _detector([(3, 0.95, (10.0, 10.0, 106.0, 100.0)), (1, 0.5, _B)])
    with pytest.raises(CompileError, match=r"verification failed: DLR and MXNet outputs differ "
                                           r"by 6"):
        compare_outputs(reference, compiled)


def test_a_detection_of_another_class_fails_verification() -> None:
    reference = _detector([(3, 0.95, _A)])
    compiled = _detector([(2, 0.95, _A)])
    with pytest.raises(CompileError, match="detect different class ids"):
        compare_outputs(reference, compiled)
