"""MXNet is loaded without SciPy (49 MB of a classifier replica), which stays importable.

In a fresh process, as in a replica: the classifier loads and answers, SciPy is
not in memory afterwards, and importing it later still works (TVM's compiler needs it).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_CHILD = """
import sys
import numpy as np
from deployments.mxnet_runtime import MXNetClassifierRuntime
runtime = MXNetClassifierRuntime(__import__("pathlib").Path(sys.argv[1]), threads=1)
runtime.load()
[probabilities] = runtime.predict(np.zeros(runtime.input_shape, np.float32))
print("loaded", "scipy" in sys.modules, round(float(np.sum(probabilities)), 3))
import scipy.sparse
print("scipy importable", scipy.sparse.csr_matrix((1, 1)).shape)
"""


def test_mxnet_loads_and_answers_without_scipy(tiny_classifier_artifact: Path) -> None:
    run = subprocess.run([sys.executable, "-c", _CHILD, str(tiny_classifier_artifact)],
                         capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[2])
    assert run.returncode == 0, run.stderr[-3000:]
    assert "loaded False 1.0" in run.stdout, run.stdout
    assert "scipy importable (1, 1)" in run.stdout
