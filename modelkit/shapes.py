"""The demo task: filled shapes on busy backgrounds, generated deterministically.

Three classes, ``SHAPE_CLASSES`` = 0 circle, 1 square, 2 triangle. Each image
is built from ``(seed, index)`` alone, so any sample can be regenerated, the
training stream never repeats, and a held-out set is simply another seed.

Two tasks:

- classification: one shape covering 20-80 % of the shorter side, anywhere,
  on an image of 160-400 px a side, aspect at most 4:3;
- detection: a 512x512 scene with 1-6 shapes, each 40-220 px across (its box's
  longer side), pairwise IoU at most 0.3.

Colours follow one rule that matters for the tests: shapes are warm (hues from
magenta through red to yellow), backgrounds cool (green through blue to
violet), and every shape contrasts with the background under it. Real photos
have colour statistics too; giving the shapes some means a model that is fed
BGR instead of RGB fails visibly, as a real one would. Squares and triangles
are rotated; about half the images are JPEG, the rest PNG.

``python -m modelkit.shapes --out DIR --count N --task classification|detection --seed S``
writes ``DIR/images/*`` plus ``DIR/labels.json`` and ``DIR/labels.csv``.
"""

from __future__ import annotations

import argparse
import colorsys
import csv
import json
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

__all__ = [
    "DETECTION_SIZE",
    "MAX_OVERLAP_IOU",
    "SHAPE_CLASSES",
    "Sample",
    "Shape",
    "Task",
    "box_iou",
    "classification_sample",
    "detection_sample",
    "generate",
    "main",
    "write_dataset",
]

SHAPE_CLASSES = ("circle", "square", "triangle")
Task = Literal["classification", "detection"]

DETECTION_SIZE = 512
DETECTION_SHAPES = (1, 6)
DETECTION_EXTENT = (40, 220)
MAX_OVERLAP_IOU = 0.3
CLASSIFICATION_SIDE = (160, 400)
CLASSIFICATION_EXTENT = (0.2, 0.8)
# Minimum RGB distance between a shape's colour and the mean background under it.
_MIN_CONTRAST = 90.0
_SHAPE_HUES = (-60.0, 60.0)        # degrees: magenta .. red .. yellow
_BACKGROUND_HUES = (100.0, 280.0)  # degrees: green .. blue .. violet
_SUBPIXEL_BITS = 4
_SUBPIXEL = 1 << _SUBPIXEL_BITS


@dataclass(frozen=True)
class Shape:
    """One drawn shape: its class and its box in pixels (xmin, ymin, xmax, ymax)."""

    class_id: int
    box: tuple[float, float, float, float]

    @property
    def class_name(self) -> str:
        return SHAPE_CLASSES[self.class_id]

    def fractional_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        xmin, ymin, xmax, ymax = self.box
        return (xmin / width, ymin / height, xmax / width, ymax / height)


@dataclass(frozen=True)
class Sample:
    """A generated image: the pixels, the same pixels encoded, and what is on it."""

    image: np.ndarray  # RGB uint8 HxWx3, as rendered (before encoding)
    encoded: bytes
    content_type: str  # "image/jpeg" or "image/png"
    shapes: tuple[Shape, ...]

    @property
    def label(self) -> int:
        """The class id of a classification sample (its only shape)."""
        return self.shapes[0].class_id

    @property
    def extension(self) -> str:
        return "jpg" if self.content_type == "image/jpeg" else "png"


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (xmin, ymin, xmax, ymax) boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


# --- colours -----------------------------------------------------------------

def _hsv_rgb(hue_deg: float, saturation: float, value: float) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, saturation, value)
    return np.array([r, g, b]) * 255.0


def _background_colour(rng: np.random.Generator) -> np.ndarray:
    return _hsv_rgb(rng.uniform(*_BACKGROUND_HUES), rng.uniform(0.3, 1.0), rng.uniform(0.15, 1.0))


def _shape_colour(rng: np.random.Generator) -> np.ndarray:
    return _hsv_rgb(rng.uniform(*_SHAPE_HUES), rng.uniform(0.45, 1.0), rng.uniform(0.35, 1.0))


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> tuple[int, int, int]:
    """A warm colour far enough from ``under``; the farthest of a few tries otherwise."""
    best, best_distance = _shape_colour(rng), -1.0
    for _ in range(32):
        candidate = _shape_colour(rng)
        distance = float(np.linalg.norm(candidate - under))
        if distance >= _MIN_CONTRAST:
            return tuple(int(c) for c in candidate)  # type: ignore[return-value]
        if distance > best_distance:
            best, best_distance = candidate, distance
    return tuple(int(c) for c in best)  # type: ignore[return-value]


