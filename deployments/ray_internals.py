"""Every use lis makes of Ray's private API, in one place.

Ray may change any of these in a minor release; after a Ray upgrade, this is
the one file to check (each function says why no public call does the job).
Imports are inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import atexit
import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["kv_get", "kv_put", "log_rotation", "ray_connection", "reread_ray_environment",
           "serve_details", "serve_logs_dir", "start_lean_head", "versioned"]


def versioned(deployment: Any, version: str, **options: Any) -> Any:
    """``deployment.options(**options)`` with a version of lis's own.

    Ray's imperative API gives every deploy a random version, so every replica
    restarts; a version computed from what the replicas run restarts only what
    changed. Ray accepts ``version`` there only as an internal option.
    """
    return deployment.options(version=version, _internal=True, **options)


def kv_get(key: bytes) -> bytes | None:
    """A value from the cluster's key-value store (GCS); None if absent.

    Ray has no public key-value store; lis keeps one setting there that every
    later driver of the same cluster must read (the direct-ingress port).
    """
    from ray.experimental import internal_kv

    return internal_kv._internal_kv_get(key)


def kv_put(key: bytes, value: bytes) -> None:
    """Store ``value`` under ``key`` in the cluster's key-value store (see ``kv_get``)."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(key, value)


def ray_connection() -> object | None:
    """This process's connection to Ray (its core worker); None when it has none.

    A new ``ray.init`` makes a new one, so a value kept for one connection is
    known stale by identity, without asking Ray: ``ray.get_runtime_context()``
    costs the client's every call tens of microseconds right after a wait on a
    socket, when Ray's layers of Python are cold.
    """
    from ray._private import worker

    return getattr(worker.global_worker, "core_worker", None)


def reread_ray_environment() -> None:
    """Make this process's Ray read its ``RAY_*`` environment variables again.

    Ray reads them once, when its configuration is first used (the C++
    settings) or when ``ray`` is imported (``ray_constants``); lis sets the
    token-authentication and loopback ones later, just before starting or
    joining a Ray. Ray's own ``_enable_token_auth`` refreshes the same way.
    """
    from ray._private import ray_constants
    from ray._raylet import Config

    Config.initialize("")
    ray_constants.ENABLE_RAY_CLUSTER = ray_constants.env_bool(
        ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, not ray_constants.IS_WINDOWS_OR_OSX)


def serve_details() -> dict[str, Any] | None:
    """Ray Serve's controller's details as plain data; None when no controller runs.

    ``serve.status()`` reads the same details and then builds Ray's pydantic
    models from them, whose request-router config cloudpickles its router
    class once per deployment: 37 ms of CPU per call on the 2-core reference
    box, against 1.2 ms for the details alone.
    """
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    return None if client is None else client.get_serve_details()


def log_rotation() -> tuple[int, int]:
    """This Ray node's log rotation: bytes per file and old files kept.

    Ray reads them from ``RAY_ROTATION_MAX_BYTES``/``RAY_ROTATION_BACKUP_COUNT``
    when the process starts, and rotates Ray Serve's replica logs by them.
    """
    import ray

    node = ray._private.worker._global_node
    return int(node.max_bytes), int(node.backup_count)


def serve_logs_dir() -> str:
    """The folder where Ray Serve writes this node's replica logs.

    lis writes each replica's access lines beside Ray's own replica log; Ray
    exposes the folder only through its logging utilities.
    """
    from ray.serve._private.logging_utils import get_serve_logs_dir

    return get_serve_logs_dir()


