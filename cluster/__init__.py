"""Edge clusters: recognise the device, start or join its Ray node.

``lis node head|join|plan`` (``cluster.node``) is the command line;
``detect_platform`` tells which connector platform a device hosts, and
``cluster_auth_environment`` gives a driver (``lis up --address auto``) the
variables it needs to reach a token-protected cluster.
"""

from __future__ import annotations

from cluster._token import DEFAULT_TOKEN_FILE, cluster_auth_environment
from cluster.node import Decision, NodeOptions, NodePlan, plan_node
from cluster.platform import DevicePlatform, detect_platform

__all__ = [
    "DEFAULT_TOKEN_FILE",
    "Decision",
    "DevicePlatform",
    "NodeOptions",
    "NodePlan",
    "cluster_auth_environment",
    "detect_platform",
    "plan_node",
]
