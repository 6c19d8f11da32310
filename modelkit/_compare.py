"""How ``lis compile`` compares the compiled artifact's outputs with its source framework's.

Each output is compared within ``VERIFY_TOLERANCE`` of its scale; a detector's
rows are compared each with its twin (``pair_detections``), padding left out.
"""

from __future__ import annotations

import numpy as np

from vocabulary.errors import CompileError

__all__ = ["VERIFY_TOLERANCE", "compare_outputs", "detection_count", "pair_detections"]

# Verification fails above this difference, relative to each output's scale
# (max(1, largest value)): 1e-3 on probabilities, half a pixel on 512-px boxes.
VERIFY_TOLERANCE = 1e-3


def compare_outputs(reference: list[np.ndarray], actual: list[np.ndarray],
                    tolerance: float = VERIFY_TOLERANCE, framework: str = "MXNet",
                    runtime: str = "DLR") -> float:
    """Largest absolute difference; ``CompileError`` if they disagree.

    A detector's outputs (class ids, scores, boxes) are compared only on the
    rows MXNet filled (class id >= 0): the rest is padding. Each of those rows
    is compared with its twin in DLR's (``pair_detections``), whose class id
    must be equal.
    """
    if [o.shape for o in reference] != [o.shape for o in actual]:
        raise CompileError(f"verification failed: {runtime} output shapes "
                           f"{[o.shape for o in actual]} differ from {framework}'s "
                           f"{[o.shape for o in reference]}")
    if _is_detection(reference):
        reference, actual = _detection_rows(reference, actual, f"{runtime} and {framework}")
    worst = 0.0
    for expected, got in zip(reference, actual):
        if expected.size == 0:
            continue
        diff = float(np.max(np.abs(expected.astype(np.float64) - got)))
        if diff > tolerance * max(1.0, float(np.max(np.abs(expected)))):
            raise CompileError(f"verification failed: {runtime} and {framework} outputs differ "
                               f"by {diff:.3g}")
        worst = max(worst, diff)
    return worst


def detection_count(outputs: list[np.ndarray]) -> int | None:
    """The detections (rows with a class id) in a detector's outputs; None for other models."""
    return int(np.count_nonzero(outputs[0][..., 0] >= 0)) if _is_detection(outputs) else None


def _is_detection(outputs: list[np.ndarray]) -> bool:
    return (len(outputs) == 3 and outputs[0].ndim == 3 and outputs[0].shape[-1] == 1
            and outputs[2].shape[-1] == 4)


def _detection_rows(reference: list[np.ndarray], actual: list[np.ndarray],
                    both: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    valid = reference[0][..., 0] >= 0
    expected, got = [o[valid] for o in reference], [o[valid] for o in actual]
    twins = pair_detections(expected[0][:, 0], expected[1][:, 0], got[0][:, 0], got[1][:, 0],
                            reference_boxes=expected[2], boxes=got[2])
    got = [o[twins] for o in got]
    if not np.array_equal(expected[0], got[0]):
        raise CompileError(f"verification failed: {both} detect different class ids")
    return expected[1:], got[1:]


def pair_detections(reference_ids: np.ndarray, reference_scores: np.ndarray, ids: np.ndarray,
                    scores: np.ndarray, tolerance: float = VERIFY_TOLERANCE, *,
                    reference_boxes: np.ndarray | None = None,
                    boxes: np.ndarray | None = None) -> np.ndarray:
    """For each reference detection in turn, the index of its twin among ``ids``/``scores``.

    Both lists come sorted by score, but two detections whose scores differ by
    less than the tolerance may come in either order (a compiled YOLOv3
    swapped a pair 7e-6 apart). The twin is the unused detection of the same
    class within the tolerance whose box is nearest (given ``reference_boxes``
    and ``boxes``), else the one nearest in the list; without any, the one in
    the same place, which the caller's checks then report. The box decides
    because near ties are common where detections crowd: a random-weight
    YOLOv3's 100 detections spanned scores 0.93-0.998, and pairing by place
    matched boxes 131 px apart that were each 0.02 px from their true twin.
    """
    def distance(i: int, position: int) -> tuple[float, int]:
        if reference_boxes is None or boxes is None:
            return 0.0, abs(i - position)
        return float(np.max(np.abs(boxes[i] - reference_boxes[position]))), abs(i - position)

    unused = list(range(len(ids)))
    twins = []
    for position, (class_id, score) in enumerate(zip(reference_ids, reference_scores)):
        candidates = [i for i in unused
                      if ids[i] == class_id and abs(float(scores[i]) - float(score)) <= tolerance]
        if candidates:
            twin = min(candidates, key=lambda i: distance(i, position))
        else:
            twin = position if position in unused else unused[0]
        unused.remove(twin)
        twins.append(twin)
    return np.asarray(twins, dtype=np.intp)
