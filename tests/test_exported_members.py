"""The public surface is exactly what we mean to export."""

from __future__ import annotations

import subprocess
import sys

import greengrass_machine_learning_sdk
import serve_app
from greengrass_machine_learning_sdk import feedback


def test_sdk_exports_the_original_names() -> None:
    assert sorted(greengrass_machine_learning_sdk.__all__) == [
        "GreengrassDependencyException", "GreengrassInferenceException", "StreamingBody",
        "client",
    ]
    for name in greengrass_machine_learning_sdk.__all__:
        assert getattr(greengrass_machine_learning_sdk, name) is getattr(serve_app, name)
    assert issubclass(feedback.GreengrassFeedbackException, Exception)


def test_client_imports_no_runtime_and_no_ray() -> None:
    code = ("import sys, greengrass_machine_learning_sdk as ml; ml.client('inference'); "
            "print(sorted(m for m in ('mxnet', 'dlr', 'tvm', 'ray', 'deployments', 'cv2') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_serving_path_never_imports_the_compiler() -> None:
    code = ("import sys, serve_app.app, deployments.service, deployments.inference; "
            "print('tvm' in sys.modules, 'gluoncv' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False False"
