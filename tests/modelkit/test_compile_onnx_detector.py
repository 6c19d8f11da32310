"""`lis compile` with an ONNX detector that ends in NonMaxSuppression: built for TVM's Relay VM.

The detector is the demo SSD lis trains (``models/shapes-ssd``), exported by
MXNet's own ONNX exporter (``_onnx_models.export_onnx_detector``), whose
``box_nms`` becomes ``NonMaxSuppression``: output shapes that depend on the
data, which a graph executor cannot run. The artifact is served by TVM's
runtime (DLR 1.6 cannot run TVM 0.19's VM bytecode), in a fresh interpreter as
a replica would load it, and must answer a real scene as ONNX Runtime does. A detector made by hand
(``_onnx_models.tiny_nms_detector``) answers as many rows as NonMaxSuppression
keeps, no padding: it is served as is too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deployments.imaging import DETECTOR_PREPROCESSING, prepare_image
from deployments.output import detections
from deployments.neo import read_vm_artifact
from modelkit.compile import VERIFY_TOLERANCE, Tuning, compile_model
from modelkit.shapes import box_iou, detection_sample
from tests.modelkit._onnx_models import (
    DEMO_SSD_SHAPE,
    export_onnx_detector,
    run_onnx,
    tiny_nms_detector,
)
from serve_app import cli
from vocabulary.errors import CompileError
from vocabulary.names import COMPILE_INFO_FILE, GRAPH_FILE, PARAMS_FILE, VM_CODE_FILE

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
LABELS = REPO / "models" / "shapes-ssd" / "labels.txt"
SIDE = DEMO_SSD_SHAPE[3]
TINY_SIDE = 64
# A 512x512 scene of the demo's generator with four shapes, all three classes.
SCENE = detection_sample(seed=0, index=1)

# Serves argv[1] as an object-detection service through the real selection
# (InferencePipeline) in a fresh interpreter, answers the image in argv[2]
# (content type argv[3]) and reports which runtime served, the native
# libraries mapped and which of dlr/tvm/mxnet it imported. argv[4:] are made
# unimportable.
_SERVE = """
import json, os, sys
for name in sys.argv[4:]:
    sys.modules[name] = None
from deployments.inference import InferencePipeline, PipelineOptions
from vocabulary.errors import LisError
try:
    pipeline = InferencePipeline(sys.argv[1], PipelineOptions(algorithm="object-detection"))
except LisError as error:
    print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
    sys.exit()
with open(sys.argv[2], "rb") as image:
    answer = pipeline.run(image.read(), sys.argv[3])
with open("/proc/self/maps") as maps:
    mapped = {os.path.basename(line.split()[-1]) for line in maps if "/" in line}
