"""The demo models give right answers through the served artifacts, and wrong
preprocessing visibly breaks them.

``demo_models()`` builds ``build/models/`` once (the two detectors are compiled,
about a minute each) and later runs reuse it while the committed weights are
unchanged. Every image is decoded and preprocessed by the serving code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deployments.dlr_runtime import DLRRuntime
from deployments.imaging import decode_image, preprocess, read_preprocessing
from deployments.mxnet_runtime import MXNetClassifierRuntime
from modelkit import compile as compile_module
from modelkit import demo
from modelkit.demo import DEMO_MODELS, demo_models, model_state, tuning_records
from modelkit.evaluate import (
    HELD_OUT_SEED,
    IOU_THRESHOLD,
    MIN_SCORE,
    evaluate_classifier,
    evaluate_detector,
    valid_detections,
)
from modelkit.shapes import (
    SHAPE_CLASSES,
    Sample,
    box_iou,
    classification_sample,
    detection_sample,
)

pytestmark = pytest.mark.slow

DETECTORS = ("shapes-ssd", "shapes-yolo3")
# Enough held-out images for a stable estimate, few enough to take seconds.
CLASSIFIER_IMAGES = 120
DETECTOR_IMAGES = 40


@pytest.fixture(scope="module")
def artifacts() -> dict[str, Path]:
    return demo_models(progress=None)


@pytest.mark.parametrize("name", DETECTORS)
def test_a_detector_is_built_with_its_committed_tuning_records(artifacts: dict[str, Path],
                                                                name: str) -> None:
    model = next(model for model in DEMO_MODELS if model.name == name)
    records = tuning_records(model)
    assert records is not None and records.is_file()
    info = json.loads((artifacts[name] / "lis-compile.json").read_text())
    tuning = info["tuning"]
    # Applied without new trials; on another CPU than the one they were tuned on the
    # records apply to no task, and the build uses TVM's default schedules.
    assert tuning["method"] == "autotvm" and tuning["trials"] == 0
    assert 0 <= tuning["tasks_with_records"] <= tuning["tasks"]
    assert info["verified_max_abs_diff"] < 1e-3


def test_a_detector_compiled_by_another_compiler_is_stale(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # As a new version of lis would find the demo artifacts an older one compiled.
    for model in DEMO_MODELS:
        model.target(tmp_path).mkdir()
        model.stamp(tmp_path).write_text(demo._build_digest(model) + "\n")
    assert {m.name: model_state(m, tmp_path) for m in DEMO_MODELS} == dict.fromkeys(
        (m.name for m in DEMO_MODELS), "ready")
    monkeypatch.setattr(compile_module, "_COMPILER_SOURCES",
                        (*compile_module._COMPILER_SOURCES, "_compare.py"))
    assert {m.name: model_state(m, tmp_path) for m in DEMO_MODELS} == {
        "shapes-classifier": "ready", "shapes-ssd": "stale", "shapes-yolo3": "stale"}


def _first(make, wanted) -> Sample:  # type: ignore[no-untyped-def]
    return next(s for s in (make(HELD_OUT_SEED, i) for i in range(1000)) if wanted(s))


def _extent(sample: Sample) -> float:
    xmin, ymin, xmax, ymax = sample.shapes[0].box
    return max(xmax - xmin, ymax - ymin) / min(sample.image.shape[:2])


def test_every_artifact_documents_labels_and_preprocessing(artifacts: dict[str, Path]) -> None:
    assert set(artifacts) == {"shapes-classifier", *DETECTORS}
    for path in artifacts.values():
        assert (path / "labels.txt").read_text().split() == list(SHAPE_CLASSES)
        assert read_preprocessing(path) is not None


def test_the_classifier_calls_a_square_a_square(artifacts: dict[str, Path]) -> None:
    path = artifacts["shapes-classifier"]
    # A plainly visible square (at least 40 % of the shorter side) of the held-out stream.
    sample = _first(classification_sample, lambda s: s.shapes[0].class_name == "square"
                    and _extent(s) >= 0.4)
    runtime = MXNetClassifierRuntime(path)
    runtime.load()
    image = decode_image(sample.encoded, sample.content_type)
    probabilities = runtime.predict(preprocess(image, read_preprocessing(path)))[0][0]
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-4)
    assert runtime.labels[int(np.argmax(probabilities))] == "square"
    assert probabilities.max() > 0.5


@pytest.mark.parametrize("name", DETECTORS)
def test_a_detector_finds_every_shape_of_a_scene(artifacts: dict[str, Path], name: str) -> None:
    # A busy scene: at least four shapes, all three classes.
    scene = _first(detection_sample, lambda s: len(s.shapes) >= 4
                   and {shape.class_id for shape in s.shapes} == {0, 1, 2})
    runtime = DLRRuntime(artifacts[name])
    runtime.load()
    spec = read_preprocessing(artifacts[name])
    outputs = runtime.predict(preprocess(decode_image(scene.encoded, scene.content_type), spec))
    confident = [d for d in valid_detections(*outputs) if d[1] >= MIN_SCORE]
    for shape in scene.shapes:
        assert any(class_id == shape.class_id and box_iou(box, shape.box) >= IOU_THRESHOLD
                   for class_id, _, box in confident), f"{name} missed {shape}"


def test_feeding_bgr_to_the_classifier_costs_accuracy(artifacts: dict[str, Path]) -> None:
    path = artifacts["shapes-classifier"]
    right = evaluate_classifier(path, CLASSIFIER_IMAGES)["accuracy"]
    bgr = evaluate_classifier(path, CLASSIFIER_IMAGES,
                              preprocessing=read_preprocessing(path).with_overrides(color="BGR"))
    assert right >= 0.9
    assert bgr["accuracy"] <= right - 0.15


def test_scaling_the_classifier_input_to_0_1_costs_accuracy(artifacts: dict[str, Path]) -> None:
    path = artifacts["shapes-classifier"]
    right = evaluate_classifier(path, CLASSIFIER_IMAGES)["accuracy"]
    wrong = evaluate_classifier(path, CLASSIFIER_IMAGES,
                                preprocessing=read_preprocessing(path).with_overrides(scale=1 / 255))
    assert wrong["accuracy"] <= right - 0.3


@pytest.mark.parametrize("name", DETECTORS)
def test_a_detector_fed_bgr_or_unnormalised_input_loses_most_of_its_map(
        artifacts: dict[str, Path], name: str) -> None:
    path = artifacts[name]
    spec = read_preprocessing(path)
    right = evaluate_detector(path, DETECTOR_IMAGES)["mAP@0.5"]
    bgr = evaluate_detector(path, DETECTOR_IMAGES, preprocessing=spec.with_overrides(color="BGR"))
    raw = evaluate_detector(path, DETECTOR_IMAGES, preprocessing=spec.with_overrides(
        scale=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)))
    assert right >= 0.7
    assert bgr["mAP@0.5"] <= right / 2
    assert raw["mAP@0.5"] <= right / 2
