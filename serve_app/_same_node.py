"""The in-cluster client's short road: a service's replicas on the caller's node, over their sockets.

The ingress reaches a replica on its own node over the replica's Unix socket
(``serve_app._local``); this gives the client (``serve_app.transport``) the
same road when it runs in a process of lis's Ray cluster on that node, as
lis's user: a driver, a Ray task or actor, a user's Ray Serve deployment. A
Ray Serve handle call costs a small box about 3.5 ms of CPU between caller
and replica; the socket about 0.5 ms. The rules are the ingress's: only while
every running replica of the service is on this node; Ray Serve's limits kept
(a replica refuses past its own limit what all its callers send, answering
``Busy``); and through the Ray Serve handle whenever no local replica takes
the request.

Each caller takes the road in its own thread or event loop, with no hop to
another: a call from a thread blocks on the socket (``LocalCaller``: one
connection per calling thread); a coroutine goes on its own loop's
``LocalRoute``, which queues and counts as the ingress does. A call from a
thread that every replica answers ``Busy`` waits in the queue of a route too,
on a loop thread this process starts the first time that happens.

A service's limits (its timeout, ``max_queued_requests``) come from one of
its replicas' ``describe()``, asked through its handle once and again every
``LIMITS_TTL_S``; its running replicas from Serve's controller, every
``RUNNING_CHECK_PERIOD_S``, as the ingress asks. Both are refreshed in a
thread of their own, so no call waits for them but the first.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from deployments.local_caller import AllBusy, LocalCaller, LocalUnreachable
from deployments.local_socket import current_node_id, service_sockets
from deployments.ray_internals import ray_connection
from serve_app._handles import deployment_handle, describe_service_sync
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


@dataclass(frozen=True)
class _Limits:
    queueing: LocalLimits
    timeout_s: float
    described_at: float


class _SameNode:
    """What this process knows of the services on its node, and its roads to them."""

    def __init__(self, node_id: str, connection: object) -> None:
        self.node_id = node_id
        self.connection = connection  # the Ray connection ``node_id`` was asked of
        self._limits: dict[str, _Limits] = {}
        self._running: dict[str, int] | None = None
        self._counted_at = 0.0
        self._refreshing: set[str] = set()
        self._lock = threading.Lock()
        self._callers: dict[str, LocalCaller] = {}
        # Per event loop: a route's queue and connections belong to one loop.
        self._routes: dict[asyncio.AbstractEventLoop, dict[str, LocalRoute]] = {}
        self._queue_loop: asyncio.AbstractEventLoop | None = None

    def has_replicas_here(self, service: str) -> bool:
        return service in self._limits or bool(service_sockets(self.node_id, service))

    def limits_now(self, service: str) -> _Limits | None:
        """The service's limits if known (refreshed in the background when old), else None."""
        known = self._limits.get(service)
        if known is not None and time.monotonic() - known.described_at > LIMITS_TTL_S:
            self._in_background(f"describe {service}", lambda: self._redescribe(service))
        return known

    def limits(self, service: str) -> _Limits:
        """The service's limits, asked of a replica if need be; raises ``LocalUnavailable``."""
        known = self.limits_now(service)
        if known is None:
            known = self._limits[service] = self._describe(service)
        return known

    def running_now(self, service: str) -> int | None:
        """How many replicas of ``service`` run in the cluster; None if never counted."""
        if self._running is None:
            return None
        if time.monotonic() - self._counted_at > RUNNING_CHECK_PERIOD_S:
            self._in_background("running", self._count_running)
        return self._running.get(service, 0)

    def running(self, service: str) -> int:
        """``running_now``, counted first if it never was."""
        if self._running is None:
            self._count_running()
        return self.running_now(service) or 0

    def caller(self, service: str, limits: _Limits) -> LocalCaller:
        caller = self._callers.get(service)
        if caller is None:
            with self._lock:
                caller = self._callers.setdefault(
                    service, LocalCaller(service, self.node_id, limits.timeout_s))
        caller.timeout_s = limits.timeout_s
        return caller

    def route(self, service: str, limits: _Limits) -> LocalRoute:
        loop = asyncio.get_running_loop()
        routes = self._routes.get(loop)
        if routes is None:
            with self._lock:  # a closed loop's routes are no one's now
                for closed in [other for other in self._routes if other.is_closed()]:
                    del self._routes[closed]
                routes = self._routes.setdefault(loop, {})
        route = routes.get(service)
        if route is None:
            route = routes[service] = LocalRoute(service, self.node_id, limits.queueing)
        route.limits = limits.queueing
        return route

    def queue_sync(self, service: str, limits: _Limits, running: int, body: bytes,
                   content_type: str | None, algo_type: str | None) -> InferenceResult:
        """From a thread, the answer of the first local slot to free (``LocalRoute``'s queue);
        ``LocalUnavailable``: go by Ray Serve."""
        with self._lock:
            if self._queue_loop is None:
                self._queue_loop = asyncio.new_event_loop()
                threading.Thread(target=self._queue_loop.run_forever, name="lis-same-node-queue",
                                 daemon=True).start()
            loop = self._queue_loop

        async def queued() -> InferenceResult:
            route = self.route(service, limits)
            if not route.covers(running):
                raise LocalUnavailable(service)
            return await route.call(body, content_type, algo_type, limits.timeout_s)

        return asyncio.run_coroutine_threadsafe(queued(), loop).result()

    def _describe(self, service: str) -> _Limits:
        try:
            found = describe_service_sync(deployment_handle(service), service,
                                          DESCRIBE_TIMEOUT_S)
        except LisError as error:
            # The handle's own call says what is wrong (no such service, ...).
            raise LocalUnavailable(service) from error
        limits = found["limits"]
        return _Limits(LocalLimits(limits["max_ongoing_requests"], limits["max_queued_requests"]),
                       limits["timeout_s"], time.monotonic())

    def _redescribe(self, service: str) -> None:
        self._limits[service] = self._describe(service)

    def _count_running(self) -> None:
        states = service_states(APP_NAME)
        self._running = {name: state["replicas"].get("RUNNING", 0)
                         for name, state in states.items()}
        self._counted_at = time.monotonic()

    def _in_background(self, what: str, work: Callable[[], None]) -> None:
        """``work`` in a thread of its own, unless the same refresh is under way."""
        with self._lock:
            if what in self._refreshing:
                return
            self._refreshing.add(what)

        def run() -> None:
            try:
                work()
            except Exception as error:  # noqa: BLE001 - the next period tries again
                log.warning("same-node routes: refreshing %s failed: %r", what, error)
            finally:
                with self._lock:
                    self._refreshing.discard(what)

        threading.Thread(target=run, name="lis-same-node", daemon=True).start()


