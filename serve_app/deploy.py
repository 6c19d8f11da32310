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
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from serve_app.config import LisConfig
from serve_app.errors import LisError

__all__ = [
    "ALL_PLATFORMS",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "SERVE_THROUGHPUT_ENVIRONMENT",
    "connect_ray",
    "deploy",
    "direct_ingress_port",
    "wait_until_free",
    "http_token",
    "is_loopback",
    "local_platform",
    "model_versions",
    "wait_for_services",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
ALL_PLATFORMS = ("x86-64", "ARMv7", "Aarch64JTX2")
TOKEN_FILE = Path.home() / ".config" / "lis" / "http-token"
# A local node advertises one unit of its platform; replicas ask for 0.001.
PLATFORM_UNITS = 1.0

# Ray Serve's own high-throughput settings (its "Enable High Throughput" guide,
# Ray >= 2.56), one by one: handle calls between deployments over gRPC, user
# code on the replica's event loop instead of a second thread, the garbage
# collector frozen after start-up, replica logs to their files only (not also
# to stderr, which nothing reads: lis starts Ray without log_to_driver).
# RAY_SERVE_THROUGHPUT_OPTIMIZED would also run every handle's router on its
# caller's event loop, which breaks the SDK's synchronous handle calls, so it
# is not used (for the ingress's own handles it measured within the drift).
# Two settings make an idle lis cheaper on a small box: the controller's loop
# runs 2 times a second instead of 10, and each process exports its cached
# metrics once a second instead of 10 times. Together they took an idle lis
# with the bench's four services from 11 % to 8 % of the 2-core reference box.
# Each Ray process reads these when it starts: they belong in the environment
# Ray is started with.
SERVE_THROUGHPUT_ENVIRONMENT = {
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_FREEZE_GC_ON_STARTUP": "1",
    "RAY_SERVE_LOG_TO_STDERR": "0",
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
}
_DIRECT_INGRESS_KEY = b"lis:direct-ingress-port"


def direct_ingress_port() -> int | None:
    """The port on which the connected Ray's ingress replica serves HTTP itself, if any.

    ``lis up`` on one box starts Ray this way (``connect_ray`` with
    ``http_port``): no Ray Serve proxy, the ingress replica runs the HTTP
    server (``serve_app._http_server``), a request makes one hop to its service.

    Kept in the cluster's key-value store, not this process's environment, so a
    later driver (``lis reload``) deploys the way the cluster was started.
    """
    from ray.experimental import internal_kv

    value = internal_kv._internal_kv_get(_DIRECT_INGRESS_KEY)
    return int(value) if value else None


def local_platform() -> str:
    """The connector platform suffix of this machine."""
    try:
        from cluster.platform import detect_platform
    except ImportError:  # the cluster package is optional on a plain serving box
        machine = host_platform.machine()
        return "x86-64" if machine in ("x86_64", "AMD64") else "Aarch64JTX2"
    return detect_platform().connector_suffix


def connect_ray(address: str | None, *, any_platform: bool = False,
                num_cpus: int | None = None, log_to_driver: bool = False,
                http_port: int | None = None) -> None:
    """Join ``address`` (``auto``, ``ray://...``) or start a local Ray for this box.

    A local Ray given ``http_port`` serves HTTP from the ingress replica on that
    port (see ``direct_ingress_port``); a joined cluster keeps Ray Serve's
    proxy on every node, so a device reaches the ingress through its own node.
    Replica logs stay in Ray's log files (``<ray session>/logs/serve/``) unless
    ``log_to_driver``: streaming every line to the driver costs CPU per request
    that a 2-core box cannot spare.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return
    if address:
        # A lis cluster runs with Ray's token authentication (`lis node`).
        from cluster import cluster_auth_environment

        os.environ.update(cluster_auth_environment())
        ray.init(address=address, namespace="lis", log_to_driver=log_to_driver)
        return
    os.environ.update(SERVE_THROUGHPUT_ENVIRONMENT)
    if log_to_driver:  # replicas write their lines to stderr too, which Ray streams here
        os.environ["RAY_SERVE_LOG_TO_STDERR"] = "1"
    platforms = ALL_PLATFORMS if any_platform else (local_platform(),)
    ray.init(namespace="lis", include_dashboard=False, num_cpus=num_cpus,
             log_to_driver=log_to_driver,
             resources={f"connector-platform:{p}": PLATFORM_UNITS for p in platforms})
    if http_port is not None:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_put(_DIRECT_INGRESS_KEY, str(http_port).encode())


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


def model_versions(config: LisConfig) -> dict[str, str | None]:
    """Each service's model content hash, for models this machine can read (else None).

    On a cluster a local model path is read on every node; the deployer's copy
    decides the version, so a new model there rolls the service's replicas.
    """
    from deployments.model_source import fetch_model
    from deployments.service import artifact_version

    versions: dict[str, str | None] = {}
    for spec in config.services:
        versions[spec.name] = None
        if spec.model_source.startswith("s3://"):
            continue  # only the replica's fetch knows the object (ETag)
        try:  # a local source is returned where it is: no cache is used
            local = fetch_model(spec.model_source, destination=None, store=None,
                                cache_dir=Path(os.devnull))
        except LisError:
            continue  # the replica reports it, where the path matters
        versions[spec.name] = artifact_version(local)
    return versions


def deploy(config: LisConfig, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
           token: str | None = None, restart: Collection[str] = ()) -> dict[str, str | None]:
    """Deploy (or update in place) the lis application; returns without waiting.

    Only services whose spec, model content or code changed get new replicas,
    one at a time (see ``serve_app.app``); ``restart`` names services replaced
    regardless (``lis reload``). Returns the model versions deployed.
    """
    from ray import serve
    from ray.serve.config import HTTPOptions, ProxyLocation
    from ray.serve.schema import LoggingConfig

    from serve_app.app import APP_NAME, build_app

    versions = model_versions(config)
    nonce = secrets.token_hex(8)
    # Each replica writes lis's own access line; Ray's per-request lines (proxy,
    # ingress, replica) would triple the logging work of every request.
    quiet = LoggingConfig(enable_access_log=False)
    direct_port = direct_ingress_port()
    if direct_port is not None and direct_port != port:
        raise LisError(f"this Ray serves HTTP from its ingress on port {direct_port}, "
                       f"not {port}: restart lis to change the port")
    # One box: the ingress replica serves HTTP itself, so no proxy runs.
    serve.start(http_options=HTTPOptions(host=host, port=port),
                proxy_location=ProxyLocation.Disabled if direct_port else ProxyLocation.EveryNode,
                logging_config=quiet)
    if direct_port is not None and APP_NAME not in serve.status().applications:
        wait_until_free(host, port)
    app = build_app(config, token=token, model_versions=versions,
                    restart={name: nonce for name in restart},
                    http=(host, port) if direct_port is not None else None)
    serve.run_many([serve.RunTarget(app, name=APP_NAME, route_prefix="/", logging_config=quiet)],
                   wait_for_applications_running=False)
    return versions


# A lis stopped a moment ago may still hold its port while Ray winds down.
_PORT_WAIT_S = 60.0


def wait_until_free(host: str, port: int, timeout_s: float = _PORT_WAIT_S) -> None:
    """Wait for ``port`` to be bindable: Ray gives up on a port that failed to bind once."""
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
                return
            except OSError as error:
                if time.monotonic() > deadline:
                    raise LisError(f"cannot serve HTTP on {host}:{port}: {error.strerror}") \
                        from None
        time.sleep(_POLL_S)


# A deployment's status lags the deploy call by a control-loop tick: a state
# counts as settled only when two polls this far apart agree.
_POLL_S = 0.5


def _settled(state: dict[str, Any]) -> bool:
    return (state["state"] == "RUNNING" and not state.get("updating")) \
        or state["state"] == "PENDING"


def wait_for_services(config: LisConfig, timeout_s: float,
                      on_change: Callable[[str, dict[str, Any]], None] | None = None
                      ) -> dict[str, dict[str, Any]]:
    """Poll until every service runs with all its replicas up to date or is pending
    (no node can host it), one fails, or ``timeout_s`` passes; return the states."""
    from serve_app.app import INGRESS_DEPLOYMENT, replica_demand, service_states

    demands = {spec.name: replica_demand(spec) for spec in config.services}
    deadline = time.monotonic() + timeout_s
    seen: dict[str, str] = {}
    settled_before = False
    while True:
        time.sleep(_POLL_S)
        states = service_states(demands=demands)
        for spec in config.services:
            state = states.setdefault(spec.name, {"state": "DEPLOYING", "message": ""})
            if on_change and seen.get(spec.name) != state["state"]:
                on_change(spec.name, state)
            seen[spec.name] = state["state"]
        failed = {n: states[n]["message"] for n, s in seen.items() if s == "FAILED"}
        if states.get(INGRESS_DEPLOYMENT, {}).get("state") == "FAILED":
            failed[INGRESS_DEPLOYMENT] = states[INGRESS_DEPLOYMENT]["message"]
        if failed:
            raise LisError("services failed to start: " +
                           "; ".join(f"{n}: {m}" for n, m in failed.items()))
        # The ingress too: with direct ingress its port opens only when it runs.
        ingress = states.get(INGRESS_DEPLOYMENT, {"state": "DEPLOYING"})
        settled = _settled(ingress) and all(_settled(states[s.name]) for s in config.services)
        if (settled and settled_before) or time.monotonic() > deadline:
            return states
        settled_before = settled
