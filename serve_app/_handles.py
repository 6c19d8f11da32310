"""Calling a service deployment through a Ray Serve handle.

The ingress and the in-cluster client both come through here, so the Ray
exceptions a call can raise are turned into lis errors in one place.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import exceptions as ray_errors
from ray.serve import exceptions as serve_errors
from ray.serve.handle import DeploymentHandle

from vocabulary.errors import (
    InferenceFailed,
    InferenceTimeout,
    LisError,
    ServiceNotFound,
    ServiceUnavailable,
)
from vocabulary.names import APP_NAME

__all__ = [
    "GUARD_SECONDS",
    "REPLICA_DIED",
    "call_service",
    "call_service_sync",
    "deployment_handle",
    "describe_service",
    "describe_service_sync",
    "to_lis_error",
]

# The replica enforces the service's timeout itself; the caller waits a little
# longer so a replica that died or never got the request still ends in 504.
GUARD_SECONDS = 5.0
# The request is lost with its replica, by whichever path it came.
REPLICA_DIED = "its replica died while handling the request"


def deployment_handle(name: str) -> DeploymentHandle:
    """The handle of lis's deployment ``name``; ``ServiceNotFound`` if lis has none."""
    from ray import serve

    try:
        return serve.get_deployment_handle(name, app_name=APP_NAME)
    except Exception as error:  # noqa: BLE001 - Ray raises several types for "no such"
        raise ServiceNotFound(name) from error


def to_lis_error(error: BaseException, service: str, timeout_s: float) -> LisError:
    """The lis error a failed handle call stands for."""
    # A replica's LisError arrives as ``RayTaskError(<cls>)``, a subclass of
    # both; its ``cause`` is the original, whose type name the caller sees.
    cause = getattr(error, "cause", None)
    if isinstance(cause, LisError):
        return cause
    if isinstance(error, LisError):
        return error
    if isinstance(error, serve_errors.BackPressureError):
        return ServiceUnavailable(service, "overloaded: its request queue is full")
    if isinstance(error, (serve_errors.DeploymentUnavailableError,
                          serve_errors.ReplicaUnavailableError)):
        return ServiceUnavailable(service, "no replica is running")
    if isinstance(error, (TimeoutError, asyncio.TimeoutError, ray_errors.GetTimeoutError)):
        return InferenceTimeout(service, timeout_s)
    if isinstance(error, ray_errors.ActorUnavailableError):
        return ServiceUnavailable(service, "its replica became unreachable while handling "
                                           "the request (its node may be down)")
    if isinstance(error, ray_errors.RayActorError):
        # The replica's process or node died (node loss ends here): the
        # request is lost, the service's other replicas keep answering.
        return InferenceFailed(service, REPLICA_DIED)
    if isinstance(error, ray_errors.RayTaskError) and cause is not None:
        return InferenceFailed(service, f"{type(cause).__name__}: {cause}")
    return InferenceFailed(service, f"{type(error).__name__}: {error}")


async def call_service(handle: DeploymentHandle, service: str, body: bytes,
                       content_type: str | None, algo_type: str | None,
                       timeout_s: float) -> Any:
    """Await ``infer`` on a service; raises only ``LisError``."""
    try:
        response = handle.infer.remote(body, content_type, algo_type)
        return await asyncio.wait_for(response, timeout_s + GUARD_SECONDS)
    except Exception as error:  # noqa: BLE001 - every failure becomes a LisError
        raise to_lis_error(error, service, timeout_s) from error


def call_service_sync(handle: DeploymentHandle, service: str, body: bytes,
                      content_type: str | None, algo_type: str | None,
                      timeout_s: float) -> Any:
    """Blocking twin of ``call_service`` for code outside an event loop."""
    try:
        response = handle.infer.remote(body, content_type, algo_type)
        return response.result(timeout_s=timeout_s + GUARD_SECONDS)
    except Exception as error:  # noqa: BLE001
        raise to_lis_error(error, service, timeout_s) from error


async def describe_service(handle: DeploymentHandle, service: str,
                           timeout_s: float) -> dict[str, Any]:
    """A replica's ``describe()`` (version, labels, ...); raises only ``LisError``."""
    try:
        return await asyncio.wait_for(handle.describe.remote(), timeout_s)
    except Exception as error:  # noqa: BLE001 - every failure becomes a LisError
        raise to_lis_error(error, service, timeout_s) from error


def describe_service_sync(handle: DeploymentHandle, service: str,
                          timeout_s: float) -> dict[str, Any]:
    """Blocking twin of ``describe_service`` for code outside an event loop."""
    try:
        return handle.describe.remote().result(timeout_s=timeout_s)
    except Exception as error:  # noqa: BLE001
        raise to_lis_error(error, service, timeout_s) from error