# --- backgrounds -------------------------------------------------------------

def _flat(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return np.broadcast_to(_background_colour(rng), (h, w, 3)).astype(np.float32)


def _gradient(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    start, end = _background_colour(rng), _background_colour(rng)
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xs * math.cos(angle) + ys * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    return (start * (1 - t[..., None]) + end * t[..., None]).astype(np.float32)


def _noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = _flat(rng, h, w) if rng.random() < 0.5 else _gradient(rng, h, w)
    # Blotchy low-frequency noise plus fine grain, both colour-neutral-ish.
    cells = int(rng.integers(4, 24))
    blotches = rng.normal(0, 1, (cells, cells, 3)).astype(np.float32)
    blotches = cv2.resize(blotches, (w, h), interpolation=cv2.INTER_CUBIC)
    grain = rng.standard_normal((h, w, 3), dtype=np.float32)
    return base + blotches * rng.uniform(5, 30) + grain * rng.uniform(2, 18)


def _clutter(rng: np.random.Generator, canvas: np.ndarray) -> None:
    h, w = canvas.shape[:2]
    for _ in range(int(rng.integers(3, 16))):
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        cv2.line(canvas, p1, p2, colour, int(rng.integers(1, 4)), cv2.LINE_AA)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    kind = int(rng.integers(0, 4))
    canvas = [_flat, _gradient, _noise, _flat][kind](rng, h, w).copy()
    if kind == 3 or rng.random() < 0.3:
        _clutter(rng, canvas)
    return canvas


# --- shapes ------------------------------------------------------------------

def _outline(class_id: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-sized outline points (N, 2), centred on the origin, rotated."""
    if class_id == 0:
        angles = np.linspace(0, 2 * math.pi, 96, endpoint=False)
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if class_id == 1:
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    else:
        angles = np.array([-90.0, 30.0, 150.0]) * math.pi / 180
        corners = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    theta = rng.uniform(0, 2 * math.pi)
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return corners @ rotation.T


def _place(outline: np.ndarray, extent: float, rng: np.random.Generator,
           h: int, w: int) -> np.ndarray:
    """Scale so the box's longer side is ``extent`` and move it fully inside."""
    span = (outline.max(axis=0) - outline.min(axis=0)).max()
    points = (outline - outline.min(axis=0)) * (extent / span)
    size = points.max(axis=0)
    offset = np.array([rng.uniform(0, w - size[0]), rng.uniform(0, h - size[1])])
    return points + offset


def _box(points: np.ndarray) -> tuple[float, float, float, float]:
    (xmin, ymin), (xmax, ymax) = points.min(axis=0), points.max(axis=0)
    return (round(float(xmin), 2), round(float(ymin), 2),
            round(float(xmax), 2), round(float(ymax), 2))


def _draw(canvas: np.ndarray, points: np.ndarray, rng: np.random.Generator) -> None:
    # Work on the shape's bounding window only: blending the whole image is slow.
    h, w = canvas.shape[:2]
    x0, y0 = (max(int(v) - 2, 0) for v in points.min(axis=0))
    x1, y1 = (int(v) + 3 for v in points.max(axis=0))
    x1, y1 = min(x1, w), min(y1, h)
    window = canvas[y0:y1, x0:x1]
    mask = np.zeros(window.shape[:2], np.uint8)
    fixed = np.round((points - (x0, y0)) * _SUBPIXEL).astype(np.int32)
    cv2.fillPoly(mask, [fixed], 255, cv2.LINE_AA, _SUBPIXEL_BITS)
    inside = mask > 127
    under = window[inside].mean(axis=0) if inside.any() else window.mean(axis=(0, 1))
    colour = np.array(_contrasting_colour(rng, under), dtype=np.float32)
    alpha = (mask.astype(np.float32) / 255.0)[..., None]
    window *= 1 - alpha
    window += alpha * colour


def _encode(rng: np.random.Generator, image: np.ndarray) -> tuple[bytes, str]:
    bgr = image[:, :, ::-1]
    if rng.random() < 0.5:
        quality = int(rng.integers(60, 96))
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
        content_type = "image/jpeg"
    else:
        ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        content_type = "image/png"
    assert ok, "OpenCV failed to encode a generated image"
    return data.tobytes(), content_type


def _finish(rng: np.random.Generator, canvas: np.ndarray, shapes: list[Shape]) -> Sample:
    image = np.clip(canvas, 0, 255).round().astype(np.uint8)
    encoded, content_type = _encode(rng, image)
    return Sample(image=image, encoded=encoded, content_type=content_type, shapes=tuple(shapes))


def _rng(seed: int, index: int, task: Task) -> np.random.Generator:
    return np.random.default_rng([seed, index, 0 if task == "classification" else 1])


# --- the two tasks -----------------------------------------------------------

def classification_sample(seed: int, index: int) -> Sample:
    """One shape, 20-80 % of the shorter side, anywhere on a 160-400 px image."""
    rng = _rng(seed, index, "classification")
    w = int(rng.integers(CLASSIFICATION_SIDE[0], CLASSIFICATION_SIDE[1] + 1))
    # Aspect at most 4:3 either way, so resizing to 224x224 keeps shapes recognisable.
    h = int(np.clip(w * rng.uniform(0.75, 4 / 3), *CLASSIFICATION_SIDE))
    canvas = _background(rng, h, w)
    class_id = int(rng.integers(0, len(SHAPE_CLASSES)))
    extent = rng.uniform(*CLASSIFICATION_EXTENT) * min(h, w)
    points = _place(_outline(class_id, rng), extent, rng, h, w)
    _draw(canvas, points, rng)
    return _finish(rng, canvas, [Shape(class_id, _box(points))])


def _free_spot(rng: np.random.Generator, class_id: int, taken: list[Shape]) -> np.ndarray | None:
    for _ in range(30):
        extent = rng.uniform(*DETECTION_EXTENT)
        points = _place(_outline(class_id, rng), extent, rng, DETECTION_SIZE, DETECTION_SIZE)
        box = _box(points)
        if all(box_iou(box, other.box) <= MAX_OVERLAP_IOU for other in taken):
            return points
    return None


def detection_sample(seed: int, index: int) -> Sample:
    """A 512x512 scene with 1-6 shapes, 40-220 px across, overlapping at most 0.3 IoU."""
    rng = _rng(seed, index, "detection")
    canvas = _background(rng, DETECTION_SIZE, DETECTION_SIZE)
    shapes: list[Shape] = []
    for _ in range(int(rng.integers(DETECTION_SHAPES[0], DETECTION_SHAPES[1] + 1))):
        class_id = int(rng.integers(0, len(SHAPE_CLASSES)))
        points = _free_spot(rng, class_id, shapes)
        if points is None:
            continue
        _draw(canvas, points, rng)
        shapes.append(Shape(class_id, _box(points)))
    return _finish(rng, canvas, shapes)


def generate(task: Task, seed: int, count: int, start: int = 0) -> Iterator[Sample]:
    """Samples ``start .. start+count-1`` of the stream that ``seed`` names."""
    make = classification_sample if task == "classification" else detection_sample
    for index in range(start, start + count):
        yield make(seed, index)


# --- writing a dataset -------------------------------------------------------

def _records(sample: Sample, file_name: str) -> list[dict[str, object]]:
    h, w = sample.image.shape[:2]
    return [{
        "file": file_name, "width": w, "height": h,
        "class_id": shape.class_id, "class_name": shape.class_name,
        "box": list(shape.box), "box_fraction": [round(v, 6) for v in shape.fractional_box(w, h)],
    } for shape in sample.shapes]


def write_dataset(out: Path, count: int, task: Task, seed: int,
                  progress: bool = True) -> Path:
    """Write ``count`` samples to ``out/images`` plus ``labels.json`` and ``labels.csv``."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    samples = generate(task, seed, count)
    if progress:
        from tqdm import tqdm
        samples = tqdm(samples, total=count, desc=f"{task} images", unit="img")
    rows: list[dict[str, object]] = []
    for index, sample in enumerate(samples):
        name = f"images/{index:06d}.{sample.extension}"
        (out / name).write_bytes(sample.encoded)
        rows.extend(_records(sample, name))
    meta = {"task": task, "seed": seed, "count": count, "classes": list(SHAPE_CLASSES)}
    (out / "labels.json").write_text(json.dumps({**meta, "objects": rows}, indent=1))
    _write_csv(out / "labels.csv", rows)
    return out


def _write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    columns = ["file", "width", "height", "class_id", "class_name",
               "xmin", "ymin", "xmax", "ymax", "xmin_frac", "ymin_frac", "xmax_frac", "ymax_frac"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row["file"], row["width"], row["height"], row["class_id"],
                             row["class_name"], *row["box"], *row["box_fraction"]])  # type: ignore[misc]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelkit.shapes", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write")
    parser.add_argument("--count", type=int, default=100, help="number of images")
    parser.add_argument("--task", choices=("classification", "detection"), default="detection")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same images")
    args = parser.parse_args(argv)
    path = write_dataset(args.out, args.count, args.task, args.seed)
    print(f"wrote {args.count} {args.task} images to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
