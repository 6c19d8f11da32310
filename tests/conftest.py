"""Session fixtures shared by the whole suite: small real model artifacts.

Expensive artifacts (the compiled SSD and YOLOv3, ~1 minute each) are cached
under ``build/test-cache/<sha256 of their inputs>/``: the model, seed, the
toolchain source that builds them, library versions and this CPU. A second
run, or another test session, reuses them; a change to any input builds anew.
A cache entry is built in a temporary folder and renamed into place, so a
concurrent session never sees half of one.

- ``tiny_classifier_artifact``: a SageMaker IC folder (3 classes, 3x224x224),
  random but non-degenerate weights; builds in milliseconds.
- ``tiny_neo_artifact``: that classifier compiled by ``compile_model`` (seconds).
- ``ssd_artifact`` / ``yolo_artifact``: GluonCV ``ssd_512_mobilenet1.0_voc`` and
  ``yolo3_mobilenet1.0_voc`` (``pretrained=False``), deterministically
  initialised, exported, and compiled by the real ``lis compile`` command line.

Real peers for ML Feedback (``tests/peers.py``):

- ``mqtt_broker``: amqtt in its own process on a free loopback port; it records
  every message it receives (see ``_mqtt_broker.py``), can be stopped and
  started again on the same port, and is killed at the end of the test.
- ``s3_server``: moto's S3 in server mode on a free loopback port, reached by
  boto3 over HTTP; it can be stopped and started again (moto keeps its buckets
  in this process, so objects survive the restart like a real store's would).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from peers import MqttBroker, S3Server

REPO = Path(__file__).resolve().parent.parent
TEST_CACHE = REPO / "build" / "test-cache"
# Bump to rebuild every cached artifact.
FIXTURE_VERSION = 1
CLASSIFIER_LABELS = ("circle", "square", "triangle")
DETECTOR_SEED = 0
# Beside lis compile's own sources (compiler_digest), what else decides a test artifact: the
# driver around it, its verification, and the reference networks the fixtures build.
_TOOLCHAIN_FILES = ("modelkit/compile.py", "modelkit/_verify.py", "modelkit/_compare.py",
                    "modelkit/_source.py", "modelkit/_device.py", "modelkit/_child.py",
                    "modelkit/reference_nets.py", "deployments/neo.py", "deployments/archive.py")

os.environ["TOPHUB_LOCATION"] = "NONE"


@pytest.fixture(scope="session", autouse=True)
def _private_artifact_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Archives extracted during tests go to a temporary cache, not ~/.cache."""
    os.environ.setdefault("LIS_CACHE_DIR", str(tmp_path_factory.mktemp("lis-cache")))


# --- the cache ------------------------------------------------------------------------

def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _cache_key(**inputs: Any) -> str:
    import mxnet  # noqa: PLC0415

    from modelkit.compile import compiler_digest  # noqa: PLC0415

    sources = {name: hashlib.sha256((REPO / name).read_bytes()).hexdigest()
               for name in _TOOLCHAIN_FILES}
    sources["compiler"] = compiler_digest()
    described = {"fixture_version": FIXTURE_VERSION, "inputs": inputs, "sources": sources,
                 "mxnet": mxnet.__version__, "machine": platform.machine(), "cpu": _cpu_name()}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def cached_build(key: str, build: Callable[[Path], None]) -> Path:
    """``build(folder)`` once per key; later calls return the finished folder."""
    dest = TEST_CACHE / key
    if dest.is_dir():
        return dest
    TEST_CACHE.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=TEST_CACHE))
    try:
        build(staging)
        staging.chmod(0o755)
        try:
            os.rename(staging, dest)
        except OSError:
            if not dest.is_dir():  # else a concurrent session built it first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


# --- the tiny classifier ------------------------------------------------------------

def build_tiny_classifier() -> Any:
    """A 3-class Gluon classifier on 0-255 RGB; random weights, seeded."""
    import mxnet as mx  # noqa: PLC0415
    from mxnet.gluon import nn  # noqa: PLC0415

    mx.random.seed(7)
    net = nn.HybridSequential()
    net.add(nn.HybridLambda(lambda F, x: x * (1.0 / 255)),  # SageMaker IC feeds raw 0-255
            nn.Conv2D(8, kernel_size=3, strides=4, activation="relu"),
            nn.GlobalAvgPool2D(),
            nn.Dense(3))
    net.initialize(mx.init.Xavier(magnitude=3))
    net(mx.nd.zeros((1, 3, 224, 224)))
    net[3].bias.set_data(mx.nd.array([0.3, -0.2, 0.1]))
    return net


@pytest.fixture
def tiny_classifier_net() -> Any:
    """A fresh copy of the Gluon net behind ``tiny_classifier_artifact``."""
    return build_tiny_classifier()


