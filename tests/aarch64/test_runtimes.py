"""On aarch64 each demo model loads on the runtime this machine has, and its
outputs equal x86's on the same input within 1e-3.

From PyPI, aarch64 has no MXNet that imports and a DLR without its native
library, so every demo model here is a compiled artifact (``models/aarch64/``,
installed by ``lis models build``) served by TVM's runtime, loaded
runtime-only. x86 served the same models with MXNet (the classifier) and DLR
(the detectors).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deployments._dlr import installed_libdlr
from deployments.inference import InferencePipeline, PipelineOptions
from modelkit.compile import pair_detections
from vocabulary.errors import ArtifactError

TOLERANCE = 1e-3
DETECTOR_INPUT_SIDE = 512  # boxes come in input pixels; compared as fractions of the side
MODELS = ("shapes-classifier", "shapes-ssd", "shapes-yolo3")


def test_lis_models_build_installed_the_prebuilt_aarch64_artifacts(built_models: Path) -> None:
    for name in MODELS:
        assert (built_models / name / "compiled.so").is_file(), name
        assert (built_models / name / "lis-compile.json").is_file(), name


def test_this_machine_has_neither_mxnet_nor_a_native_dlr() -> None:
    # What the runtime choice below rests on: requirements.txt installs no MXNet on
    # aarch64, and PyPI's dlr==1.6.0 for aarch64 is pure Python.
    assert importlib.util.find_spec("mxnet") is None
    assert importlib.util.find_spec("dlr") is not None
    assert installed_libdlr() is None


def test_a_sagemaker_ic_artifact_says_how_to_serve_it_here() -> None:
    from deployments.mxnet_runtime import MXNetClassifierRuntime

    with pytest.raises(ArtifactError, match=r"MXNet cannot load.*lis compile.*--target aarch64"):
        MXNetClassifierRuntime(Path("models/shapes-classifier")).load()


def _detection_difference(expected: list[np.ndarray], got: list[np.ndarray]) -> float:
    valid = expected[0][0, :, 0] >= 0
    assert valid.any(), "x86 found nothing in the scene: the reference is useless"
    e_ids, e_scores, e_boxes = (o[0][valid] for o in expected)
    g_ids, g_scores, g_boxes = (o[0] for o in got)
    twins = pair_detections(e_ids[:, 0], e_scores[:, 0], g_ids[:, 0], g_scores[:, 0], TOLERANCE)
    np.testing.assert_array_equal(g_ids[twins], e_ids)
    return max(float(np.max(np.abs(g_scores[twins] - e_scores))),
               float(np.max(np.abs(g_boxes[twins] - e_boxes))) / DETECTOR_INPUT_SIDE)


@pytest.mark.parametrize("name", MODELS)
def test_runtime_outputs_equal_x86s(name: str, built_models: Path, reference_dir: Path,
                                    reference: dict[str, Any]) -> None:
    entry = reference[name]
    pipeline = InferencePipeline(built_models / name,
                                 PipelineOptions(algorithm=entry["algorithm"]))
    assert type(pipeline.runtime).__name__ == "TVMGraphRuntime"
    assert "dlr" not in sys.modules  # the TVM runtime ran in a process that never loaded DLR
    batch = np.load(reference_dir / entry["input"])
    got = pipeline.runtime.predict(batch)
    expected = [np.asarray(o, dtype=np.float64) for o in entry["outputs"]]
    if entry["algorithm"] == "image-classification":
        diff = float(np.max(np.abs(got[0] - expected[0])))
    else:
        diff = _detection_difference(expected, got)
    print(f"{name}: TVM runtime on aarch64 vs {entry['runtime']} on x86_64: "
          f"max abs difference {diff:.3g}")
    assert diff <= TOLERANCE
