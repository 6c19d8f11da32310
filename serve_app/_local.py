"""The callers' side of the local path (``deployments.local_socket``).

The ingress, and the client in a process of lis's Ray cluster
(``serve_app._same_node``), send a service whose running replicas all share
their node its requests over the replicas' Unix sockets; otherwise, and
whenever a replica's socket is gone or refuses, the request goes through Ray
Serve's handle. A caller keeps Ray Serve's contract for the requests it sends
this way: at most ``max_ongoing`` per replica (the least busy one gets the
next), at most ``max_queued`` waiting for a slot, then 503; the replica has
the service's timeout from when it takes the request, which the caller
enforces here (the replica's thread cannot be interrupted; its late answer is
dropped). A queued request whose HTTP client hung up is dropped before it
takes a slot. Each caller counts only its own requests; a replica whose slots
other callers hold answers ``Busy``, unstarted, and the request waits for
another slot: that replica is asked again every ``BUSY_RETRY_S``, by one
request at a time, until it takes one.
Ray Serve's autoscaler does not see these requests, so replicas report them
(``record_autoscaling_stats``) and ``local_aware_policy`` adds them to Ray's count.
The ingress talks only to a replica that runs as its own uid (``SO_PEERCRED``)
and reads only frames of ``vocabulary.wire``: a peer of another uid is not
used, and a malformed answer is an ``InferenceFailed``, never executed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deployments.local_socket import (
    LOCAL_ONGOING_METRIC,
    peer_uid,
    read_answer,
    service_sockets,
    write_request,
)
from serve_app._handles import GUARD_SECONDS, REPLICA_DIED
from vocabulary.errors import (
    ClientClosedRequest,
    InferenceFailed,
    InferenceTimeout,
    LisError,
    ServiceUnavailable,
)
from vocabulary.wire import Answer, Busy, InferenceResult, LocalRequest, Refused

if TYPE_CHECKING:
    from ray.serve.config import AutoscalingContext

__all__ = ["Gone", "LocalLimits", "LocalRoute", "LocalUnavailable", "local_aware_policy"]

# How often the ingress looks for replicas that started or stopped.
RESCAN_PERIOD_S = 1.0
# How soon a replica that answered Busy is asked again. It cannot tell the
# callers it refused when a slot frees; a model run takes milliseconds.
BUSY_RETRY_S = 0.003

log = logging.getLogger("ray.serve.lis")

_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
# Whether the caller of a request has hung up (the HTTP client disconnected).
Gone = Callable[[], Awaitable[bool]]


class LocalUnavailable(Exception):
    """No local replica took the request: send it through Ray Serve instead."""


@dataclass(frozen=True)
class LocalLimits:
    """Ray Serve's queueing options of one service, applied to its local requests."""

    max_ongoing: int
    max_queued: int  # -1: no limit


@dataclass(eq=False)
class _Replica:
    path: Path
    ongoing: int = 0
    idle: list[_Connection] = field(default_factory=list)
    # Set while the replica's slots are held by other callers: until then it
    # is not asked; from then one request at a time asks (``_take``).
    busy_until: float = 0.0

    def free(self, max_ongoing: int, now: float) -> bool:
        return self.ongoing < max_ongoing and self.busy_until <= now