print(json.dumps({
    "runtime": type(pipeline.runtime).__name__,
    "body": answer.body,
    "libraries": sorted(mapped & {"libdlr.so", "libtvm.so", "libtvm_runtime.so", "libmxnet.so"}),
    "imported": sorted(m for m in ("dlr", "tvm", "mxnet") if sys.modules.get(m) is not None),
}))
"""


@pytest.fixture(scope="module")
def onnx_detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import onnx  # noqa: PLC0415

    path = export_onnx_detector(tmp_path_factory.mktemp("onnx") / "shapes-ssd.onnx")
    assert "NonMaxSuppression" in {node.op_type for node in onnx.load(str(path)).graph.node}
    return path


@pytest.fixture(scope="module")
def vm_artifact(onnx_detector: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    lines: list[str] = []
    result = compile_model(onnx_detector, None, tmp_path_factory.mktemp("vm") / "artifact",
                           input_shape=DEMO_SSD_SHAPE, labels=LABELS, preprocessing="detector",
                           progress=lines.append)
    return {"result": result, "lines": lines}


def _serve(model: Path, image: Path, content_type: str, *blocked: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", _SERVE, str(model), str(image), content_type,
                           *blocked], capture_output=True, text=True, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_an_onnx_detector_compiles_for_the_relay_vm_verified_against_onnx_runtime(
        vm_artifact: dict[str, Any]) -> None:
    result, lines = vm_artifact["result"], vm_artifact["lines"]
    assert result.executor == "vm"
    assert result.max_abs_diff is not None and result.max_abs_diff <= VERIFY_TOLERANCE
    assert any("building for TVM's Relay VM (data-dependent output shapes)" in line
               for line in lines)
    assert any("verified: the TVM runtime vs ONNX Runtime" in line for line in lines)
    folder = result.artifact
    assert (folder / "compiled.so").is_file() and (folder / VM_CODE_FILE).is_file()
    assert not (folder / GRAPH_FILE).exists() and not (folder / PARAMS_FILE).exists()
    info = json.loads((folder / COMPILE_INFO_FILE).read_text())
    assert info["executor"] == "vm" and info["onnx"] == "shapes-ssd.onnx"
    assert info["input_name"] == "data" and info["input_shape"] == list(DEMO_SSD_SHAPE)
    # Verified on detections, not on an empty answer: the verification scene has shapes
    # on it, which the trained SSD finds (on random pixels it found none).
    assert info["verified_detections"] > 0
    assert not any("found nothing on the verification scene" in line for line in lines)


def _served_as_onnx_runtime_answers(artifact: Path, model: Path, side: int,
                                    tmp_path: Path) -> list[list[float]]:
    """The connector's rows for ``SCENE`` served from ``artifact``, held to ONNX Runtime's."""
    image = tmp_path / f"scene.{SCENE.extension}"
    image.write_bytes(SCENE.encoded)
    report = _serve(artifact, image, SCENE.content_type)
    # Where DLR has a native library (this machine) too: the VM is TVM's alone, runtime-only.
    assert report["runtime"] == "TVMVirtualMachineRuntime"
    assert report["libraries"] == ["libtvm_runtime.so"] and report["imported"] == ["tvm"]
    served: list[list[float]] = json.loads(report["body"])["prediction"]
    spec = DETECTOR_PREPROCESSING.with_overrides(width=side, height=side)
    batch = prepare_image(SCENE.encoded, SCENE.content_type, spec)
    expected = detections(*run_onnx(model, batch), side, side)
    assert len(served) == len(expected) > 0
    for got, want in zip(served, expected, strict=True):
        assert got[0] == want[0]
        np.testing.assert_allclose(got[1:], want[1:], atol=VERIFY_TOLERANCE)
    return served


def test_the_tvm_runtime_serves_it_as_onnx_runtime_answers_a_real_scene(
        vm_artifact: dict[str, Any], onnx_detector: Path, tmp_path: Path) -> None:
    served = _served_as_onnx_runtime_answers(vm_artifact["result"].artifact, onnx_detector,
                                             SIDE, tmp_path)
    # And the detector sees the scene: each drawn shape found, its class, IoU > 0.7.
    for shape in SCENE.shapes:
        box = [c / SIDE for c in shape.box]
        assert any(row[0] == shape.class_id and row[1] > 0.5 and box_iou(row[2:], box) > 0.7
                   for row in served), (shape, served)


def test_a_detector_whose_detection_count_depends_on_the_image_is_served_as_is(
        tmp_path: Path) -> None:
    model = tiny_nms_detector(tmp_path / "tiny.onnx", side=TINY_SIDE)
    batches = [np.random.RandomState(seed).uniform(-2, 2, (1, 3, TINY_SIDE, TINY_SIDE))
               for seed in (0, 1)]
    counts = {run_onnx(model, batch.astype(np.float32))[0].shape[1] for batch in batches}
    assert len(counts) == 2  # K is the image's, not a padded maximum

    result = compile_model(model, None, tmp_path / "vm", preprocessing="detector",
                           progress=None)

    assert result.executor == "vm"
    assert result.max_abs_diff is not None and result.max_abs_diff <= VERIFY_TOLERANCE
    _served_as_onnx_runtime_answers(result.artifact, model, TINY_SIDE, tmp_path)


def test_without_the_tvm_runtime_a_vm_artifact_says_what_to_install(
        vm_artifact: dict[str, Any], tmp_path: Path) -> None:
    image = tmp_path / f"scene.{SCENE.extension}"
    image.write_bytes(SCENE.encoded)
    report = _serve(vm_artifact["result"].artifact, image, SCENE.content_type, "tvm")
    assert report["error"].startswith("ArtifactError: ")
    assert "compiled for TVM's Relay VM, which only the TVM runtime serves" in report["error"]
    assert "pip install xtc-tvm-python-bindings==0.19.0.12" in report["error"]


def test_a_detector_without_the_three_outputs_is_refused_naming_what_it_has(
        tmp_path: Path) -> None:
    model = export_onnx_detector(tmp_path / "two-outputs.onnx", outputs=2)
    with pytest.raises(CompileError) as caught:
        compile_model(model, None, tmp_path / "vm", preprocessing="detector", progress=None)
    message = str(caught.value)
    assert "must answer 3 outputs: class ids [1, K, 1], scores [1, K, 1], boxes [1, K, 4]" \
        in message
    assert "this one answers 2: [1, 100, 1] float32, [1, 100, 1] float32" in message
    assert not (tmp_path / "vm").exists()


def test_the_command_line_says_which_runtime_verified_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_nms_detector(tmp_path / "tiny.onnx", side=TINY_SIDE)
    assert cli.main(["compile", str(model), "--input-shape", f"1,3,{TINY_SIDE},{TINY_SIDE}",
                     "--preprocessing", "detector", "-o", str(tmp_path / "vm.tar.gz")]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith(f"compiled {tmp_path / 'vm.tar.gz'} for 'llvm")
    assert "; the TVM runtime vs ONNX Runtime max abs difference " in summary
    assert read_vm_artifact(tmp_path / "vm.tar.gz").shape == (1, 3, TINY_SIDE, TINY_SIDE)


def test_tuning_records_are_refused_for_the_relay_vm(tmp_path: Path) -> None:
    model = tiny_nms_detector(tmp_path / "tiny.onnx", side=TINY_SIDE)
    with pytest.raises(CompileError, match=r"--tune and --tune-records apply to models the "
                                           r"graph executor runs; this one needs the Relay VM"):
        compile_model(model, None, tmp_path / "vm", tuning=Tuning(minutes=0.0,
                                                                  cache=tmp_path / "cache"),
                      progress=None)


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None,
                    reason="needs Debian's g++-aarch64-linux-gnu")
def test_a_vm_artifact_cross_compiles_for_aarch64_without_claiming_verification(
        tmp_path: Path) -> None:
    model = tiny_nms_detector(tmp_path / "tiny.onnx", side=TINY_SIDE)
    lines: list[str] = []
    result = compile_model(model, None, tmp_path / "jetson", target="aarch64",
                           progress=lines.append)
    assert result.executor == "vm" and result.max_abs_diff is None
    assert read_vm_artifact(result.artifact).machine == "aarch64"
    assert any("not verified: the artifact is for aarch64" in line for line in lines)
