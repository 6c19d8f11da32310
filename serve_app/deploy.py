"""Starting Ray, deploying the lis application, waiting for it: what ``lis up`` does.

Kept apart from the CLI so tests and embedding programs deploy the same way.
"""

from __future__ import annotations

import ipaddress
import os
import platform as host_platform
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serve_app.config import LisConfig
from serve_app.errors import LisError

__all__ = [
    "ALL_PLATFORMS",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "connect_ray",
    "deploy",
    "http_token",
    "is_loopback",
    "local_platform",
    "wait_for_services",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
ALL_PLATFORMS = ("x86-64", "ARMv7", "Aarch64JTX2")
TOKEN_FILE = Path.home() / ".config" / "lis" / "http-token"
# A local node advertises one unit of its platform; replicas ask for 0.001.
PLATFORM_UNITS = 1.0


def local_platform() -> str:
    """The connector platform suffix of this machine."""
    try:
        from cluster.platform import detect_platform
    except ImportError:  # the cluster package is optional on a plain serving box
        machine = host_platform.machine()
        return "x86-64" if machine in ("x86_64", "AMD64") else "Aarch64JTX2"
    return detect_platform().connector_suffix


def connect_ray(address: str | None, *, any_platform: bool = False,
                num_cpus: int | None = None) -> None:
    """Join ``address`` (``auto``, ``ray://...``) or start a local Ray for this box."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return
    if address:
        # A lis cluster runs with Ray's token authentication (`lis node`).
        from cluster import cluster_auth_environment

        os.environ.update(cluster_auth_environment())
        ray.init(address=address, namespace="lis", log_to_driver=True)
        return
    platforms = ALL_PLATFORMS if any_platform else (local_platform(),)
    ray.init(namespace="lis", include_dashboard=False, num_cpus=num_cpus,
             resources={f"connector-platform:{p}": PLATFORM_UNITS for p in platforms})


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def http_token(host: str, token_env: str | None = None) -> str | None:
    """The ingress's bearer token: required whenever it listens beyond loopback.

    Taken from the variable the config's ``http.token_env`` names, else
    ``LIS_TOKEN``; otherwise generated once into ``~/.config/lis/http-token``
    (mode 0600) for clients to read.
    """
    token = os.environ.get(token_env or "LIS_TOKEN")
    if token or is_loopback(host):
        return token or None
    if TOKEN_FILE.is_file():
        return TOKEN_FILE.read_text().strip()
    TOKEN_FILE.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    TOKEN_FILE.touch(mode=0o600)
    TOKEN_FILE.write_text(token + "\n")
    return token


def deploy(config: LisConfig, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
           token: str | None = None) -> None:
    """Deploy (or update in place) the lis application; returns without waiting."""
    from ray import serve
    from ray.serve.config import HTTPOptions, ProxyLocation

    from serve_app.app import APP_NAME, build_app

    serve.start(http_options=HTTPOptions(host=host, port=port),
                proxy_location=ProxyLocation.EveryNode)
    serve.run_many([serve.RunTarget(build_app(config, token=token), name=APP_NAME,
                                    route_prefix="/")],
                   wait_for_applications_running=False)


def wait_for_services(config: LisConfig, timeout_s: float,
                      on_change: Callable[[str, dict[str, Any]], None] | None = None
                      ) -> dict[str, dict[str, Any]]:
    """Poll until every service runs, one fails, or ``timeout_s`` passes; return the states."""
    from serve_app.app import service_states

    deadline = time.monotonic() + timeout_s
    seen: dict[str, str] = {}
    while True:
        states = service_states()
        for spec in config.services:
            state = states.get(spec.name, {"state": "DEPLOYING", "message": ""})
            if on_change and seen.get(spec.name) != state["state"]:
                on_change(spec.name, state)
            seen[spec.name] = state["state"]
        if all(seen.get(s.name) == "RUNNING" for s in config.services):
            return states
        failed = {n: states[n]["message"] for n, s in seen.items() if s == "FAILED"}
        if failed:
            raise LisError("services failed to start: " +
                           "; ".join(f"{n}: {m}" for n, m in failed.items()))
        if time.monotonic() > deadline:
            return states
        time.sleep(0.5)
