"""Placement across platforms, GPU nodes, and a platform whose node joins late.

Args (JSON): ``model`` (a classifier artifact folder), ``workdir``.

1. Head (0 CPUs), an x86-64 node and an ARMv7 node; ``lis up --detach`` with one
   service per platform, two of them on Aarch64JTX2 (one with GPUAcceleration=GPU):
   the Jetson services are pending, and ``lis up`` returns saying so.
2. A Jetson joins without a GPU: the CPU Jetson service starts on it; the GPU one
   stays pending, now for want of a GPU.
3. A Jetson with a GPU joins (``LIS_FAKE_GPU_SUPPORT=1`` on that node only: this
   machine has no GPU): the GPU service starts there.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from _site import (
    NOT_YET,
    POLL_S,
    Site,
    classifier_service,
    lis,
    report,
    scenario_args,
    wait_until,
    write_config,
)

SERVICES = {"x86Classifier": "x86-64", "piClassifier": "ARMv7",
            "jetsonClassifier": "Aarch64JTX2", "jetsonGpuClassifier": "Aarch64JTX2"}
START_TIMEOUT_S = 120


def lis_status(endpoint: str) -> dict[str, Any]:
    done = subprocess.run([str(Path(sys.executable).with_name("lis")), "status",
                           "--endpoint", endpoint], capture_output=True, text=True, timeout=60)
    return {"exit": done.returncode, "output": done.stdout + done.stderr}


def brief(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: {key: service.get(key) for key in ("state", "message", "replicas", "version")}
            for name, service in services.items()}


def running(site: Site, name: str) -> bool:
    return site.services()[name]["state"] == "RUNNING"


def main() -> None:
    args = scenario_args()
    model = args["model"]
    config = write_config(Path(args["workdir"]) / "services.json", [
        classifier_service("x86Classifier", "x86-64", model),
        classifier_service("piClassifier", "ARMv7", model),
        classifier_service("jetsonClassifier", "Aarch64JTX2", model, GPUAcceleration="CPU"),
        classifier_service("jetsonGpuClassifier", "Aarch64JTX2", model, GPUAcceleration="GPU"),
    ])
    site = Site()
    seen: dict[str, Any] = {"nodes": {"head": site.cluster.head_node.node_id}}
    try:
        seen["nodes"]["x86"] = site.add("x86", "x86-64")
        seen["nodes"]["pi"] = site.add("pi", "ARMv7")
        seen["up"] = lis("up", str(config), "--port", str(site.port), "--detach")
        if seen["up"]["exit"]:
            raise RuntimeError("lis up failed")
        seen["no_jetson"] = brief(site.services())
        seen["no_jetson_status"] = lis_status(site.endpoint)

        seen["nodes"]["jetson"] = site.add("jetson", "Aarch64JTX2")
        wait_until(lambda: running(site, "jetsonClassifier"), timeout_s=START_TIMEOUT_S,
                   interval_s=POLL_S, retry_on=NOT_YET, message="jetsonClassifier running")
        seen["cpu_jetson"] = brief(site.services())

        seen["nodes"]["gpu_jetson"] = site.add("gpu_jetson", "Aarch64JTX2", num_gpus=1,
                                               env={"LIS_FAKE_GPU_SUPPORT": "1"})
        wait_until(lambda: running(site, "jetsonGpuClassifier"), timeout_s=START_TIMEOUT_S,
                   interval_s=POLL_S, retry_on=NOT_YET, message="jetsonGpuClassifier running")
        seen["all"] = brief(site.services())
        seen["replica_nodes"] = {name: site.replica_nodes(name) for name in SERVICES}
        gpu = site.describe("jetsonGpuClassifier")
        seen["gpu_replica"] = {key: gpu[key] for key in ("device", "gpu_ids", "node_id")}
        seen["answers"] = {name: site.post(name).status_code for name in SERVICES}
        # A camera next to the GPU Jetson talks to that node's own proxy. Ray Serve starts
        # a node's proxy once a replica is placed there, in parallel with the replica, so
        # it may still be starting (connection refused) when the service reads RUNNING.
        answer = wait_until(lambda: site.post(
            "jetsonGpuClassifier", port=site.proxy_ports["gpu_jetson"]), timeout_s=START_TIMEOUT_S,
            interval_s=POLL_S, retry_on=NOT_YET, message="an answer from the GPU Jetson's proxy")
        seen["local_proxy_answer"] = answer.status_code
    finally:
        site.shutdown()
        report(seen)


if __name__ == "__main__":
    main()
