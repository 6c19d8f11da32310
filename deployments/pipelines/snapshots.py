"""Snapshots for ML Feedback: which frames have a result, and a frame with its boxes drawn.

Retraining wants the frames where the model saw something (or where it was
unsure: ML Feedback's sampling strategies choose among what is handed over);
a person checking them wants the boxes on the picture.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deployments.pipelines.messages import Inferred
from vocabulary.errors import InvalidImage

__all__ = ["drawn", "has_result"]

_BOX_COLOUR = (0, 255, 0)  # BGR
_JPEG_QUALITY = 90


def _rows(result: Inferred, threshold: float) -> list[Any]:
    return [row for row in result.output["prediction"] if float(row[1]) >= threshold]


def has_result(result: Inferred, threshold: float) -> bool:
    """Whether a detection (or, for a classifier, a class) scored ``threshold`` or more."""
    if result.algorithm == "object-detection":
        return bool(_rows(result, threshold))
    return any(float(p) >= threshold for p in result.output)


def drawn(body: bytes, result: Inferred, threshold: float) -> bytes:
    """The frame as a JPEG with each detection scoring ``threshold`` or more boxed and labelled."""
    import cv2

    image = cv2.imdecode(np.frombuffer(body, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise InvalidImage("the frame could not be decoded to draw on")
    height, width = image.shape[:2]
    for row in _rows(result, threshold):
        class_id, score = int(row[0]), float(row[1])
        x0, y0, x1, y1 = (int(round(float(v) * size)) for v, size in
                          zip(row[2:6], (width, height, width, height)))
        cv2.rectangle(image, (x0, y0), (x1, y1), _BOX_COLOUR, 2)
        labels = result.labels
        name = labels[class_id] if labels and 0 <= class_id < len(labels) else str(class_id)
        cv2.putText(image, f"{name} {score:.2f}", (x0, max(12, y0 - 4)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, _BOX_COLOUR, 1)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    if not ok:
        raise InvalidImage("the frame with its boxes could not be encoded")
    return encoded.tobytes()
