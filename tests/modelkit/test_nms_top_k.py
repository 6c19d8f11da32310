"""``lis compile``'s NMS rewrite (``modelkit._nms_top_k``) answers exactly what TVM's NMS did.

TVM's NMS sorts every valid box before it keeps the top k; the rewrite lets it sort only the
boxes above the k-th best score. Both graphs, built by TVM in a process of their own, run
here in DLR (as lis serves them) on boxes hypothesis draws: scores tied, under the
threshold, in a narrow band, or NaN; class ids of -1 (invalid); boxes of any size.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.extra import numpy as hnp

from deployments._dlr import import_dlr
from tests.modelkit._nms_graphs import BATCH, BOXES, CASES, TOP_K, WIDTH

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "lis-hypothesis")
EXAMPLES = settings(max_examples=60, deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])
REWRITTEN_CASES = [name for name in CASES if "top_k" not in CASES[name]]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("nms-graphs")
    subprocess.run([sys.executable, "-m", "tests.modelkit._nms_graphs", str(out)], cwd=REPO,
                   check=True)
    return out


@pytest.fixture(scope="module")
def models(graphs: Path) -> dict[str, tuple[Any, Any]]:
    dlr = import_dlr()
    return {name: (dlr.DLRModel(str(graphs / name / "original"), "cpu"),
                   dlr.DLRModel(str(graphs / name / "rewritten"), "cpu"))
            for name in REWRITTEN_CASES}


@st.composite
def boxes(draw: st.DrawFn) -> np.ndarray:
    """A (BATCH, BOXES, 6) batch: class id, score, x1, y1, x2, y2."""
    shape = (BATCH, BOXES)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["continuous", "tied", "narrow", "few-valid"]))
    if kind == "tied":   # a handful of levels: ties across the k-th best
        scores = rng.integers(0, draw(st.integers(1, 6)), shape) / 5
    elif kind == "narrow":   # within a few float32 steps of each other
        scores = 0.5 + rng.integers(0, 8, shape) * np.float32(6e-8)
    elif kind == "few-valid":   # fewer than k boxes pass the threshold
        scores = np.where(rng.random(shape) < 0.01, rng.random(shape), 0.01)
    else:
        scores = rng.random(shape)
    data = np.empty((*shape, WIDTH), dtype=np.float32)
    data[..., 0] = rng.integers(draw(st.sampled_from([-1, 0])), 4, shape)
    data[..., 1] = scores
    corner = rng.random((*shape, 2)) * 100
    data[..., 2:4], data[..., 4:6] = corner, corner + rng.random((*shape, 2)) * 40
    nan_rows = draw(hnp.arrays(np.int64, draw(st.integers(0, 3)), elements=st.integers(
        0, BATCH * BOXES - 1)))
    data.reshape(-1, WIDTH)[nan_rows, 1] = np.nan
    return data


def _answers(model: Any, data: np.ndarray) -> list[np.ndarray]:
    return [np.asarray(output) for output in model.run({"data": data})]


@pytest.mark.parametrize("case", REWRITTEN_CASES)
@EXAMPLES
@given(data=boxes())
def test_the_rewritten_nms_answers_what_tvms_did(models: dict, case: str,
                                                 data: np.ndarray) -> None:
    original, rewritten = models[case]
    expected, got = _answers(original, data), _answers(rewritten, data)
    assert [a.shape for a in got] == [a.shape for a in expected]
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_array_equal(have, want)


def test_the_rewrite_reports_what_it_changed(graphs: Path) -> None:
    reported = json.loads((graphs / "rewritten.json").read_text())
    assert reported == {name: [[BOXES, TOP_K]] if name in REWRITTEN_CASES else []
                        for name in CASES}


@pytest.mark.parametrize("fixture, boxes_offered", [
    ("ssd_artifact", 6132 * 20),     # SSD-512: anchors x VOC classes
    ("yolo_artifact", 16128 * 20),   # YOLOv3 at 512: (16² + 32² + 64²) x 3 anchors x classes
])
def test_lis_compile_rewrites_gluoncvs_nms(fixture: str, boxes_offered: int,
                                           request: pytest.FixtureRequest) -> None:
    # The fixtures compile through the real `lis compile`, which verified each artifact
    # against MXNet.
    output = request.getfixturevalue(fixture)["cli_output"]
    assert f"NMS keeps the top 400 of {boxes_offered} boxes" in output
