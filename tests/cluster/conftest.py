"""Captured device files and an environment free of any real cluster token.

``fixtures/<device>/`` holds what those boards expose under ``/`` (the
device tree, ``/etc/nv_tegra_release``, ``/proc/cpuinfo``, ``/proc/meminfo``)
plus ``uname-m``, the architecture the kernel reports.

The multi-node tests run ``_scenarios/*.py`` in subprocesses (``run_scenario``),
each with its own ``ray.cluster_utils.Cluster``, and assert on what they report.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cluster import _token

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]
RAY_TOKEN_VARIABLES = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_USE_TLS")


@dataclass(frozen=True)
class CapturedDevice:
    name: str
    root: Path
    machine: str

    def cli_args(self) -> list[str]:
        return ["--device-root", str(self.root), "--machine", self.machine]


def _captured(name: str, root: Path | None = None) -> CapturedDevice:
    root = root or FIXTURES / name
    return CapturedDevice(name, root, (FIXTURES / name / "uname-m").read_text().strip())


@pytest.fixture
def device() -> Callable[[str], CapturedDevice]:
    """A captured device by name (a folder of ``fixtures/``), read-only."""
    return _captured


@pytest.fixture
def copy_device(tmp_path: Path) -> Callable[[str], CapturedDevice]:
    """A writable copy of a captured device, to remove or change files."""
    def make(name: str) -> CapturedDevice:
        root = tmp_path / "devices" / name
        shutil.copytree(FIXTURES / name, root)
        return _captured(name, root)
    return make


@pytest.fixture(autouse=True)
def no_real_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No test reads or writes the user's token, or inherits Ray's auth variables."""
    for name in RAY_TOKEN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    default = tmp_path / "home" / ".config" / "lis" / "cluster-token"
    monkeypatch.setattr(_token, "DEFAULT_TOKEN_FILE", default)
    yield default


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    """A worker's copy of the head's token, mode 0600."""
    path = tmp_path / "cluster-token"
    _token.write_new_token(path)
    return path


# --- multi-node scenarios (test_placement, test_node_loss, test_rolling_update) ------------

SCENARIOS = Path(__file__).parent / "_scenarios"
RESULT_PREFIX = "SCENARIO-RESULT "
# Generous: five Ray nodes and several model loads on a shared 2-core machine.
SCENARIO_TIMEOUT_S = 280
# What makes a scenario's lis act differently from the test's intent.
_SCENARIO_UNSET = ("LIS_TOKEN", "LIS_ENDPOINT", "LIS_TRANSPORT", "LIS_FAKE_GPU_SUPPORT")


@dataclass(frozen=True)
class ScenarioRun:
    seen: dict[str, Any]  # the scenario's observations
    exit_code: int
    log_tail: str  # the end of its stderr, for failure messages


@pytest.fixture(scope="session")
def run_scenario(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., ScenarioRun]:
    """Run ``_scenarios/<name>.py`` in its own process with its own Ray cluster.

    One Ray cluster per process: the serve_app end-to-end tests keep theirs for
    the whole session, so the multi-node clusters live in subprocesses.
    """
    def run(name: str, **args: Any) -> ScenarioRun:
        env = {k: v for k, v in os.environ.items()
               if k not in _SCENARIO_UNSET and not k.startswith("RAY_AUTH")}
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        workdir = tmp_path_factory.mktemp(name)
        done = subprocess.run(
            [sys.executable, str(SCENARIOS / f"{name}.py"),
             json.dumps({"workdir": str(workdir), **args})],
            capture_output=True, text=True, timeout=SCENARIO_TIMEOUT_S, env=env, cwd=REPO)
        lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
        tail = done.stderr[-4000:]
        assert lines, f"scenario {name} reported nothing (exit {done.returncode}):\n{tail}"
        return ScenarioRun(json.loads(lines[-1][len(RESULT_PREFIX):]), done.returncode, tail)
    return run


def _classifier_artifact(dest: Path, net: Any,
                         labels: tuple[str, ...] = ("circle", "square", "triangle")) -> Path:
    from deployments.sagemaker_ic import write_classifier_artifact

    write_classifier_artifact(net, dest, labels=list(labels))
    return dest


@pytest.fixture(scope="session")
def classifier_variants(tiny_classifier_artifact: Path,
                        tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three versions of the tiny classifier whose answers differ (their output biases)."""
    import mxnet as mx

    folder = tmp_path_factory.mktemp("variants")
    variants = []
    for name, bias in (("a", [0.3, -0.2, 0.1]), ("b", [2.0, 0.0, -1.0]), ("c", [-1.0, 0.5, 2.0])):
        variant = folder / name
        shutil.copytree(tiny_classifier_artifact, variant)
        params = next(variant.glob("*.params"))
        weights = mx.nd.load(str(params))
        # The output layer's bias, whatever Gluon named it in the process that built it.
        output_bias = next(key for key, value in weights.items()
                           if key.endswith("_bias") and value.shape == (3,))
        weights[output_bias] = mx.nd.array(bias)
        mx.nd.save(str(params), weights)
        variants.append(variant)
    return variants


@pytest.fixture(scope="session")
def slow_classifier_artifact() -> Path:
    """A classifier that takes seconds per request on one thread (random weights).

    The same artifact, in the same cache folder, as tests/serve_app's ``slow``.
    """
    key = hashlib.sha256(b"e2e-classifier-slow-256-4-3-v1").hexdigest()[:12]
    dest = REPO / "build" / "test-cache" / f"slow-{key}"
    if dest.is_dir():
        return dest
    import mxnet as mx
    from mxnet.gluon import nn

    mx.random.seed(7)
    net = nn.HybridSequential()
    for _ in range(4):
        net.add(nn.Conv2D(256, 3, padding=1, activation="relu"))
    net.add(nn.GlobalAvgPool2D(), nn.Dense(3))
    net.initialize(mx.init.Xavier(magnitude=2.5))
    net.hybridize()
    net(mx.nd.zeros((1, 3, 224, 224)))
    scratch = dest.with_suffix(".tmp")
    _classifier_artifact(scratch, net, labels=("class0", "class1", "class2"))
    scratch.rename(dest)
    return dest
