"""A multi-node Ray cluster on this machine with lis deployed on it, for the scenario scripts.

Each scenario runs in its own process (one Ray cluster per process; the
serve_app end-to-end tests start another): ``python <scenario>.py ARGS_JSON``
prints one JSON line of observations, which ``tests/cluster`` asserts on.

Nodes are ``ray.cluster_utils.Cluster`` nodes: separate raylets on one
machine, each advertising its ``connector-platform:<suffix>`` as ``lis node``
would. The head has no CPUs for work, as on a gateway that only coordinates.
Each worker's Ray Serve proxy gets its own HTTP port
(``RAY_SERVE_WORKER_PROXY_HTTP_PORT``), as each device has its own address.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import random
import socket
import sys
from pathlib import Path
from typing import Any

import requests

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# Ray refuses less than 75 MiB; requests are small.
OBJECT_STORE_BYTES = 100 * 1024**2
HTTP_TIMEOUT_S = 60
# Waiting on the cluster: each ask is an HTTP request or a Ray call, and an ask
# that fails (no replica, route or proxy yet, or one that is moving) means "not yet".
POLL_S = 1.0
NOT_YET = (Exception,)


# Below the kernel's ephemeral range (bind(0) hands those out: Ray's own agents
# take theirs that way) and above Ray's worker ports (10002-19999). A port that
# is free when chosen but bound only later, as a node's Ray Serve proxy binds
# its port once a replica lands there, then cannot be taken in between.
_PORTS = (20000, 32767)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port free now, outside the range the kernel gives to ``bind(0)``."""
    low, high = _PORTS[0], min(_PORTS[1], _ephemeral_low() - 1)
    for _ in range(200):
        port = random.randint(low, high)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{high}")


def _tests_module(name: str) -> Any:
    """A module of ``tests/``, loaded from its file.

    Not by putting ``tests/`` on ``sys.path``: its folders named like lis's
    packages (``deployments``, ``serve_app``, ``cluster``) would shadow them.
    """
    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).resolve().parents[2] / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# The one way to wait, shared with the tests (the scenarios import it from here).
wait_until = _tests_module("waiting").wait_until


def jpeg(seed: int = 0) -> bytes:
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    cv2.circle(image, (80, 60), 30, (0, 0, 255), -1)
    return cv2.imencode(".jpg", image)[1].tobytes()


def lis(*argv: str) -> dict[str, Any]:
    """A lis command run in this process (so it finds this Ray), with its exit code and output."""
    from serve_app.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(argv))
    return {"exit": code, "output": out.getvalue()}


def scenario_args() -> dict[str, Any]:
    return json.loads(sys.argv[1])


def report(observations: dict[str, Any]) -> None:
    print("SCENARIO-RESULT " + json.dumps(observations, default=str), flush=True)


class Site:
    """A head plus named worker nodes, and lis deployed onto them."""

    def __init__(self) -> None:
        import ray
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "object_store_memory": OBJECT_STORE_BYTES,
            "include_dashboard": False})
        ray.init(address=self.cluster.address, namespace="lis", log_to_driver=False)
        self.port = free_port()
        self.nodes: dict[str, Any] = {}
        self.proxy_ports: dict[str, int] = {}

    def node_id(self, name: str) -> str:
        return self.nodes[name].node_id

    def add(self, name: str, platform: str, *, num_cpus: float = 1, num_gpus: int = 0,
            env: dict[str, str] | None = None) -> str:
        """Join a worker that advertises ``connector-platform:<platform>``; its node id."""
        self.proxy_ports[name] = free_port()
        node = self.cluster.add_node(
            num_cpus=num_cpus, num_gpus=num_gpus, object_store_memory=OBJECT_STORE_BYTES,
            resources={f"connector-platform:{platform}": 1},
            env_vars={"RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(self.proxy_ports[name]),
                      **(env or {})})
        self.cluster.wait_for_nodes()
        self.nodes[name] = node
        return node.node_id

    def remove(self, name: str) -> None:
        """The node dies (its raylet and every worker on it are killed)."""
        self.cluster.remove_node(self.nodes.pop(name), allow_graceful=False)

    def deploy(self, config_path: Path, **kwargs: Any) -> dict[str, Any]:
        from serve_app.config import load_config
        from serve_app.deploy import deploy

        return deploy(load_config([config_path]), port=self.port, **kwargs)

    def wait(self, config_path: Path, timeout_s: float) -> dict[str, dict[str, Any]]:
        from serve_app.config import load_config
        from serve_app.deploy import wait_for_services

        return wait_for_services(load_config([config_path]), timeout_s)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def services(self) -> dict[str, dict[str, Any]]:
        answer = requests.get(f"{self.endpoint}/services", timeout=HTTP_TIMEOUT_S)
        answer.raise_for_status()
        return {service["name"]: service for service in answer.json()["services"]}

    def post(self, service: str, body: bytes | None = None, *, port: int | None = None,
             timeout_s: float = HTTP_TIMEOUT_S) -> requests.Response:
        return requests.post(f"http://127.0.0.1:{port or self.port}/inference/{service}",
                             data=jpeg() if body is None else body,
                             headers={"Content-Type": "image/jpeg"}, timeout=timeout_s)

    def describe(self, service: str) -> dict[str, Any]:
        """What one replica of ``service`` says about itself (node, version, device)."""
        from ray import serve

        from vocabulary.names import APP_NAME

        handle = serve.get_deployment_handle(service, APP_NAME)
        return handle.describe.remote().result(timeout_s=HTTP_TIMEOUT_S)

    def replica_nodes(self, service: str, calls: int = 6) -> list[str]:
        """The node ids that ``calls`` describe() calls were answered from (sorted, unique)."""
        return sorted({self.describe(service)["node_id"] for _ in range(calls)})

    def shutdown(self) -> None:
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            self.cluster.shutdown()


def write_config(path: Path, services: list[dict[str, Any]]) -> Path:
    """A lis services file (YAML is a superset of JSON)."""
    path.write_text(json.dumps({"services": services}, indent=2))
    return path


def classifier_service(name: str, platform: str, model: str, **keys: Any) -> dict[str, Any]:
    arn = f"arn:aws:greengrass:us-west-2::/connectors/ImageClassification{platform}/versions/2"
    return {"LocalInferenceServiceName": name, "ConnectorArn": arn, "model": model,
            "LocalInferenceServiceTimeoutSeconds": "30", "num_cpus": 0.25, **keys}
