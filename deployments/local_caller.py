"""A blocking caller of the replicas' local sockets, for code that runs on their node and
makes one request at a time: a camera pipeline.

The ingress (``serve_app._local``) and in-cluster Python callers keep queues
and per-replica counts of their own; a pipeline needs none of that: it sends
one frame, waits for its answer, and sends the next. Past its most, a replica
answers ``Busy`` without starting the request (it keeps the limit for every
caller on its node), and a stopping one answers ``Refused``. This caller tries
the service's sockets on this node in turn, keeping one connection to each; a
socket of another uid is never used. When none takes the request it raises
``LocalUnreachable``, and the caller goes through Ray Serve's handle instead,
where Ray Serve queues it.

No Ray here: a pipeline's runner can be tested without a cluster.
"""

from __future__ import annotations

import logging
import os
import random
import socket
from pathlib import Path

from deployments.local_socket import peer_uid, receive_frame, service_sockets
from vocabulary.errors import InferenceTimeout, LisError
from vocabulary.wire import (
    MAX_ANSWER_BYTES,
    Busy,
    InferenceResult,
    LocalRequest,
    Refused,
    decode_answer,
    encode_request,
)

__all__ = ["LocalCaller", "LocalUnreachable"]

log = logging.getLogger("ray.serve.lis")


class LocalUnreachable(Exception):
    """No replica on this node took the request; nothing was started."""


class LocalCaller:
    """Calls ``service``'s replicas on node ``node_id`` over their sockets, one request at a time."""

    def __init__(self, service: str, node_id: str, timeout_s: float) -> None:
        self.service = service
        self.node_id = node_id
        self.timeout_s = timeout_s
        self.answered = 0  # requests a replica answered over its socket
        self._connections: dict[Path, socket.socket] = {}

    def call(self, body: bytes, content_type: str | None,
             algo_type: str | None = None) -> InferenceResult:
        """The replica's answer; its error raised; ``LocalUnreachable`` when none took it."""
        paths = service_sockets(self.node_id, self.service)
        if not paths:
            raise LocalUnreachable(f"no replica of {self.service} listens on this node")
        random.shuffle(paths)  # spread a node's pipelines over its replicas
        request = LocalRequest(self.service, content_type, algo_type, self.timeout_s, body)
        reasons = []
        for path in paths:
            answer = self._ask(path, request)
            if isinstance(answer, InferenceResult):
                self.answered += 1
                return answer
            if isinstance(answer, LisError):
                raise answer
            reasons.append(answer)
        raise LocalUnreachable("; ".join(str(reason) for reason in reasons))

    def close(self) -> None:
        for path in list(self._connections):
            self._drop(path)

    def _ask(self, path: Path, request: LocalRequest) -> InferenceResult | LisError | str:
        """The answer of the replica at ``path``, or why it did not take the request."""
        for attempt in (1, 2):  # a kept connection the replica closed: once more, anew
            kept = path in self._connections
            try:
                connection = self._connections.get(path) or self._connect(path)
            except OSError as error:
                return f"{path.name}: {error}"
            if connection is None:
                return f"{path.name}: not this user's socket"
            try:
                connection.sendall(encode_request(request))
                frame = receive_frame(connection, MAX_ANSWER_BYTES)
            except TimeoutError:
                self._drop(path)  # its late answer must not be read as the next one's
                raise InferenceTimeout(self.service, self.timeout_s) from None
            except OSError as error:
                self._drop(path)
                if kept and attempt == 1:
                    continue
                return f"{path.name}: {error}"
            if frame is None:
                self._drop(path)
                if kept and attempt == 1:
                    continue
                return f"{path.name}: closed the connection"
            answer = decode_answer(*frame)
            if isinstance(answer, (Busy, Refused)):
                return f"{path.name}: {answer.reason}"
            return answer
        return f"{path.name}: closed the connection"

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
        self._connections[path] = connection
        return connection

    def _drop(self, path: Path) -> None:
        connection = self._connections.pop(path, None)
        if connection is not None:
            connection.close()
