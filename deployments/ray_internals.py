"""Every use lis makes of Ray's private API, in one place.

Ray may change any of these in a minor release; after a Ray upgrade, this is
the one file to check (each function says why no public call does the job).
Imports are inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

from typing import Any

__all__ = ["kv_get", "kv_put", "serve_details", "serve_logs_dir", "versioned"]


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


def serve_logs_dir() -> str:
    """The folder where Ray Serve writes this node's replica logs.

    lis writes each replica's access lines beside Ray's own replica log; Ray
    exposes the folder only through its logging utilities.
    """
    from ray.serve._private.logging_utils import get_serve_logs_dir

    return get_serve_logs_dir()
