"""The in-cluster client's short road: a service's replicas on the caller's node, over their sockets.

The ingress reaches a replica on its own node over the replica's Unix socket
(``serve_app._local``); this gives the client (``serve_app.transport``) the
same road when it runs in a process of lis's Ray cluster on that node, as
lis's user: a driver, a Ray task or actor, a user's Ray Serve deployment. A
Ray Serve handle call costs a small box about 3.5 ms of CPU between caller
and replica; the socket about 0.5 ms. The rules are the ingress's: only while
every running replica of the service is on this node; Ray Serve's limits kept
(this process counts its own requests, and a replica refuses past its own
limit what all its callers send, answering ``Busy``); and through the Ray
Serve handle whenever no local replica takes the request.

A service's limits (its timeout, ``max_queued_requests``) come from one of
its replicas' ``describe()``, asked through its handle once and again every
``LIMITS_TTL_S``; its running replicas from Serve's controller, every
``RUNNING_CHECK_PERIOD_S``, as the ingress asks.

The routes run on an event loop of their own, in one thread of the process:
a route's queue and pooled connections belong to one loop, and the client is
called from plain threads and from users' event loops alike.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from deployments.local_socket import current_node_id, service_sockets
from serve_app._handles import deployment_handle, describe_service
from serve_app._local import LocalLimits, LocalRoute, LocalUnavailable
from serve_app.service_state import service_states
from vocabulary.errors import LisError
from vocabulary.names import APP_NAME
from vocabulary.wire import InferenceResult

__all__ = ["LIMITS_TTL_S", "RUNNING_CHECK_PERIOD_S", "call", "call_sync"]

log = logging.getLogger("lis.client")
# How often the running replicas are counted (the ingress's period too).
RUNNING_CHECK_PERIOD_S = 2.0
# How long a service's limits are kept before they are asked again: a new
# deployment of lis may change a service's timeout.
LIMITS_TTL_S = 30.0
DESCRIBE_TIMEOUT_S = 30.0
_T = TypeVar("_T")


@dataclass
class _Service:
    route: LocalRoute
    timeout_s: float
    described_at: float


class _SameNode:
    """This process's local routes, one per service it called, on a loop thread of their own."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._services: dict[str, _Service] = {}
        self._running: dict[str, int] = {}
        self._checked_at = -RUNNING_CHECK_PERIOD_S
        self._background: set[asyncio.Task[Any]] = set()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="lis-same-node",
                         daemon=True).start()

    def submit(self, work: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        return asyncio.run_coroutine_threadsafe(work, self.loop)

    async def infer(self, service: str, body: bytes, content_type: str | None,
                    algo_type: str | None) -> InferenceResult:
        """The answer of a replica on this node; ``LocalUnavailable``: go by Ray Serve."""
        if service not in self._services and not service_sockets(self.node_id, service):
            raise LocalUnavailable(service)  # no replica of it here: no need to ask more
        known = await self._service(service)
        if not known.route.covers(await self._running_replicas(service)):
            raise LocalUnavailable(service)
        return await known.route.call(body, content_type, algo_type, known.timeout_s)

    async def _service(self, service: str) -> _Service:
        known = self._services.get(service)
        if known is None:
            known = await self._describe(service)
            self._services[service] = known
        elif time.monotonic() - known.described_at > LIMITS_TTL_S:
            known.described_at = time.monotonic()  # one refresh at a time
            self._in_background(self._refresh(service, known))
        return known

    async def _describe(self, service: str) -> _Service:
        try:
            handle = await asyncio.to_thread(deployment_handle, service)
            found = await describe_service(handle, service, DESCRIBE_TIMEOUT_S)
        except LisError as error:
            # The handle's own call says what is wrong (no such service, ...).
            raise LocalUnavailable(service) from error
        limits = found["limits"]
        return _Service(
            LocalRoute(service, self.node_id, LocalLimits(limits["max_ongoing_requests"],
                                                          limits["max_queued_requests"])),
            limits["timeout_s"], time.monotonic())

    async def _refresh(self, service: str, known: _Service) -> None:
        fresh = await self._describe(service)
        known.timeout_s, known.route.limits = fresh.timeout_s, fresh.route.limits

    async def _running_replicas(self, service: str) -> int:
        if service not in self._running:
            await self._count_running()
        elif time.monotonic() - self._checked_at > RUNNING_CHECK_PERIOD_S:
            self._checked_at = time.monotonic()  # one count at a time
            self._in_background(self._count_running())
        return self._running.get(service, 0)

    async def _count_running(self) -> None:
        states = await asyncio.to_thread(service_states, APP_NAME)
        self._running = {name: state["replicas"].get("RUNNING", 0)
                         for name, state in states.items()}
        self._checked_at = time.monotonic()

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(work)
        self._background.add(task)  # kept until done: the loop holds tasks weakly
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("same-node routes: a background check failed: %r", task.exception())


_same_node: _SameNode | None = None
_lock = threading.Lock()


def _routes() -> _SameNode | None:
    """This process's routes; None where it cannot have any (no Ray node to ask)."""
    global _same_node
    try:
        node_id = current_node_id()
    except Exception:  # noqa: BLE001 - not in a Ray worker or driver: Ray's road
        return None
    with _lock:
        if _same_node is None or _same_node.node_id != node_id:
            # First call, or a driver that joined another Ray since (a restarted lis):
            # the old node's routes and limits are no one's now.
            if _same_node is not None:
                _same_node.loop.call_soon_threadsafe(_same_node.loop.stop)
            _same_node = _SameNode(node_id)
        return _same_node


def call_sync(service: str, body: bytes, content_type: str | None,
              algo_type: str | None) -> InferenceResult | None:
    """A replica's answer over its socket, from a thread; None: take the Ray Serve handle.

    Raises the ``LisError`` a replica answered.
    """
    routes = _routes()
    if routes is None:
        return None
    try:
        return routes.submit(routes.infer(service, body, content_type, algo_type)).result()
    except LocalUnavailable:
        return None


async def call(service: str, body: bytes, content_type: str | None,
               algo_type: str | None) -> InferenceResult | None:
    """``call_sync`` for a coroutine: the caller's loop runs on while the answer comes."""
    routes = _routes()
    if routes is None:
        return None
    try:
        return await asyncio.wrap_future(
            routes.submit(routes.infer(service, body, content_type, algo_type)))
    except LocalUnavailable:
        return None
