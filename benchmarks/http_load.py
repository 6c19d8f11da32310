"""The bench's HTTP load: keep-alive POSTs over N connections, driven by one thread.

The load runs on the two cores it measures, so what it costs is taken from
what it measures. ``http.client`` on four threads took about 0.4 ms of CPU per
request on the 2-core reference box, a lean client on four threads 0.23-0.31
ms (the threads hand the GIL to each other on every answer); one thread
waiting on all connections at once (epoll) 0.17 ms, most of it the kernel
moving a 95 KB camera frame through loopback TCP. The request is prepared
once; an answer is read by its Content-Length (lis and uvicorn always send
one) and must be a 200.
"""

from __future__ import annotations

import re
import selectors
import socket
import time
from dataclasses import dataclass, field

__all__ = ["HttpLoad"]

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)
_READ_BYTES = 1 << 16
# Large enough for a whole request: a send never waits for the server to read.
_SEND_BUFFER_BYTES = 4 << 20


@dataclass(eq=False)
class _Connection:
    socket: socket.socket
    received: bytes = b""
    sent_at: float = field(default=0.0)


class HttpLoad:
    """The same POST to ``port`` + ``path``, again and again, over keep-alive connections."""

    def __init__(self, port: int, path: str, body: bytes, content_type: str,
                 headers: dict[str, str] | None = None) -> None:
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}\r\n")
        self.port = port
        self._request = head.encode() + body
        self._connections: list[_Connection] = []
        self._selector = selectors.DefaultSelector()

    def __call__(self, concurrency: int, requests: int, warmup: int = 0
                 ) -> tuple[list[float], float]:
        """Latencies (s) of ``requests`` POSTs, ``concurrency`` at a time, and the wall time."""
        if warmup:
            self(concurrency, warmup)
        self._drop_closed()
        connections = self._open(min(concurrency, requests))
        latencies: list[float] = []
        started = time.perf_counter()
        sent = 0
        for connection in connections:
            self._send(connection)
            sent += 1
        while len(latencies) < requests:
            for key, _ in self._selector.select():
                connection = key.data
                if connection not in connections:  # idle: the server closed it
                    self._drop(connection)
                    continue
                if not self._answered(connection):
                    continue
                now = time.perf_counter()
                latencies.append(now - connection.sent_at)
                if sent < requests:
                    self._send(connection, now)
                    sent += 1
        return latencies, time.perf_counter() - started

    def call(self) -> None:
        """One POST, on the first connection."""
        self(1, 1)

    def close(self) -> None:
        for connection in list(self._connections):
            self._drop(connection)

    def _drop_closed(self) -> None:
        # Between runs nothing is due: an idle connection that reads is one
        # the server closed (uvicorn's keep-alive timeout).
        for key, _ in self._selector.select(0):
            self._drop(key.data)

    def _drop(self, connection: _Connection) -> None:
        self._selector.unregister(connection.socket)
        connection.socket.close()
        self._connections.remove(connection)

    def _open(self, count: int) -> list[_Connection]:
        while len(self._connections) < count:
            sock = socket.create_connection(("127.0.0.1", self.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER_BYTES)
            connection = _Connection(sock)
            self._selector.register(sock, selectors.EVENT_READ, connection)
            self._connections.append(connection)
        return self._connections[:count]

    def _send(self, connection: _Connection, now: float | None = None) -> None:
        connection.sent_at = time.perf_counter() if now is None else now
        connection.socket.sendall(self._request)

    def _answered(self, connection: _Connection) -> bool:
        """Reads what arrived; True once a whole answer is in (checked, then dropped)."""
        chunk = connection.socket.recv(_READ_BYTES)
        if not chunk:
            raise ConnectionError(f"the server on port {self.port} closed the connection")
        data = connection.received + chunk
        end = data.find(b"\r\n\r\n")
        match = _CONTENT_LENGTH.search(data, 0, end) if end >= 0 else None
        if match is None:
            if end >= 0:
                raise RuntimeError(f"an answer without Content-Length: {data[:200]!r}")
            connection.received = data
            return False
        complete = end + 4 + int(match.group(1))
        if len(data) < complete:
            connection.received = data
            return False
        if data[9:12] != b"200":
            raise RuntimeError(f"HTTP {data[9:12].decode()}: {data[end + 4:complete][:200]!r}")
        connection.received = data[complete:]
        return True
