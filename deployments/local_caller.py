"""A blocking caller of the replicas' local sockets, for code that runs on their node and
waits for each answer in its thread: a camera pipeline, a Python client's call from a thread.

The ingress (``serve_app._local``) and in-cluster coroutines keep queues and
per-replica counts of their own; a caller that blocks needs none of that: it
sends one request per thread, waits for its answer, and sends the next. Past its most, a replica
answers ``Busy`` without starting the request (it keeps the limit for every
caller on its node), and a stopping one answers ``Refused``. This caller tries
the service's sockets on this node in turn, keeping the connections it opened
to each for the next request (one per thread that calls at once); a socket of
another uid is never used. When none takes the request it raises
``LocalUnreachable``, and the caller goes through Ray Serve's handle instead,
where Ray Serve queues it.

No Ray here: a pipeline's runner can be tested without a cluster.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from pathlib import Path

from deployments.local_socket import peer_uid, receive_answer_frame, send_frame, service_sockets
from vocabulary.errors import InferenceTimeout, LisError
from vocabulary.wire import (
    MAX_ANSWER_BYTES,
    Answer,
    Busy,
    InferenceResult,
    LocalRequest,
    Refused,
    decode_answer,
    encode_request,
)

__all__ = ["RESCAN_PERIOD_S", "AllBusy", "LocalCaller", "LocalUnreachable"]

log = logging.getLogger("ray.serve.lis")
# How long the list of a service's sockets is kept: replicas come and go in
# seconds, a request takes milliseconds, and listing the folder costs a few
# dozen microseconds.
RESCAN_PERIOD_S = 1.0


class LocalUnreachable(Exception):
    """No replica on this node took the request; nothing was started."""


class AllBusy(LocalUnreachable):
    """Every replica on this node answered ``Busy``: its slots are all held."""


class LocalCaller:
    """Calls ``service``'s replicas on node ``node_id`` over their sockets; safe from any thread."""

    def __init__(self, service: str, node_id: str, timeout_s: float) -> None:
        self.service = service
        self.node_id = node_id
        self.timeout_s = timeout_s
        self.answered = 0  # requests a replica answered over its socket
        self._idle: dict[Path, list[socket.socket]] = {}
        self._lock = threading.Lock()
        self._paths: list[Path] = []
        self._scanned_at = -RESCAN_PERIOD_S

    def call(self, body: bytes, content_type: str | None, algo_type: str | None = None, *,
             running_replicas: int = 0) -> InferenceResult:
        """The replica's answer; its error raised; ``LocalUnreachable`` when none took it.

        ``running_replicas``: how many the service runs in all; unless this
        node has as many, none is called here (Ray Serve spreads the requests).
        """
        paths = self._sockets()
        if not paths:
            raise LocalUnreachable(f"no replica of {self.service} listens on this node")
        if len(paths) < running_replicas:
            raise LocalUnreachable(f"{self.service} runs replicas on other nodes too")
        request = LocalRequest(self.service, content_type, algo_type, self.timeout_s, body)
        reasons: list[str] = []
        busy = 0
        if len(paths) > 1:
            paths = random.sample(paths, len(paths))  # spread the callers over the replicas
        for path in paths:
            answer = self._ask(path, request)
            if isinstance(answer, InferenceResult):
                with self._lock:
                    self.answered += 1
                return answer
            if isinstance(answer, LisError):
                raise answer
            if isinstance(answer, Busy):
                busy += 1
            reasons.append(f"{path.name}: {answer.reason}"
                           if isinstance(answer, (Busy, Refused)) else answer)
        if busy == len(paths):
            raise AllBusy("; ".join(reasons))
        self._scanned_at = -RESCAN_PERIOD_S  # one may have stopped: look again next time
        raise LocalUnreachable("; ".join(reasons))

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    def _sockets(self) -> list[Path]:
        if not self._paths or time.monotonic() - self._scanned_at > RESCAN_PERIOD_S:
            self._paths = service_sockets(self.node_id, self.service)
            self._scanned_at = time.monotonic()
            with self._lock:  # a replica that stopped: its connections are no use now
                gone = [self._idle.pop(path) for path in set(self._idle) - set(self._paths)]
            for connection in (c for connections in gone for c in connections):
                connection.close()
        return self._paths

    def _ask(self, path: Path, request: LocalRequest) -> Answer | str:
        """The answer of the replica at ``path``, or why it could not be asked."""
        for attempt in (1, 2):  # a kept connection the replica closed: once more, anew
            connection = self._take(path)
            kept = connection is not None
            try:
                connection = connection or self._connect(path)
            except OSError as error:
                return f"{path.name}: {error}"
            if connection is None:
                return f"{path.name}: not this user's socket"
            if connection.gettimeout() != self.timeout_s:
                connection.settimeout(self.timeout_s)
            try:
                send_frame(connection, encode_request(request))
                frame = receive_answer_frame(connection, MAX_ANSWER_BYTES)
            except TimeoutError:
                connection.close()  # its late answer must not be read as the next one's
                raise InferenceTimeout(self.service, self.timeout_s) from None
            except OSError as error:
                connection.close()
                if kept and attempt == 1:
                    continue
                return f"{path.name}: {error}"
            if frame is None:
                connection.close()
                if kept and attempt == 1:
                    continue
                return f"{path.name}: closed the connection"
            self._give_back(path, connection)
            return decode_answer(*frame)
        return f"{path.name}: closed the connection"

    def _take(self, path: Path) -> socket.socket | None:
        with self._lock:
            idle = self._idle.get(path)
            return idle.pop() if idle else None

    def _give_back(self, path: Path, connection: socket.socket) -> None:
        with self._lock:
            self._idle.setdefault(path, []).append(connection)

    def _connect(self, path: Path) -> socket.socket | None:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.settimeout(self.timeout_s)
        try:
            connection.connect(str(path))
            if peer_uid(connection) != os.getuid():
                log.warning("the socket %s belongs to another user: not used", path)
                connection.close()
                return None
        except OSError:
            connection.close()
            raise
        return connection
