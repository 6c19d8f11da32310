"""What each service of the lis application is doing now, as Ray Serve's controller sees it.

``lis status``, ``lis up``'s wait, ``/services`` and ``/readyz`` all read
states from here: RUNNING, STARTING, PENDING (with the resource no node
offers), UNHEALTHY, DEGRADED, FAILED.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from deployments.ray_internals import serve_details
from vocabulary.names import APP_NAME, PLATFORM_RESOURCE_PREFIX

__all__ = ["service_states", "short_message", "unplaceable_reason"]


def service_states(app_name: str = APP_NAME,
                   demands: Mapping[str, Mapping[str, float]] | None = None
                   ) -> dict[str, dict[str, Any]]:
    """Per deployment: state, replica counts, whether a rollout is under way, message.

    States: RUNNING (serving), STARTING, PENDING (no node can host a replica:
    the message says which resource is missing, from ``demands``, the
    resources one replica needs), UNHEALTHY, DEGRADED, FAILED.
    """
    application = _application_details(app_name)
    if application is None:
        return {}
    nodes = _alive_node_resources() if demands else []
    states = {}
    for name, deployment in application["deployments"].items():
        replicas = dict(Counter(_value(replica["state"]) for replica in deployment["replicas"]))
        ray_status = _value(deployment["status"])
        state = {
            "state": _state(ray_status, replicas.get("RUNNING", 0)),
            "replicas": replicas,
            "updating": ray_status == "UPDATING",
            "message": short_message(deployment.get("message") or ""),
        }
        # Ray only sees replicas that never start (at times as failures to
        # start): the cause is a resource that no live node has.
        waiting = state["state"] in ("STARTING", "UNHEALTHY")
        reason = unplaceable_reason(demands[name], nodes) \
            if waiting and demands and name in demands else None
        if reason:
            state.update(state="PENDING", message=f"pending: {reason}")
        states[name] = state
    return states


def _application_details(app_name: str) -> dict[str, Any] | None:
    """What Ray Serve's controller knows of one application, as plain data; None if absent.

    Plain data, not ``serve.status()``: the ingress asks every 2 s while
    requests come in, and on every ``/readyz`` and ``/services`` (see
    ``deployments.ray_internals.serve_details`` for the cost).
    """
    details = serve_details()
    return None if details is None else details.get("applications", {}).get(app_name)


def _value(member: Any) -> str:
    """An enum member's value (Ray's states are str enums), or the string itself."""
    return str(getattr(member, "value", member))


def _alive_node_resources() -> list[dict[str, float]]:
    import ray

    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def _amount(resource: str, amount: float) -> str:
    if resource == "memory":
        return f"{amount / 2**20:.0f} MiB of memory"
    if resource in ("CPU", "GPU"):
        return f"{amount:g} {resource}"
    return f"{resource}: {amount:g}"


def unplaceable_reason(demand: Mapping[str, float], nodes: list[dict[str, float]]
                       ) -> str | None:
    """Why no node of ``nodes`` (their total resources) can ever host ``demand``; None if one can.

    Judged from totals, not from what is free: a replica that waits for room
    is starting, one that no node could ever host is pending until a node joins.
    """
    def offers(node: Mapping[str, float], resource: str) -> bool:
        return node.get(resource, 0.0) >= demand[resource]

    if any(all(offers(node, r) for r in demand) for node in nodes):
        return None
    platform = next((r for r in demand if r.startswith(PLATFORM_RESOURCE_PREFIX)), None)
    if platform is not None:
        nodes = [node for node in nodes if offers(node, platform)]
        if not nodes:
            return f"no node offers {platform}"
    where = f"offering {platform} " if platform else ""
    rest = [r for r in demand if r != platform]
    missing = [r for r in rest if not any(offers(node, r) for node in nodes)]
    if missing:
        return f"no node {where}has {' and '.join(_amount(r, demand[r]) for r in missing)}"
    return f"no node {where}has {' and '.join(_amount(r, demand[r]) for r in rest)} together"


def _state(deployment_status: str, running: int) -> str:
    if deployment_status == "DEPLOY_FAILED":
        return "FAILED"
    if deployment_status == "UNHEALTHY":
        return "UNHEALTHY" if not running else "DEGRADED"
    return "RUNNING" if running else "STARTING"


def short_message(message: str) -> str:
    """Ray's status message without the traceback: its first sentence and the error line."""
    if "Traceback" not in message:
        return message.strip()
    first = message.split(". ", 1)[0].strip()
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return f"{first}: {lines[-1]}" if lines else first
