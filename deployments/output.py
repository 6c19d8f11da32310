"""The connectors' output formats, byte for byte.

Image classification answers the text of a list of per-class probabilities,
``[0.3,0.1,0.04]``; clients strip the brackets and parse it with
``np.fromstring(s, sep=',')``. Object detection answers
``{"prediction": [[class_id, score, xmin, ymin, xmax, ymax], ...]}`` with
coordinates as fractions of the image's width and height; clients ``eval()``
it, so it must be a valid Python literal as well as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

__all__ = [
    "CLASSIFICATION_CONTENT_TYPE",
    "DETECTION_CONTENT_TYPE",
    "detections",
    "format_classification",
    "format_detection",
    "softmax_if_needed",
]

CLASSIFICATION_CONTENT_TYPE = "application/json"
DETECTION_CONTENT_TYPE = "application/json"


def _finite(values: np.ndarray) -> np.ndarray:
    # NaN/inf are neither JSON nor Python literals; a model that emits them
    # is broken, but the caller still gets a parseable answer.
    return np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)


def softmax_if_needed(scores: np.ndarray) -> np.ndarray:
    """Probabilities from a classifier's output.

    SageMaker's artifacts end in softmax already; a model exported without it
    outputs logits, which would make the connector's "probabilities" lie.
    """
    flat = np.asarray(scores, dtype=np.float64).reshape(-1)
    if flat.size and np.all(flat >= 0) and abs(flat.sum() - 1.0) < 1e-3:
        return flat
    shifted = np.exp(flat - flat.max())
    return shifted / shifted.sum()


def format_classification(probabilities: np.ndarray) -> str:
    """``[p0,p1,...]``: one probability per class, comma-separated, no spaces."""
    values = _finite(np.asarray(probabilities).reshape(-1))
    return "[" + ",".join(repr(float(v)) for v in values) + "]"


def detections(class_ids: np.ndarray, scores: np.ndarray, boxes: np.ndarray,
               input_width: int, input_height: int, *, score_threshold: float | None = None,
               top_k: int | None = None) -> list[list[float | int]]:
    """Rows ``[class_id, score, xmin, ymin, xmax, ymax]`` from a GluonCV detector's outputs.

    Boxes come in the model's input pixels; since preprocessing stretches the
    image to the input size, dividing by the input size gives fractions of the
    original image. Padding rows (class id < 0) are dropped, rows are sorted
    by score, highest first, and nothing is thresholded unless asked.
    """
    ids = np.asarray(class_ids).reshape(-1)
    conf = _finite(np.asarray(scores).reshape(-1))
    coords = _finite(np.asarray(boxes).reshape(-1, 4))
    keep = ids >= 0
    if score_threshold is not None:
        keep &= conf >= score_threshold
    ids, conf, coords = ids[keep], conf[keep], coords[keep]
    scale = np.array([input_width, input_height, input_width, input_height], dtype=np.float64)
    coords = np.clip(coords / scale, 0.0, 1.0)
    order = np.argsort(-conf, kind="stable")
    if top_k is not None:
        order = order[:top_k]
    return [[int(ids[i]), float(conf[i]), *(float(c) for c in coords[i])] for i in order]


def format_detection(rows: Sequence[Sequence[float | int]]) -> str:
    """``{"prediction": [...]}`` as JSON (which is also a Python literal here)."""
    return json.dumps({"prediction": [list(row) for row in rows]}, allow_nan=False)
