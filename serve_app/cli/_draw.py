"""Drawing a prediction on its image, for ``lis invoke --draw``."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

_TOP_CLASSES = 3
_COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180)]


def _name(labels: Sequence[str], class_id: int) -> str:
    return labels[class_id] if 0 <= class_id < len(labels) else str(class_id)


def _draw_label(image: np.ndarray, text: str, origin: tuple[int, int],
                colour: tuple[int, int, int]) -> None:
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1)
    x, y = origin
    y = max(y, h + base)
    cv2.rectangle(image, (x, y - h - base), (x + w, y), colour, -1)
    cv2.putText(image, text, (x, y - base), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1,
                cv2.LINE_AA)


def draw_prediction(body: bytes, algo: str, text: str, labels: Sequence[str],
                    out: Path, min_score: float = 0.3) -> None:
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    height, width = image.shape[:2]
    if algo == "object-detection":
        for class_id, score, x0, y0, x1, y1 in ast.literal_eval(text)["prediction"]:
            if score < min_score:
                continue
            colour = _COLOURS[int(class_id) % len(_COLOURS)]
            top_left = (int(x0 * width), int(y0 * height))
            cv2.rectangle(image, top_left, (int(x1 * width), int(y1 * height)), colour, 2)
            _draw_label(image, f"{_name(labels, int(class_id))} {score:.2f}", top_left, colour)
    else:
        probabilities = np.fromstring(text[1:-1], sep=",")
        for rank, class_id in enumerate(np.argsort(-probabilities)[:_TOP_CLASSES]):
            _draw_label(image, f"{_name(labels, int(class_id))} {probabilities[class_id]:.3f}",
                        (5, 25 + 25 * rank), _COLOURS[rank])
    cv2.imwrite(str(out), image)