class LocalRoute:
    """One service's replicas on the ingress's node, reached over their sockets."""

    def __init__(self, service: str, node_id: str, limits: LocalLimits) -> None:
        self.service = service
        self.node_id = node_id
        self.limits = limits
        self._replicas: dict[Path, _Replica] = {}
        # Sockets whose listener runs as another uid: never used, not asked again.
        self._foreign: set[Path] = set()
        self._scanned_at = -RESCAN_PERIOD_S
        self._waiting = 0
        self._freed = asyncio.Condition()

    def covers(self, running_replicas: int) -> bool:
        """Whether every running replica of the service is on this node (so local is fair)."""
        if time.monotonic() - self._scanned_at > RESCAN_PERIOD_S:
            self._rescan()
        return bool(self._replicas) and len(self._replicas) >= running_replicas

    def _rescan(self) -> None:
        found = set(service_sockets(self.node_id, self.service)) - self._foreign
        for gone in set(self._replicas) - found:
            self._forget(self._replicas[gone])
        for path in found - set(self._replicas):
            self._replicas[path] = _Replica(path)
        self._scanned_at = time.monotonic()

    def _forget(self, replica: _Replica) -> None:
        self._replicas.pop(replica.path, None)
        for _, writer in replica.idle:
            writer.close()
        replica.idle.clear()

    async def call(self, body: bytes, content_type: str | None, algo_type: str | None,
                   timeout_s: float, gone: Gone | None = None) -> InferenceResult:
        """The replica's answer; raises ``LisError``, or ``LocalUnavailable`` to go by Ray.

        The replica has ``timeout_s`` from when it takes the request (as on
        the Ray path); waiting in the queue may add ``GUARD_SECONDS``. A
        request that had to queue is dropped if ``gone()`` says its caller
        left, instead of taking a slot from the callers still waiting.
        """
        request = LocalRequest(self.service, content_type, algo_type, timeout_s, body)
        try:
            async with asyncio.timeout(timeout_s + GUARD_SECONDS):
                while True:
                    replica = await self._acquire(gone)
                    answer: Answer | None = None
                    try:
                        async with asyncio.timeout(timeout_s):
                            answer = await self._exchange(replica, request)
                    finally:
                        await self._release(replica, answer)
                    if not isinstance(answer, Busy):
                        break
        except TimeoutError:
            raise InferenceTimeout(self.service, timeout_s) from None
        if isinstance(answer, Refused):  # stopping: Ray Serve knows where the others are
            self._forget(replica)
            raise LocalUnavailable(self.service)
        if isinstance(answer, LisError):
            raise answer
        return answer

    async def _acquire(self, gone: Gone | None) -> _Replica:
        """The least busy replica with a free slot, waiting in the queue for one if need be."""
        async with self._freed:
            queued = False
            while True:
                # Asked only on a queued request's wake-ups, before it takes a
                # slot: a service with free slots pays nothing for it.
                if queued and gone is not None and await gone():
                    self._freed.notify()  # the slot this wake-up was for goes to the next
                    raise ClientClosedRequest(self.service)
                if not self._replicas:
                    raise LocalUnavailable(self.service)
                now = time.monotonic()
                free = [r for r in self._replicas.values()
                        if r.free(self.limits.max_ongoing, now)]
                if free:
                    return self._take(free)
                if 0 <= self.limits.max_queued <= self._waiting:
                    raise ServiceUnavailable(self.service, "overloaded: its request queue is full")
                queued = True
                self._waiting += 1
                try:
                    await self._wait(self._busy_retry_in(now))
                except asyncio.CancelledError:
                    # Cancelled (a timeout, or Ray's proxy for a client that left) just
                    # as a slot was offered to it: Python before 3.13 drops that
                    # wake-up, and the slot would wait for the next release.
                    self._freed.notify()
                    raise
                finally:
                    self._waiting -= 1

    def _take(self, free: list[_Replica]) -> _Replica:
        least = min(r.ongoing for r in free)
        replica = random.choice([r for r in free if r.ongoing == least])
        replica.ongoing += 1
        if replica.busy_until:
            # It answered Busy before: this request asks again, and no other
            # follows it there until the answer says whether it took one.
            replica.busy_until = math.inf
        return replica

    def _busy_retry_in(self, now: float) -> float | None:
        """Seconds until a replica that answered Busy may be asked again; None: none waits."""
        due = [r.busy_until for r in self._replicas.values()
               if r.ongoing < self.limits.max_ongoing and now < r.busy_until < math.inf]
        return min(due) - now if due else None

    async def _wait(self, retry_in: float | None) -> None:
        """Until a slot is released here, or a Busy replica's retry is due."""
        if retry_in is None:
            await self._freed.wait()
            return
        try:
            async with asyncio.timeout(retry_in):
                await self._freed.wait()
        except TimeoutError:
            pass  # the caller looks again; a wake-up lost here was this request's own

    async def _release(self, replica: _Replica, answer: Answer | None) -> None:
        """Give back ``replica``'s slot; ``answer`` is None when the exchange failed."""
        replica.ongoing -= 1
        cleared = False
        if isinstance(answer, Busy) or (answer is None and replica.busy_until):
            replica.busy_until = time.monotonic() + BUSY_RETRY_S
        elif replica.busy_until:
            # It took (or failed) a request: ask it again as any other.
            replica.busy_until, cleared = 0.0, True
        async with self._freed:
            if cleared:
                self._freed.notify_all()
            else:
                self._freed.notify()

    async def _exchange(self, replica: _Replica, request: LocalRequest) -> Answer:
        # A pooled connection may have been closed by a replica that stopped:
        # with nothing read back, the request goes once more on a new connection.
        while replica.idle:
            connection = replica.idle.pop()
            try:
                answer = await self._send(connection, request)
            except (asyncio.IncompleteReadError, ConnectionError) as error:
                if isinstance(error, asyncio.IncompleteReadError) and error.partial:
                    raise self._died() from error
                continue
            replica.idle.append(connection)
            return answer
        try:
            connection = await asyncio.open_unix_connection(str(replica.path))
        except OSError as error:  # the replica is gone (its socket is stale or removed)
            if isinstance(error, ConnectionRefusedError):
                # Nobody listens: its replica died without removing it, and
                # replica ids are never reused.
                replica.path.unlink(missing_ok=True)
            self._forget(replica)
            raise LocalUnavailable(self.service) from None
        self._check_peer(replica, connection)
        try:
            answer = await self._send(connection, request)
        except (asyncio.IncompleteReadError, ConnectionError) as error:
            raise self._died() from error
        replica.idle.append(connection)
        return answer

    def _check_peer(self, replica: _Replica, connection: _Connection) -> None:
        """Use the socket only if its listener runs as this uid; else ``LocalUnavailable``."""
        writer = connection[1]
        uid = peer_uid(writer.get_extra_info("socket"))
        if uid == os.getuid():
            return
        writer.close()
        log.warning("%s: the local socket %s is served by uid %d, not this ingress's %d: "
                    "not used", self.service, replica.path, uid, os.getuid())
        self._foreign.add(replica.path)
        self._forget(replica)
        raise LocalUnavailable(self.service)

    async def _send(self, connection: _Connection, request: LocalRequest) -> Answer:
        reader, writer = connection
        try:
            write_request(writer, request)
            await writer.drain()
            return await read_answer(reader)
        except LisError as malformed:  # not a frame of ours: the stream is out of step too
            writer.close()
            raise InferenceFailed(self.service, f"its replica's answer is malformed: "
                                                f"{malformed.message}") from None
        except BaseException:
            # Cancelled (the caller's timeout) or broken: the stream is out of step.
            writer.close()
            raise

    def _died(self) -> LisError:
        return InferenceFailed(self.service, REPLICA_DIED)


def local_aware_policy(ctx: AutoscalingContext) -> tuple[float, dict[str, Any]]:
    """Ray Serve's default policy (ongoing requests over the target), local ones counted too.

    Ray wraps it as it wraps its own: bounds, delays and scaling factors still apply.
    """
    if ctx.current_num_replicas == 0:
        return ctx.target_num_replicas, {}
    local = sum((ctx.aggregated_metrics or {}).get(LOCAL_ONGOING_METRIC, {}).values())
    return (ctx.total_num_requests + local) / ctx.config.get_target_ongoing_requests(), {}
