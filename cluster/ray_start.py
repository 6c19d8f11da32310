"""Starting Ray on this box, or joining a lis cluster: the environment Ray runs in.

``lis up`` and ``lis reload`` call ``connect_ray``; ``lis node`` (``cluster.node``)
starts Ray's own processes with the same ``SERVE_THROUGHPUT_ENVIRONMENT``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

from cluster._token import LOCAL_TOKEN_FILE, cluster_auth_environment, local_ray_token
from cluster.platform import detect_platform
from deployments.ray_internals import (
    kv_get,
    kv_put,
    reread_ray_environment,
    start_lean_head,
)
from deployments.runtime import DEFAULT_THREADS, thread_environment
from vocabulary.connectors import PLATFORMS
from vocabulary.names import RAY_NAMESPACE, platform_resource

__all__ = [
    "FAST_CONNECT_ENVIRONMENT",
    "LOG_ROTATION_ENVIRONMENT",
    "LOOPBACK_ONLY_ENVIRONMENT",
    "PLATFORM_UNITS",
    "SERVE_THROUGHPUT_ENVIRONMENT",
    "WARM_WORKER_ENVIRONMENT",
    "connect_ray",
    "direct_ingress_port",
    "local_platform",
    "log_rotation_environment",
    "worker_threads",
]

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
# runs 5 times a second instead of 10, and each process exports its cached
# metrics once a second instead of 10 times. The loop's pace is a trade: a
# replica becomes ready a step or two after it is asked for, and with 2 steps
# a second the demo stack was ready about 0.7 s later (median of 5 alternating
# starts on the 2-core reference box) for 0.8 % of a core less when idle; 10
# steps a second bought no more than 5 and cost 1.2 % of a core more.
# Each Ray process reads these when it starts: they belong in the environment
# Ray is started with.
SERVE_THROUGHPUT_ENVIRONMENT = {
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_FREEZE_GC_ON_STARTUP": "1",
    "RAY_SERVE_LOG_TO_STDERR": "0",
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.2",
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
}
# Ray's switch for a one-machine Ray (its default on macOS and Windows): every
# process binds and advertises 127.0.0.1, so nothing of a box's Ray listens
# on the LAN. A driver needs it too, to reach that Ray by "auto".
LOOPBACK_ONLY_ENVIRONMENT = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
_DIRECT_INGRESS_KEY = b"lis:direct-ingress-port"
# The workers of a box's own Ray (``connect_ray`` starting it) are ready to be
# replicas before any replica is asked for. Ray starts one worker per CPU when
# the first driver connects; each imports Ray Serve as it starts (Ray's
# ``preload_python_modules``), and has the thread environment of a replica
# with DEFAULT_THREADS runtime threads (``worker_threads``), so a replica that
# asks for that needs no runtime environment of its own, and Ray gives it one
# of those warm workers instead of starting a new one. Measured with the demo
# services on the 2-core reference box: the replicas ran 3.3-3.9 s after
# Ray Serve was asked for them instead of 4.4-4.7 s; each half alone did not
# help (docs/performance.md).
_WORKER_THREADS = DEFAULT_THREADS
WARM_WORKER_ENVIRONMENT = {**thread_environment(_WORKER_THREADS),
                           "RAY_preload_python_modules": "ray.serve"}
_WORKER_THREADS_KEY = b"lis:worker-threads"
# A raylet connects to its own object store, which it starts on another thread
# a moment before; when the store is not listening yet, Ray waits its retry
# interval, one second, before trying again. That happened in 2 of 4 starts of
# the demo stack on the 2-core reference box. Retrying every 0.1 s, 100 times,
# keeps Ray's 10 s budget for the connections of the raylet and its workers.
FAST_CONNECT_ENVIRONMENT = {"RAY_raylet_client_connect_timeout_milliseconds": "100",
                            "RAY_raylet_client_num_connect_attempts": "100"}
# Ray keeps each process's log up to 512 MB with five old ones: 3 GB a file, on
# a board whose /tmp may be RAM (Debian 13 mounts it as tmpfs). A lis box
# writes some logs without end: each replica's access lines, and, with no
# dashboard (lis's lean head, or `lis node --dashboard off`), Ray's dashboard
# agent logs a traceback every second while it waits for a dashboard that
# never comes (its event module: 37 MB a day). Each file is kept to 16 MiB and
# two old ones (48 MiB); the replicas' access logs follow the same figures.
# Ray's processes read these when they start, the C++ ones too; a value the
# user set wins.
LOG_ROTATION_ENVIRONMENT = {"RAY_ROTATION_MAX_BYTES": str(16 * 1024 * 1024),
                            "RAY_ROTATION_BACKUP_COUNT": "2"}


def log_rotation_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``LOG_ROTATION_ENVIRONMENT`` less what ``environ`` (default: this process's) sets."""
    environ = os.environ if environ is None else environ
    return {name: value for name, value in LOG_ROTATION_ENVIRONMENT.items()
            if name not in environ}


