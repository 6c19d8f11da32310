from __future__ import annotations

import subprocess
import sys

import cluster


def test_cluster_exports_exactly_its_public_names() -> None:
    assert sorted(cluster.__all__) == [
        "DEFAULT_TOKEN_FILE", "Decision", "DevicePlatform", "NodeOptions",
        "NodePlan", "cluster_auth_environment", "detect_platform", "plan_node",
    ]
    for name in cluster.__all__:
        assert getattr(cluster, name) is not None


def test_planning_a_node_loads_neither_ray_nor_a_runtime() -> None:
    # `lis node plan` must be quick on a Pi, and work before Ray is installed.
    code = ("import sys, cluster.node; "
            "print(sorted(m for m in ('ray', 'mxnet', 'dlr', 'tvm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