def start_lean_head(*, num_cpus: int | None, resources: dict[str, float],
                    log_monitor: bool, outlive_caller: bool) -> str:
    """Start a one-box Ray head without the processes lis has no use for; its GCS address.

    ``ray.init()`` always starts three processes a lis box never uses: the
    autoscaler's monitor (no node provider to ask), the dashboard head (with
    ``include_dashboard=False`` it only hosts the usage-stats module, and
    usage statistics are off) and, unless asked, the log monitor (lis keeps
    replica logs in their files). Together about 170 MB PSS and two seconds
    of start-up CPU on the 2-core reference box. ``ray start`` can leave out
    the monitors (``--no-monitor``, ``--include-log-monitor``) but not the
    dashboard head, and ``ray.init`` none of them, so lis builds the node
    itself, as ``ray.init`` does.

    With ``outlive_caller`` the head keeps running after this process exits
    or execs (``lis up`` does, to wait for Ctrl-C without Ray loaded) and
    whoever remains stops it; otherwise it stops when this process exits
    (``_stop_at_exit``).

    The raylet's dashboard agent runs in Ray's minimal mode, as with a plain
    ``pip install ray``: without its gRPC and HTTP servers, which serve Ray's
    metrics pipeline, the dashboard and job submission, none of which a lis box
    runs or reads (lis's own metrics are the ingress's ``/metrics``). Ray
    chooses that mode when the dashboard's dependencies are missing, which it
    finds out by importing them (aiohttp and more) into the process starting
    the node; lis answers for it. On the 2-core reference box that took the
    stack from 851 to 842 MB PSS idle, and two fewer ports listen.

    Ray's ``Node`` waits for its raylet to register by asking the GCS once a
    second (``GlobalStateAccessor::GetNode``), so a raylet registered 0.1 s
    after the first question is seen 0.9 s later; lis asks every 20 ms first,
    and Ray's own question then finds the node at once.
    """
    from ray._private.node import Node
    from ray._private.parameter import RayParams

    class _HeadWithoutApiServer(Node):
        def start_api_server(self, *, include_dashboard: bool | None,
                             raise_on_failure: bool) -> None:
            return None  # the usage-stats host: nothing to host with usage statistics off

        def start_ray_processes(self) -> None:
            with _dashboard_agent_minimal():
                super().start_ray_processes()
            _wait_until_registered(self.get_gcs_client(), self._node_id)

    params = RayParams(num_cpus=num_cpus, resources=resources, include_dashboard=False,
                       include_log_monitor=log_monitor, no_monitor=True)
    node = _HeadWithoutApiServer(params, head=True, shutdown_at_exit=False,
                                 spawn_reaper=not outlive_caller)
    if not outlive_caller:
        atexit.register(_stop_at_exit, node)
    return str(node.address)


def _stop_at_exit(node: Any) -> None:
    """Disconnect from the head, then stop its raylet with SIGTERM before its GCS.

    Left to Ray, the head dies with this process by the kernel's SIGKILL (Ray's fate
    sharing), and the raylet's two agents, which are not the kernel's to kill, take
    the unannounced death for a crash: each tries to report it to the GCS, dead too,
    and waits for it for ever, 230 MB between them on the 2-core box. A raylet
    stopped with SIGTERM says so in its log, and its agents exit quietly.
    """
    import ray

    ray.shutdown()
    node.kill_all_processes(check_alive=False, allow_graceful=True)


@contextlib.contextmanager
def _dashboard_agent_minimal() -> Iterator[None]:
    """Nodes started meanwhile run their dashboard agent with ``--minimal`` (see
    ``start_lean_head``): Ray passes it when its check for the dashboard's
    dependencies reports them missing."""
    import ray._private.utils as ray_utils

    check = ray_utils.get_dashboard_dependency_error
    ray_utils.get_dashboard_dependency_error = lambda: ImportError(
        "lis runs the dashboard agent minimal on a box")
    try:
        yield
    finally:
        ray_utils.get_dashboard_dependency_error = check


_REGISTRATION_POLL_S = 0.02
_REGISTRATION_WAIT_S = 30.0  # Ray's own raylet_start_wait_time_s


def _wait_until_registered(gcs_client: Any, node_id_hex: str,
                           wait_s: float = _REGISTRATION_WAIT_S) -> bool:
    """Whether the GCS listed the raylet ``node_id_hex`` as alive within ``wait_s``
    (when not, Ray's own wait that follows reports the failure)."""
    import time

    from ray._raylet import NodeID
    from ray.core.generated.gcs_pb2 import GcsNodeInfo
    from ray.core.generated.gcs_service_pb2 import GetAllNodeInfoRequest
    from ray.exceptions import GetTimeoutError, RpcError

    selector = GetAllNodeInfoRequest.NodeSelector(node_id=NodeID.from_hex(node_id_hex).binary())
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if gcs_client.get_all_node_info(timeout=1, node_selectors=[selector],
                                            state_filter=GcsNodeInfo.GcsNodeState.ALIVE):
                return True
        except (RpcError, GetTimeoutError, TimeoutError):
            pass  # a GCS busy with the raylet's start may answer late; ask again
        if time.monotonic() >= deadline:
            return False
        time.sleep(_REGISTRATION_POLL_S)