def direct_ingress_port() -> int | None:
    """The port on which the connected Ray's ingress replica serves HTTP itself, if any.

    ``lis up`` on one box starts Ray this way (``connect_ray`` with
    ``http_port``): no Ray Serve proxy, the ingress replica runs the HTTP
    server (``serve_app._http_server``), a request makes one hop to its service.

    Kept in the cluster's key-value store, not this process's environment, so a
    later driver (``lis reload``) deploys the way the cluster was started.
    """
    value = kv_get(_DIRECT_INGRESS_KEY)
    return int(value) if value else None


def worker_threads() -> int | None:
    """The runtime threads every worker of the connected Ray is set up for, if it is a
    box's own Ray (``WARM_WORKER_ENVIRONMENT``); None on a cluster, whose nodes lis did
    not start, or with no Ray connected."""
    import ray

    if not ray.is_initialized():
        return None
    value = kv_get(_WORKER_THREADS_KEY)
    return int(value) if value else None


def local_platform() -> str:
    """The connector platform suffix of this machine."""
    return detect_platform().connector_suffix


def connect_ray(address: str | None, *, any_platform: bool = False,
                num_cpus: int | None = None, log_to_driver: bool = False,
                http_port: int | None = None, outlive_caller: bool = False,
                joined: bool = True) -> str:
    """Join ``address`` (``auto``, ``ray://...``, ``HOST:PORT``) or start a Ray for this box.

    Returns the address of the Ray connected to. A local Ray given
    ``http_port`` serves HTTP from the ingress replica on that port (see
    ``direct_ingress_port``); a joined cluster keeps Ray Serve's proxy on the
    nodes that run replicas, so a device reaches the ingress through its own
    node. Replica logs stay in Ray's log files (``<ray session>/logs/serve/``)
    unless ``log_to_driver``: streaming every line to the driver costs CPU per
    request that a 2-core box cannot spare.

    A local Ray is started without the processes a box does not use
    (``start_lean_head``); with ``outlive_caller`` it keeps running when this
    process ends, for ``lis up`` to stop it. ``joined=False`` connects to such
    a Ray again (lis's cluster token is for ``lis node`` clusters only).
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return str(ray.get_runtime_context().gcs_address)
    if address:
        # A lis cluster runs with Ray's token authentication (`lis node`), and
        # so does a box's own Ray (below), whose token is used when there is
        # no cluster token here.
        os.environ.update(_driver_auth_environment(joined))
        reread_ray_environment()
        ray.init(address=address, namespace=RAY_NAMESPACE, log_to_driver=log_to_driver)
        return address
    os.environ.update(SERVE_THROUGHPUT_ENVIRONMENT)
    os.environ.update(local_ray_token().environment())
    reread_ray_environment()
    if log_to_driver:  # replicas write their lines to stderr too, which Ray streams here
        os.environ["RAY_SERVE_LOG_TO_STDERR"] = "1"
    platforms = PLATFORMS if any_platform else (local_platform(),)
    # Only the Ray started here and this process's connection to it are one-box,
    # with warm workers: a `ray start` run later from this process (a test's own
    # cluster) must not be, nor a program it starts run with one thread.
    with _environment({**LOOPBACK_ONLY_ENVIRONMENT, **WARM_WORKER_ENVIRONMENT,
                       **FAST_CONNECT_ENVIRONMENT, **log_rotation_environment()}):
        address = start_lean_head(
            num_cpus=num_cpus, log_monitor=log_to_driver, outlive_caller=outlive_caller,
            resources={platform_resource(p): PLATFORM_UNITS for p in platforms})
        ray.init(address=address, namespace=RAY_NAMESPACE, log_to_driver=log_to_driver)
    kv_put(_WORKER_THREADS_KEY, str(_WORKER_THREADS).encode())
    if http_port is not None:
        kv_put(_DIRECT_INGRESS_KEY, str(http_port).encode())
    return address


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in the environment of the processes started, and the calls made, meanwhile."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    reread_ray_environment()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reread_ray_environment()


def _driver_auth_environment(joined: bool) -> dict[str, str]:
    """What a driver needs to join: lis's cluster token, else this box's own Ray's."""
    environment = cluster_auth_environment() if joined else {}
    if not environment and LOCAL_TOKEN_FILE.is_file():
        environment = _box_auth_environment()
    return environment


def _box_auth_environment() -> dict[str, str]:
    """A driver of a box's own Ray: on loopback only, with lis's local token."""
    return {**LOOPBACK_ONLY_ENVIRONMENT, **local_ray_token().environment()}
