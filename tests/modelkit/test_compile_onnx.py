"""`lis compile` with an ONNX model in, as Neo takes them: verified against ONNX Runtime.

The ONNX models are the suite's own tiny SageMaker classifier, exported by
MXNet's ONNX exporter (``_onnx_models``); so the compiled artifact must also
answer as the MXNet original does when served.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from deployments.dlr_runtime import DLRRuntime
from deployments.inference import InferencePipeline, PipelineOptions
from deployments.neo import read_neo_artifact
from deployments.sagemaker_ic import read_classifier_artifact
from modelkit.compile import compile_model
from serve_app import cli
from tests.modelkit._onnx_models import export_onnx, run_onnx
from vocabulary.errors import CompileError
from vocabulary.names import COMPILE_INFO_FILE

pytest.importorskip("onnxruntime")

SHAPE = (1, 3, 224, 224)
LOGITS = "dense0_fwd_output"  # the tiny classifier's last layer before its softmax


def _export(artifact: Path, path: Path, shape: tuple[int | str, ...] = SHAPE,
            output: str | None = None) -> Path:
    source = read_classifier_artifact(artifact)
    return export_onnx(source.symbol_file, source.params_file, shape, path, output=output)


def _jpeg(seed: int = 3) -> bytes:
    image = np.random.RandomState(seed).randint(0, 256, (300, 400, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def _probabilities(model_dir: Path) -> np.ndarray:
    pipeline = InferencePipeline(model_dir, PipelineOptions(algorithm="image-classification"))
    return np.asarray(json.loads(pipeline.run(_jpeg(), "image/jpeg").body))


def test_an_onnx_classifier_compiles_verified_and_serves_as_its_mxnet_original(
        tmp_path: Path, tiny_classifier_artifact: Path, classifier_labels: tuple[str, ...]) -> None:
    model = _export(tiny_classifier_artifact, tmp_path / "classifier.onnx", ("N", 3, 224, 224))
    lines: list[str] = []
    result = compile_model(model, None, tmp_path / "neo", input_shape=SHAPE,
                           labels=list(classifier_labels), preprocessing="classifier",
                           progress=lines.append)
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-5
    assert any("verified: DLR vs ONNX Runtime" in line for line in lines)
    artifact = read_neo_artifact(result.artifact)
    assert artifact.input_shape() == SHAPE and artifact.labels == classifier_labels
    info = json.loads((artifact.directory / COMPILE_INFO_FILE).read_text())
    assert info["onnx"] == "classifier.onnx" and info["input_shape"] == list(SHAPE)
    # Served: the connector's probabilities, as the SageMaker original gives them.
    compiled = _probabilities(result.artifact)
    original = _probabilities(tiny_classifier_artifact)
    assert compiled.shape == (3,) and np.max(np.abs(compiled - original)) < 1e-3


def test_softmax_puts_the_probabilities_into_the_artifact(
        tmp_path: Path, tiny_classifier_artifact: Path) -> None:
    model = _export(tiny_classifier_artifact, tmp_path / "logits.onnx", output=LOGITS)
    batch = np.random.RandomState(0).uniform(0, 255, SHAPE).astype(np.float32)
    logits = run_onnx(model, batch)[0]
    assert not np.isclose(logits.sum(), 1.0)  # what the model itself gives
    result = compile_model(model, None, tmp_path / "neo", preprocessing="classifier",
                           softmax=True, progress=None)
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-5
    runtime = DLRRuntime(result.artifact)
    runtime.load()
    [compiled] = runtime.predict(batch)
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert np.max(np.abs(compiled - expected)) < 1e-5
    # Served: the same probabilities as the SageMaker original (which ends in a softmax).
    assert np.max(np.abs(_probabilities(result.artifact)
                         - _probabilities(tiny_classifier_artifact))) < 1e-3


def _cli_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert cli.main(["compile", *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_an_open_input_size_must_be_given(tmp_path: Path, tiny_classifier_artifact: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    model = _export(tiny_classifier_artifact, tmp_path / "open.onnx", ("N", 3, "H", "W"))
    err = _cli_error(capsys, [str(model), "-o", str(tmp_path / "neo")])
    assert "input 'data' is [?, 3, ?, ?]: give its size with --input-shape" in err


def test_an_input_shape_contradicting_the_model_is_refused(
        tmp_path: Path, tiny_classifier_artifact: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    model = _export(tiny_classifier_artifact, tmp_path / "fixed.onnx")
    err = _cli_error(capsys, [str(model), "-o", str(tmp_path / "neo"),
                              "--input-shape", "1,3,512,512"])
    assert "--input-shape (1, 3, 512, 512) contradicts the model's own input [1, 3, 224, 224]" \
        in err


def test_a_file_that_is_not_onnx_is_one_line(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "model.onnx"
    junk.write_bytes(b"\x00\xffnot a protobuf" * 10)
    err = _cli_error(capsys, [str(junk), "-o", str(tmp_path / "neo")])
    assert err.startswith(f"lis compile: {junk}: not a valid ONNX model")
    assert not (tmp_path / "neo").exists()


def test_a_model_with_two_inputs_is_refused(tmp_path: Path) -> None:
    import onnx  # noqa: PLC0415
    from onnx import helper  # noqa: PLC0415

    inputs = [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1, 3, 8, 8])
              for name in ("image", "mask")]
    output = helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Mul", ["image", "mask"], ["out"])], "two",
                              inputs, [output])
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    with pytest.raises(CompileError, match=r"one image input; this one takes 2 \(image, mask\)"):
        compile_model(path, None, tmp_path / "neo", progress=None)
