"""`lis compile`: local Neo. What the user sees when it works and when it fails."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deployments.imaging import (
    CLASSIFIER_PREPROCESSING,
    DETECTOR_PREPROCESSING,
    read_preprocessing,
)
from deployments.neo import read_neo_artifact
from deployments.sagemaker_ic import SYMBOL_FILE
from modelkit import compile as compiler
from modelkit.compile import compare_outputs, compile_model
from serve_app import cli
from vocabulary.errors import CompileError
from vocabulary.names import COMPILE_INFO_FILE
from vocabulary.names import SYMBOL_PREFIX as PREFIX

_STAGE_LINE = re.compile(r"^\[\s*\d+\.\d+s\] ")


@pytest.mark.slow
def test_cli_shows_stages_and_verifies(ssd_artifact: dict[str, Any]) -> None:
    # ssd_artifact was made by running `lis compile --symbol ... --params ...`.
    lines = ssd_artifact["cli_output"].splitlines()
    stages = [line for line in lines if _STAGE_LINE.match(line)]
    assert any("building for target 'llvm" in line for line in stages)
    assert any("verifying: loading the artifact with DLR" in line for line in stages)
    verified = [line for line in stages if "verified: DLR vs MXNet max abs difference" in line]
    assert len(verified) == 1
    assert re.search(r"compiled .*neo for 'llvm.*' in \d+ s; DLR vs MXNet max abs difference",
                     lines[-1])
    assert "Traceback" not in ssd_artifact["cli_output"]


@pytest.mark.slow
def test_detector_artifact_carries_labels_and_preprocessing(ssd_artifact: dict[str, Any]) -> None:
    artifact = read_neo_artifact(ssd_artifact["artifact"])
    assert artifact.labels is not None and len(artifact.labels) == 20
    assert artifact.labels[:2] == ("aeroplane", "bicycle")
    assert read_preprocessing(artifact.directory) == DETECTOR_PREPROCESSING
    info = json.loads((artifact.directory / COMPILE_INFO_FILE).read_text())
    assert info["input_shape"] == [1, 3, 512, 512]
    assert info["target"].startswith("llvm")
    assert 0 <= info["verified_max_abs_diff"] < 1


def test_sagemaker_archive_compiles_to_an_archive(tmp_path: Path,
                                                  tiny_classifier_artifact: Path) -> None:
    from deployments.archive import pack_folder

    model = pack_folder(tiny_classifier_artifact, tmp_path / "model.tar.gz")
    lines: list[str] = []
    result = compile_model(model, None, tmp_path / "out" / "neo.tar.gz", progress=lines.append)
    assert result.artifact == tmp_path / "out" / "neo.tar.gz" and result.artifact.is_file()
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-5
    assert result.target.startswith("llvm")
    artifact = read_neo_artifact(result.artifact)
    assert artifact.input_shape() == (1, 3, 224, 224)  # from model-shapes.json
    assert artifact.labels == ("circle", "square", "triangle")
    assert read_preprocessing(artifact.directory) == CLASSIFIER_PREPROCESSING
    assert all(_STAGE_LINE.match(line) for line in lines)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["neo.tar.gz"]  # no leftovers


def _cli_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert cli.main(["compile", *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def test_corrupt_symbol_is_one_line(tmp_path: Path, tiny_classifier_artifact: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "net-symbol.json").write_text('{"nodes": [{"op": "null", "name": "data"')
    shutil.copy(tiny_classifier_artifact / f"{PREFIX}-0000.params", tmp_path / "net-0000.params")
    err = _cli_error(capsys, [str(tmp_path / "net"), "-o", str(tmp_path / "out")])
    assert err.startswith("lis compile: ")
    assert "net-symbol.json: not a valid MXNet symbol JSON" in err


def test_unknown_operator_is_one_line_with_the_log(tmp_path: Path,
                                                   tiny_classifier_artifact: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    graph = json.loads((tiny_classifier_artifact / SYMBOL_FILE).read_text())
    graph["nodes"][-1]["op"] = "NoSuchOperator"
    (tmp_path / "net-symbol.json").write_text(json.dumps(graph))
    shutil.copy(tiny_classifier_artifact / f"{PREFIX}-0000.params", tmp_path / "net-0000.params")
    err = _cli_error(capsys, ["--symbol", str(tmp_path / "net-symbol.json"),
                              "--params", str(tmp_path / "net-0000.params"),
                              "--input-shape", "1,3,224,224", "-o", str(tmp_path / "out")])
    assert "compile failed: cannot load symbol" in err and "NoSuchOperator" in err
    log = Path(re.search(r"full log: (\S+)\)", err).group(1))  # type: ignore[union-attr]
    assert log.is_file() and "NoSuchOperator" in log.read_text()
    assert not (tmp_path / "out").exists()


def test_missing_tvm_is_one_line(tmp_path: Path, tiny_classifier_artifact: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = compiler.importlib.util.find_spec
    monkeypatch.setattr(compiler.importlib.util, "find_spec",
                        lambda name, *a: None if name == "tvm" else real_find_spec(name, *a))
    with pytest.raises(CompileError, match="TVM is not installed: install the compile extra"):
        compile_model(tiny_classifier_artifact, None, tmp_path / "out")


def test_nothing_to_compile_is_explained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _cli_error(capsys, [str(tmp_path / "nothing"), "-o", str(tmp_path / "out")])
    assert "is not a SageMaker IC artifact nor a checkpoint prefix" in err


def test_bad_input_shape_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["compile", "x", "--input-shape", "3,224", "-o", "out"])
    assert "expected N,C,H,W" in capsys.readouterr().err


# --- how outputs are compared --------------------------------------------------------

def _detections(ids: list[float], scores: list[float]) -> list[np.ndarray]:
    n = len(ids)
    boxes = np.arange(n * 4, dtype=np.float32).reshape(1, n, 4)
    return [np.asarray(ids, np.float32).reshape(1, n, 1),
            np.asarray(scores, np.float32).reshape(1, n, 1), boxes]


def test_detection_padding_rows_are_not_compared() -> None:
    reference = _detections([3, 1, -1], [0.9, 0.5, -1])
    actual = _detections([3, 1, -1], [0.9002, 0.5, 0.7])
    actual[2][0, 2] = 999  # padding row: anything goes
    assert compare_outputs(reference, actual) == pytest.approx(2e-4, rel=1e-2)


def test_detection_class_ids_must_match() -> None:
    with pytest.raises(CompileError, match="different class ids"):
        compare_outputs(_detections([3, 1], [0.9, 0.5]), _detections([3, 2], [0.9, 0.5]))


def test_detections_whose_scores_tie_may_come_in_either_order() -> None:
    # Two scores 7e-6 apart, as a compiled YOLOv3 once swapped them: the same detections.
    reference = _detections([16, 14, 7], [0.87468, 0.874674, 0.87])
    actual = _detections([14, 16, 7], [0.874677, 0.874671, 0.87])
    actual[2][0, [0, 1]] = actual[2][0, [1, 0]]  # each box travels with its detection
    assert compare_outputs(reference, actual) < 1e-5
    actual[2][0, 0] += 5  # but a twin's box must still match
    with pytest.raises(CompileError, match="differ by 5"):
        compare_outputs(reference, actual)


def test_large_difference_fails_verification() -> None:
    with pytest.raises(CompileError, match="differ by 0.1"):
        compare_outputs([np.array([[0.5, 0.5]])], [np.array([[0.6, 0.4]])])


def test_operator_tvm_cannot_compile_is_one_line(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import mxnet as mx

    # erfinv is an MXNet operator that TVM's MXNet frontend does not convert.
    mx.sym.softmax(mx.sym.erfinv(mx.sym.var("data") * 0.001)).save(str(tmp_path / "m-symbol.json"))
    mx.nd.save(str(tmp_path / "m-0000.params"), {})
    err = _cli_error(capsys, [str(tmp_path / "m"), "--input-shape", "1,3,8,8",
                              "-o", str(tmp_path / "out.tar.gz")])
    assert "compile failed: unsupported operator" in err and "erfinv" in err
    assert "full log: " in err


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None,
                    reason="needs Debian's g++-aarch64-linux-gnu")
def test_cross_compiles_for_aarch64_without_claiming_verification(
        tmp_path: Path, tiny_classifier_artifact: Path) -> None:
    lines: list[str] = []
    result = compile_model(tiny_classifier_artifact, None, tmp_path / "jetson",
                           target="aarch64", progress=lines.append)
    assert result.max_abs_diff is None
    assert "-mtriple=aarch64-linux-gnu" in result.target
    assert read_neo_artifact(result.artifact).machine == "aarch64"
    assert any("not verified: the artifact is for aarch64" in line for line in lines)
