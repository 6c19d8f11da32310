"""On aarch64, ``lis up`` with the demo configuration serves all three demo
services over HTTP with x86's answers, and the seed pages' Lambda code gets
its answers over the SDK.

One ``lis up`` for the module, as ``make run`` starts it (a subprocess, on
this machine's own Ray). The demo configuration declares the x86-64
connectors; ``lis up`` without a configuration hosts every platform's
services, so they start on this aarch64 box too.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from emulated import EMULATED_SLOWDOWN, REPO
from waiting import wait_for_line, wait_until
from x86_reference import SEED_IMAGE

TOLERANCE = 1e-3
ENDPOINT = "http://127.0.0.1:8000"
# On x86 the demo stack is ready in about 15 s.
READY_TIMEOUT_S = 20 * EMULATED_SLOWDOWN
STOP_TIMEOUT_S = 3 * EMULATED_SLOWDOWN
RAY_START_ATTEMPTS = 3
RAY_NODE_TIMEOUT = "The current node timed out during startup"
RAY_NO_LOCAL_NODE = "No node info found matching attributes"
QEMU_HIDES_RAYLET = (
    "Ray's driver finds the local raylet by its process name (argv[0], read from /proc); "
    "under qemu-user every emulated process's argv[0] is qemu's own path, so a driver that "
    "joins a running Ray by address (ray.init(address=...)) finds no raylet here, unless the "
    "raylet runs under a qemu registered by that name (a64_raylet_binfmt in "
    "scripts/aarch64/rootfs.sh: run the suite with `make test-aarch64`). A board is not affected.")
SEED_EXAMPLES = REPO / "tests" / "serve_app" / "seed_examples"
LOGGING_ON = "import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout)\n"


@dataclass(frozen=True)
class RunningLis:
    process: subprocess.Popen[bytes]
    log: Path


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _stop(process: subprocess.Popen[bytes]) -> None:
    # Ctrl-C, as a user stops it; then make sure no Ray process of ours outlives the suite
    # (`make test-aarch64` runs it in a PID namespace of its own: `ray stop` sees only ours).
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    subprocess.run([_bin("ray"), "stop", "--force"], capture_output=True,
                   timeout=STOP_TIMEOUT_S, check=False)


def _start_lis(log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([_bin("lis"), "up"], cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT)


def _ray_gave_up_on_its_node(log: Path) -> bool:
    # The raylet aborts when its dashboard agent has not written its port files within a
    # hard-coded 15 s (ray-project/ray#65983), and the agent is a Python process that can
    # take longer to start under qemu on a busy host. Ray's deadline, not lis's: try again.
    return RAY_NODE_TIMEOUT in log.read_text(errors="replace")


@pytest.fixture(scope="module")
def running_lis(built_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLis]:
    for attempt in range(1, RAY_START_ATTEMPTS + 1):
        log = tmp_path_factory.mktemp("lis-up") / "lis-up.log"
        process = _start_lis(log)
        try:
            wait_for_line(process, log, "lis: serving on http://", timeout_s=READY_TIMEOUT_S,
                          what="lis up")
            break
        except AssertionError as error:
            _stop(process)
            if RAY_NO_LOCAL_NODE in log.read_text(errors="replace"):
                raise AssertionError(f"{error}\n{QEMU_HIDES_RAYLET}") from None
            if attempt == RAY_START_ATTEMPTS or not _ray_gave_up_on_its_node(log):
                raise
            print(f"lis up, attempt {attempt}: Ray's node did not start in Ray's time; again")
    print(log.read_text(errors="replace"))
    try:
        yield RunningLis(process, log)
    finally:
        _stop(process)


def _invoke(service: str, image: bytes) -> Any:
    response = requests.post(f"{ENDPOINT}/inference/{service}", data=image,
                             headers={"Content-Type": "image/png"}, timeout=READY_TIMEOUT_S)
    assert response.status_code == 200, response.text
    return response.json()


def _difference(expected: dict[str, Any] | list[float], got: dict[str, Any] | list[float]) -> float:
    if isinstance(expected, list):  # classification: one probability per class
        assert isinstance(got, list) and len(got) == len(expected)
        return max(abs(a - b) for a, b in zip(expected, got))
    rows, got_rows = expected["prediction"], got["prediction"]  # type: ignore[index]
    assert rows, "x86 found nothing in the scene: the reference is useless"
    assert [r[0] for r in got_rows] == [r[0] for r in rows], (rows, got_rows)
    # Boxes are fractions of the image here, as the connector reports them.
    return max(abs(a - b) for row, got_row in zip(rows, got_rows)
               for a, b in zip(row[1:], got_row[1:]))


@pytest.mark.parametrize("name", ["shapes-classifier", "shapes-ssd", "shapes-yolo3"])
def test_each_demo_service_answers_over_http_like_x86(name: str, running_lis: RunningLis,
                                                       reference_dir: Path,
                                                       reference: dict[str, Any]) -> None:
    entry = reference[name]
    got = wait_until(lambda: _invoke(entry["service"], (reference_dir / entry["image"]).read_bytes()),
                     timeout_s=READY_TIMEOUT_S, interval_s=2.0,
                     message=f"{entry['service']} to answer", retry_on=(AssertionError,
                                                                        requests.ConnectionError))
    diff = _difference(entry["answer"], got)
    print(f"{entry['service']} ({name}) on {platform.machine()}: {json.dumps(got)[:100]}...; "
          f"vs x86 max abs difference {diff:.3g}")
    assert diff <= TOLERANCE


def _run_seed_example(name: str, image: Path, done: Callable[[str], bool], log: Path,
                      fix: tuple[str, str] | None = None) -> str:
    """Run a seed page's Lambda code (it re-schedules itself forever) until ``done(output)``."""
    source = (SEED_EXAMPLES / name).read_text().replace("/test_img/test.jpg", str(image))
    if fix:
        assert fix[0] in source
        source = source.replace(*fix)
    env = {**os.environ, "LIS_ENDPOINT": ENDPOINT, "LIS_TRANSPORT": "http"}
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-c", LOGGING_ON + source], env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: done(log.read_text(errors="replace")) or process.poll() is not None,
                   timeout_s=READY_TIMEOUT_S, interval_s=0.5, message=f"{name} to answer")
    finally:
        process.kill()
        process.wait()
    return log.read_text(errors="replace")


def test_seed_pages_lambda_code_gets_answers_over_the_sdk(running_lis: RunningLis,
                                                          reference_dir: Path,
                                                          tmp_path: Path) -> None:
    image = reference_dir / SEED_IMAGE
    # Image classification, verbatim: it infers once a second until stopped.
    out = _run_seed_example("image_classification.py", image,
                            lambda text: text.count("predictions: b'[") >= 2, tmp_path / "ic.log")
    assert out.count("predictions: b'[") >= 2 and "exception" not in out, out
    # Object detection, verbatim: the published code reads `predictions_str` before
    # assigning it, so after its first successful call it stops on that NameError ...
    out = _run_seed_example("object_detection.py", image,
                            lambda text: "NameError" in text, tmp_path / "od.log")
    assert "resp: {'Body': <" in out and "NameError: name 'predictions_str'" in out, out
    # ... and with that one name fixed it runs as intended.
    out = _run_seed_example("object_detection.py", image,
                            lambda text: 'predictions: {"prediction": [[' in text,
                            tmp_path / "od-fixed.log",
                            fix=("predictions = resp['Body']", "predictions_str = resp['Body']"))
    assert 'predictions: {"prediction": [[' in out and "Error" not in out, out
    print("seed pages' Lambda code: image classification and object detection answered")