@pytest.fixture(scope="session")
def classifier_labels() -> tuple[str, ...]:
    return CLASSIFIER_LABELS


@pytest.fixture(scope="session")
def detector_batch() -> np.ndarray:
    """The deterministic 1x3x512x512 input the detector tests run."""
    return detector_input()


@pytest.fixture(scope="session")
def tiny_classifier_artifact() -> Path:
    """A SageMaker IC artifact folder: 3 classes, input 1x3x224x224, with labels."""
    from deployments.imaging import CLASSIFIER_PREPROCESSING  # noqa: PLC0415
    from deployments.sagemaker_ic import write_classifier_artifact  # noqa: PLC0415

    def build(folder: Path) -> None:
        write_classifier_artifact(build_tiny_classifier(), folder / "model",
                                  labels=CLASSIFIER_LABELS,
                                  preprocessing=CLASSIFIER_PREPROCESSING)

    return cached_build(_cache_key(model="tiny-classifier"), build) / "model"


@pytest.fixture(scope="session")
def tiny_neo_artifact(tiny_classifier_artifact: Path) -> Path:
    """The tiny classifier compiled for this CPU (a Neo/DLR folder)."""
    from modelkit.compile import compile_model  # noqa: PLC0415

    def build(folder: Path) -> None:
        compile_model(tiny_classifier_artifact, None, folder / "neo", progress=None)

    return cached_build(_cache_key(model="tiny-classifier-neo"), build) / "neo"


# --- the GluonCV detectors ----------------------------------------------------------

def detector_input(size: int = 512, seed: int = DETECTOR_SEED) -> np.ndarray:
    """A deterministic preprocessed 1x3xSxS batch, as serving would make it."""
    from modelkit.reference_nets import random_pixels  # noqa: PLC0415

    return random_pixels(size, seed)


def _export_detector(name: str, folder: Path) -> tuple[Path, Path, tuple[str, ...]]:
    """GluonCV's ``name``, random weights calibrated so that it detects something."""
    from modelkit.reference_nets import random_gluoncv  # noqa: PLC0415

    net = random_gluoncv(name, detector_input(), seed=DETECTOR_SEED)
    prefix = folder / "mxnet" / name
    prefix.parent.mkdir(parents=True)
    net.export(str(prefix), epoch=0)
    return (prefix.with_name(f"{name}-symbol.json"), prefix.with_name(f"{name}-0000.params"),
            tuple(net.classes))


def _lis_command() -> list[str]:
    script = Path(sys.executable).with_name("lis")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "serve_app.cli"]


def _build_detector(name: str, folder: Path) -> None:
    symbol, params, classes = _export_detector(name, folder)
    labels = folder / "labels.txt"
    labels.write_text("".join(f"{c}\n" for c in classes))
    command = [*_lis_command(), "compile", "--symbol", str(symbol), "--params", str(params),
               "--input-shape", "1,3,512,512", "--labels", str(labels),
               "--preprocessing", "detector", "--output", str(folder / "neo")]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    (folder / "cli-output.txt").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        pytest.fail(f"lis compile {name} failed:\n{done.stdout}\n{done.stderr}")
    (folder / "compile.json").write_text(json.dumps({"seconds": seconds, "command": command}))


def _detector(name: str) -> dict[str, Any]:
    folder = cached_build(_cache_key(model=name, seed=DETECTOR_SEED),
                          lambda f: _build_detector(name, f))
    return {
        "name": name,
        "artifact": folder / "neo",
        "symbol": folder / "mxnet" / f"{name}-symbol.json",
        "params": folder / "mxnet" / f"{name}-0000.params",
        "labels": folder / "labels.txt",
        "cli_output": (folder / "cli-output.txt").read_text(),
        "compile_seconds": json.loads((folder / "compile.json").read_text())["seconds"],
    }


@pytest.fixture(scope="session")
def ssd_artifact() -> dict[str, Any]:
    """GluonCV SSD-512 MobileNet (VOC), compiled by ``lis compile``.

    Keys: ``artifact`` (Neo folder), ``symbol``/``params`` (the MXNet
    checkpoint it was compiled from), ``labels``, ``cli_output``, ``compile_seconds``.
    """
    return _detector("ssd_512_mobilenet1.0_voc")


@pytest.fixture(scope="session")
def yolo_artifact() -> dict[str, Any]:
    """GluonCV YOLOv3 MobileNet (VOC), compiled by ``lis compile``; keys as ``ssd_artifact``."""
    return _detector("yolo3_mobilenet1.0_voc")


@pytest.fixture
def mqtt_broker(tmp_path: Path) -> Iterator[MqttBroker]:
    broker = MqttBroker(tmp_path / "broker-record.jsonl")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = S3Server()
    server.start()
    yield server
    server.stop()
