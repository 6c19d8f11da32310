"""What a service's replica in the test lis says of itself (one replica per service there)."""

from __future__ import annotations

from typing import Any


def replica_view(service: str) -> dict[str, Any]:
    """The replica's ``describe()``: its counts, limits and model facts."""
    from ray import serve

    return serve.get_deployment_handle(service, app_name="lis").describe.remote().result(
        timeout_s=30)


def local_requests(service: str) -> int:
    """Requests the replica answered over its local socket (not through Ray Serve)."""
    return replica_view(service)["local_requests"]
