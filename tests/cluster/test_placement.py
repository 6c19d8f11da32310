"""Placement on a multi-node cluster: each service on the nodes of its platform.

One scenario (``_scenarios/placement.py``) on a ``ray.cluster_utils.Cluster``:
a head with no CPUs for work, an x86-64 node and an ARMv7 node; ``lis up`` with
one service per platform, two for Aarch64JTX2 (one with GPUAcceleration=GPU);
then a Jetson without a GPU joins, then one with a GPU. This machine has no
GPU: only the GPU Jetson's node runs with ``LIS_FAKE_GPU_SUPPORT=1``, which
fakes the runtime's GPU support at the device-selection point and nowhere else
(Ray's GPU accounting and placement are real).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.runtime import select_device
from vocabulary.errors import LisError

JETSON_MISSING = "pending: no node offers connector-platform:Aarch64JTX2"
GPU_MISSING = "pending: no node offering connector-platform:Aarch64JTX2 has 1 GPU"
# The node each service's replicas must run on.
HOMES = {"x86Classifier": "x86", "piClassifier": "pi", "jetsonClassifier": "jetson",
         "jetsonGpuClassifier": "gpu_jetson"}


@pytest.fixture(scope="module")
def seen(run_scenario, tiny_classifier_artifact: Path) -> dict:
    run = run_scenario("placement", model=str(tiny_classifier_artifact))
    assert run.exit_code == 0, run.log_tail
    return run.seen


@pytest.mark.slow
def test_lis_up_returns_and_names_the_services_no_node_can_host(seen: dict) -> None:
    up = seen["up"]
    assert up["exit"] == 0
    assert "2 service(s) still pending: jetsonClassifier, jetsonGpuClassifier" in up["output"]
    assert f"jetsonGpuClassifier: PENDING - {JETSON_MISSING}" in up["output"]


@pytest.mark.slow
def test_services_and_status_say_why_a_service_is_pending(seen: dict) -> None:
    services = seen["no_jetson"]
    for name in ("jetsonClassifier", "jetsonGpuClassifier"):
        assert (services[name]["state"], services[name]["message"]) == ("PENDING", JETSON_MISSING)
    assert {services[n]["state"] for n in ("x86Classifier", "piClassifier")} == {"RUNNING"}
    status = seen["no_jetson_status"]
    assert status["exit"] == 0
    assert f"why: {JETSON_MISSING}" in status["output"]


@pytest.mark.slow
def test_a_jetson_joining_starts_its_services_but_a_gpu_service_needs_a_gpu(seen: dict) -> None:
    services = seen["cpu_jetson"]
    assert services["jetsonClassifier"]["state"] == "RUNNING"
    assert (services["jetsonGpuClassifier"]["state"],
            services["jetsonGpuClassifier"]["message"]) == ("PENDING", GPU_MISSING)


@pytest.mark.slow
def test_every_replica_runs_on_a_node_of_its_platform(seen: dict) -> None:
    assert {name: s["state"] for name, s in seen["all"].items()} == \
        dict.fromkeys(HOMES, "RUNNING")
    nodes = seen["nodes"]
    assert seen["replica_nodes"] == {name: [nodes[home]] for name, home in HOMES.items()}
    assert seen["answers"] == dict.fromkeys(HOMES, 200)


@pytest.mark.slow
def test_the_gpu_service_gets_the_gpu_node_and_its_gpu(seen: dict) -> None:
    gpu = seen["gpu_replica"]
    assert gpu["node_id"] == seen["nodes"]["gpu_jetson"]
    assert gpu["gpu_ids"] == ["0"]  # Ray gave the replica the node's GPU
    assert gpu["device"] == "cpu"  # the faked runtime runs it on the CPU


@pytest.mark.slow
def test_a_camera_talks_to_the_proxy_on_its_own_node(seen: dict) -> None:
    assert seen["local_proxy_answer"] == 200


# --- the device-selection point the GPU test fakes -----------------------------------------


def test_a_gpu_request_without_gpu_support_fails_with_the_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIS_FAKE_GPU_SUPPORT", raising=False)
    with pytest.raises(LisError, match="this build has no CUDA"):
        select_device("gpu", False, allow_cpu_fallback=False, unsupported="this build has no CUDA")


@pytest.mark.parametrize("requested,supported,fallback,fake,device", [
    ("cpu", False, False, None, "cpu"),
    ("gpu", True, False, None, "gpu"),
    ("gpu", False, True, None, "cpu"),  # allow_cpu_fallback
    ("gpu", False, False, "1", "cpu"),  # LIS_FAKE_GPU_SUPPORT=1 (tests only)
    ("gpu", True, False, "1", "gpu"),  # a real GPU is used even then
])
def test_select_device(monkeypatch: pytest.MonkeyPatch, requested: str, supported: bool,
                       fallback: bool, fake: str | None, device: str) -> None:
    monkeypatch.delenv("LIS_FAKE_GPU_SUPPORT", raising=False)
    if fake:
        monkeypatch.setenv("LIS_FAKE_GPU_SUPPORT", fake)
    assert select_device(requested, supported, allow_cpu_fallback=fallback) == device


def test_an_unknown_device_is_refused() -> None:
    with pytest.raises(LisError, match="unknown device 'tpu'"):
        select_device("tpu", False, allow_cpu_fallback=True)
