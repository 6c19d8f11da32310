"""The shapes generator: deterministic, valid labels, both formats, a usable dataset folder."""

from __future__ import annotations

import csv
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deployments.imaging import decode_image
from modelkit.shapes import (
    MAX_OVERLAP_IOU,
    SHAPE_CLASSES,
    box_iou,
    classification_sample,
    detection_sample,
    generate,
    write_dataset,
)

REPO = Path(__file__).resolve().parents[2]


def test_class_ids_and_names_are_the_published_ones() -> None:
    assert SHAPE_CLASSES == ("circle", "square", "triangle")


@pytest.mark.parametrize("make", [classification_sample, detection_sample])
def test_same_seed_and_index_give_the_same_image(make) -> None:  # type: ignore[no-untyped-def]
    first, again = make(7, 3), make(7, 3)
    assert first.encoded == again.encoded
    assert first.shapes == again.shapes
    assert make(8, 3).encoded != first.encoded
    assert make(7, 4).encoded != first.encoded


def test_a_classification_image_holds_one_shape_of_20_to_80_percent() -> None:
    for sample in generate("classification", seed=5, count=40):
        height, width = sample.image.shape[:2]
        assert len(sample.shapes) == 1
        assert sample.label in (0, 1, 2)
        xmin, ymin, xmax, ymax = sample.shapes[0].box
        assert 0 <= xmin < xmax <= width and 0 <= ymin < ymax <= height
        extent = max(xmax - xmin, ymax - ymin) / min(height, width)
        assert 0.2 - 0.01 <= extent <= 0.8 + 0.01


def test_a_detection_scene_holds_1_to_6_shapes_40_to_220_px_barely_overlapping() -> None:
    counts = set()
    for sample in generate("detection", seed=5, count=40):
        assert sample.image.shape == (512, 512, 3)
        assert 1 <= len(sample.shapes) <= 6
        counts.add(len(sample.shapes))
        for shape in sample.shapes:
            xmin, ymin, xmax, ymax = shape.box
            assert 0 <= xmin < xmax <= 512 and 0 <= ymin < ymax <= 512
            assert 40 - 0.5 <= max(xmax - xmin, ymax - ymin) <= 220 + 0.5
            assert shape.fractional_box(512, 512) == pytest.approx(
                (xmin / 512, ymin / 512, xmax / 512, ymax / 512))
        for a, b in itertools.combinations(sample.shapes, 2):
            assert box_iou(a.box, b.box) <= MAX_OVERLAP_IOU
    assert len(counts) >= 4  # the count really varies


def test_every_class_occurs() -> None:
    labels = {s.label for s in generate("classification", seed=9, count=30)}
    assert labels == {0, 1, 2}


def test_jpeg_and_png_both_occur_and_decode_to_the_rendered_pixels() -> None:
    samples = list(generate("detection", seed=2, count=12))
    assert {s.content_type for s in samples} == {"image/jpeg", "image/png"}
    for sample in samples:
        decoded = decode_image(sample.encoded, sample.content_type)
        assert decoded.shape == sample.image.shape
        difference = np.abs(decoded.astype(int) - sample.image.astype(int)).mean()
        if sample.content_type == "image/png":
            assert difference == 0
        else:
            assert difference < 8  # lossy, but the same picture


def test_shapes_are_warm_on_a_cool_background() -> None:
    """The colour convention that lets a model (and a test) notice a BGR mix-up."""
    for sample in generate("classification", seed=4, count=20):
        xmin, ymin, xmax, ymax = (int(v) for v in sample.shapes[0].box)
        centre = sample.image[(ymin + ymax) // 2, (xmin + xmax) // 2].astype(int)
        if sample.label == 0:  # a circle's centre is always inside it
            assert centre[0] > centre[2], "shape colours are red-dominant"


def test_write_dataset_writes_images_and_consistent_labels(tmp_path: Path) -> None:
    out = write_dataset(tmp_path / "set", count=5, task="detection", seed=3, progress=False)
    labels = json.loads((out / "labels.json").read_text())
    assert labels["classes"] == list(SHAPE_CLASSES) and labels["count"] == 5
    files = {row["file"] for row in labels["objects"]}
    assert files == {f"images/{p.name}" for p in (out / "images").iterdir()}
    with (out / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(labels["objects"]) == sum(
        len(s.shapes) for s in generate("detection", 3, 5))
    row = rows[0]
    assert float(row["xmax_frac"]) == pytest.approx(float(row["xmax"]) / int(row["width"]), abs=1e-5)
    assert row["class_name"] == SHAPE_CLASSES[int(row["class_id"])]


def test_the_command_line_writes_a_dataset(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "modelkit.shapes", "--out", str(tmp_path / "cls"), "--count", "3",
         "--task", "classification", "--seed", "1"],
        cwd=REPO, capture_output=True, text=True, check=True)
    assert "wrote 3 classification images" in done.stdout
    assert len(list((tmp_path / "cls" / "images").iterdir())) == 3
