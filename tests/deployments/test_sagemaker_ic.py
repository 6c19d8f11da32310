"""SageMaker image-classification artifacts: write -> read -> predict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deployments.imaging import CLASSIFIER_PREPROCESSING, read_preprocessing
from deployments.mxnet_runtime import MXNetClassifierRuntime
from deployments.sagemaker_ic import (
    SYMBOL_FILE,
    read_classifier_artifact,
    write_classifier_artifact,
)
from vocabulary.errors import ArtifactError
from vocabulary.names import LABELS_FILE, SHAPES_FILE


def _image_batch(seed: int = 3) -> np.ndarray:
    return np.random.RandomState(seed).uniform(0, 255, (1, 3, 224, 224)).astype(np.float32)


@pytest.mark.parametrize("name", ["model", "model.tar.gz", "model.zip"])
def test_round_trip_predicts_the_gluon_softmax(tmp_path: Path, name: str, tiny_classifier_net: Any,
                                               classifier_labels: tuple[str, ...]) -> None:
    import mxnet as mx

    net = tiny_classifier_net
    dest = write_classifier_artifact(net, tmp_path / name, epoch=12, labels=classifier_labels,
                                     preprocessing=CLASSIFIER_PREPROCESSING)
    artifact = read_classifier_artifact(dest)
    assert artifact.epoch == 12 and artifact.params_file.name == "image-classification-0012.params"
    assert artifact.input_shape == (1, 3, 224, 224)
    assert artifact.labels == classifier_labels
    assert read_preprocessing(artifact.directory) == CLASSIFIER_PREPROCESSING

    runtime = MXNetClassifierRuntime(dest)
    runtime.load()
    batch = _image_batch()
    (probabilities,) = runtime.predict(batch)
    expected = mx.nd.softmax(net(mx.nd.array(batch))).asnumpy()
    assert probabilities.shape == (1, 3)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert probabilities.max() < 0.99  # the tiny model is not degenerate


def test_files_follow_the_sagemaker_layout(tiny_classifier_artifact: Path) -> None:
    names = {p.name for p in tiny_classifier_artifact.iterdir()}
    assert {SYMBOL_FILE, "image-classification-0000.params", SHAPES_FILE, LABELS_FILE} <= names
    shapes = json.loads((tiny_classifier_artifact / SHAPES_FILE).read_text())
    assert shapes == [{"name": "data", "shape": [1, 3, 224, 224]}]
    assert (tiny_classifier_artifact / LABELS_FILE).read_text() == "circle\nsquare\ntriangle\n"
    last = json.loads((tiny_classifier_artifact / SYMBOL_FILE).read_text())["nodes"][-1]
    assert last["op"] == "softmax"


def test_highest_epoch_is_loaded(tmp_path: Path, tiny_classifier_artifact: Path) -> None:
    folder = shutil.copytree(tiny_classifier_artifact, tmp_path / "model")
    (folder / "image-classification-0000.params").rename(folder / "image-classification-0010.params")
    (folder / "image-classification-0002.params").write_bytes(b"older epoch")
    artifact = read_classifier_artifact(folder)
    assert artifact.epoch == 10
    assert artifact.params_file.name == "image-classification-0010.params"


def test_symbol_and_params_input_gets_a_softmax(tmp_path: Path) -> None:
    import mxnet as mx

    data = mx.sym.var("data")
    logits = mx.sym.FullyConnected(mx.sym.flatten(data), num_hidden=2, name="fc")
    params = {"fc_weight": mx.nd.array(np.arange(2 * 12).reshape(2, 12) / 100.0),
              "fc_bias": mx.nd.array([0.5, -0.5])}
    dest = write_classifier_artifact(logits, tmp_path / "m", input_shape=(1, 3, 2, 2),
                                     params=params)
    runtime = MXNetClassifierRuntime(dest)
    runtime.load()
    batch = np.ones((1, 3, 2, 2), np.float32)
    (probabilities,) = runtime.predict(batch)
    z = batch.reshape(1, 12) @ params["fc_weight"].asnumpy().T + params["fc_bias"].asnumpy()
    np.testing.assert_allclose(probabilities, np.exp(z) / np.exp(z).sum(), atol=1e-6)


def test_missing_model_shapes_means_the_default(tmp_path: Path,
                                                tiny_classifier_artifact: Path) -> None:
    folder = shutil.copytree(tiny_classifier_artifact, tmp_path / "model")
    (folder / SHAPES_FILE).unlink()
    (folder / LABELS_FILE).unlink()
    artifact = read_classifier_artifact(folder)
    assert artifact.input_shape == (1, 3, 224, 224) and artifact.labels is None


@pytest.mark.parametrize(("remove", "named"), [
    (SYMBOL_FILE, SYMBOL_FILE),
    ("image-classification-0000.params", "image-classification-<epoch>.params"),
])
def test_missing_file_is_named(tmp_path: Path, tiny_classifier_artifact: Path,
                               remove: str, named: str) -> None:
    folder = shutil.copytree(tiny_classifier_artifact, tmp_path / "model")
    (folder / remove).unlink()
    with pytest.raises(ArtifactError, match=f"missing {named}"):
        read_classifier_artifact(folder)


def test_ambiguous_epoch_is_named(tmp_path: Path, tiny_classifier_artifact: Path) -> None:
    folder = shutil.copytree(tiny_classifier_artifact, tmp_path / "model")
    shutil.copy(folder / "image-classification-0000.params", folder / "image-classification-0.params")
    with pytest.raises(ArtifactError, match="ambiguous params for epoch 0"):
        read_classifier_artifact(folder)


@pytest.mark.parametrize(("content", "problem"), [
    ("not json", "unreadable JSON"),
    ('[{"name": "data", "shape": [3, 224]}]', "4 positive integers"),
    ('{"data": [1, 3, 224, 224]}', "expected a list"),
])
def test_malformed_model_shapes_is_named(tmp_path: Path, tiny_classifier_artifact: Path,
                                         content: str, problem: str) -> None:
    folder = shutil.copytree(tiny_classifier_artifact, tmp_path / "model")
    (folder / SHAPES_FILE).write_text(content)
    with pytest.raises(ArtifactError, match=SHAPES_FILE) as caught:
        read_classifier_artifact(folder)
    assert problem in str(caught.value)


def test_corrupt_symbol_is_named(tmp_path: Path, tiny_classifier_artifact: Path) -> None:
    folder = shutil.copytree(tiny_classifier_artifact, tmp_path / "model")
    (folder / SYMBOL_FILE).write_text('{"nodes": [')
    with pytest.raises(ArtifactError, match=f"{SYMBOL_FILE}: unreadable symbol JSON"):
        read_classifier_artifact(folder)


def test_reading_imports_no_mxnet_or_tvm(tiny_classifier_artifact: Path) -> None:
    import subprocess
    import sys

    code = ("import sys; from deployments.sagemaker_ic import read_classifier_artifact as r; "
            f"r({str(tiny_classifier_artifact)!r}); "
            "print(sorted(m for m in ('mxnet', 'tvm', 'gluoncv', 'dlr') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
