"""Starting Ray on this box, or joining a lis cluster: the environment Ray runs in.

``lis up`` and ``lis reload`` call ``connect_ray``; ``lis node`` (``cluster.node``)
starts Ray's own processes with the same ``SERVE_THROUGHPUT_ENVIRONMENT``.
"""

from __future__ import annotations

import os

from cluster._token import cluster_auth_environment
from cluster.platform import detect_platform
from deployments.ray_internals import kv_get, kv_put
from vocabulary.connectors import PLATFORMS
from vocabulary.names import RAY_NAMESPACE, platform_resource

__all__ = [
    "PLATFORM_UNITS",
    "SERVE_THROUGHPUT_ENVIRONMENT",
    "connect_ray",
    "direct_ingress_port",
    "local_platform",
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
    value = kv_get(_DIRECT_INGRESS_KEY)
    return int(value) if value else None


def local_platform() -> str:
    """The connector platform suffix of this machine."""
    return detect_platform().connector_suffix


def connect_ray(address: str | None, *, any_platform: bool = False,
                num_cpus: int | None = None, log_to_driver: bool = False,
                http_port: int | None = None) -> None:
    """Join ``address`` (``auto``, ``ray://...``) or start a local Ray for this box.

    A local Ray given ``http_port`` serves HTTP from the ingress replica on that
    port (see ``direct_ingress_port``); a joined cluster keeps Ray Serve's
    proxy on the nodes that run replicas, so a device reaches the ingress
    through its own node. Replica logs stay in Ray's log files
    (``<ray session>/logs/serve/``) unless ``log_to_driver``: streaming every
    line to the driver costs CPU per request that a 2-core box cannot spare.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return
    if address:
        # A lis cluster runs with Ray's token authentication (`lis node`).
        os.environ.update(cluster_auth_environment())
        ray.init(address=address, namespace=RAY_NAMESPACE, log_to_driver=log_to_driver)
        return
    os.environ.update(SERVE_THROUGHPUT_ENVIRONMENT)
    if log_to_driver:  # replicas write their lines to stderr too, which Ray streams here
        os.environ["RAY_SERVE_LOG_TO_STDERR"] = "1"
    platforms = PLATFORMS if any_platform else (local_platform(),)
    ray.init(namespace=RAY_NAMESPACE, include_dashboard=False, num_cpus=num_cpus,
             log_to_driver=log_to_driver,
             resources={platform_resource(p): PLATFORM_UNITS for p in platforms})
    if http_port is not None:
        kv_put(_DIRECT_INGRESS_KEY, str(http_port).encode())