_same_node: _SameNode | None = None
_lock = threading.Lock()


def _node() -> _SameNode | None:
    """This process's view; None where it cannot have one (no Ray node to ask)."""
    global _same_node
    connection = ray_connection()
    if connection is None:
        return None  # not in a Ray worker or driver: Ray's road
    known = _same_node
    if known is not None and known.connection is connection:
        return known
    with _lock:
        # First call, or a driver that joined Ray again since (a restarted lis):
        # the old connection's roads and limits are no one's now.
        if _same_node is None or _same_node.connection is not connection:
            try:
                _same_node = _SameNode(current_node_id(), connection)
            except Exception:  # noqa: BLE001 - Ray cannot say (shutting down): Ray's road
                return None
        return _same_node


def call_sync(service: str, body: bytes, content_type: str | None,
              algo_type: str | None) -> InferenceResult | None:
    """A replica's answer over its socket, from a thread; None: take the Ray Serve handle.

    Raises the ``LisError`` a replica answered.
    """
    node = _node()
    if node is None or not node.has_replicas_here(service):
        return None
    try:
        limits = node.limits(service)
    except LocalUnavailable:
        return None
    running = node.running(service)
    try:
        return node.caller(service, limits).call(body, content_type, algo_type,
                                                 running_replicas=running)
    except AllBusy:
        pass  # its slots are all held: wait for one, as a coroutine would
    except LocalUnreachable:
        return None
    try:
        return node.queue_sync(service, limits, running, body, content_type, algo_type)
    except LocalUnavailable:
        return None


async def call(service: str, body: bytes, content_type: str | None,
               algo_type: str | None) -> InferenceResult | None:
    """``call_sync`` for a coroutine, on the caller's own loop; None: take the Ray Serve handle."""
    node = _node()
    if node is None or not node.has_replicas_here(service):
        return None
    try:
        limits = node.limits_now(service) or await asyncio.to_thread(node.limits, service)
        running = node.running_now(service)
        if running is None:
            running = await asyncio.to_thread(node.running, service)
        route = node.route(service, limits)
        if not route.covers(running):
            return None
        return await route.call(body, content_type, algo_type, limits.timeout_s)
    except LocalUnavailable:
        return None
