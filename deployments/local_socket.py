"""The local path: the ingress reaches a replica on its own node over a Unix socket.

Ray Serve's handle call costs the 2-core reference box about 3.5 ms of CPU per
request between the ingress and a replica (routing thread, gRPC, Ray's request
bookkeeping on both sides), as much as a small model's whole run. Over a Unix
socket the same hop costs about 0.5 ms. Ray Serve still runs everything else:
it places, starts, health-checks, replaces and autoscales the replicas; only a
request's bytes take the short road (see ``serve_app._local`` for the ingress's
side and the README's *Architecture*).

Each replica listens on ``<socket dir>/<service key>-<replica id>.sock``; the
directory is per Ray node, readable by this user only. The wire format is one
frame per message: a 4-byte big-endian length, then a pickle. A request is
``(body, content_type, algo_type)``; an answer is the ``InferenceResult``, the
``LisError``, or ``REFUSED`` when the replica is stopping and has not started
the request (the ingress then sends it through Ray Serve instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import pickle
import struct
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from serve_app.errors import InferenceFailed, LisError

__all__ = ["LOCAL_ONGOING_METRIC", "REFUSED", "LocalServer", "current_node_id", "read_frame",
           "service_sockets", "socket_path", "write_frame"]

log = logging.getLogger("ray.serve.lis")

REFUSED = "refused: the replica is stopping"
# The custom autoscaling metric: requests a replica is answering over its socket.
LOCAL_ONGOING_METRIC = "lis_local_ongoing_requests"
_LENGTH = struct.Struct("!I")

Handler = Callable[[bytes, "str | None", "str | None"], Awaitable[Any]]


def current_node_id() -> str:
    """This process's Ray node: the sockets of a node are found by its id."""
    import ray

    return ray.get_runtime_context().get_node_id()


def _socket_dir(node_id: str) -> Path:
    # Short on purpose: a socket path must fit in 108 bytes.
    return Path(tempfile.gettempdir()) / f"lis-{os.getuid()}" / node_id[:16]


def _service_key(service: str) -> str:
    return hashlib.sha256(service.encode()).hexdigest()[:12]


def socket_path(node_id: str, service: str, replica_id: str) -> Path:
    return _socket_dir(node_id) / f"{_service_key(service)}-{replica_id}.sock"


def service_sockets(node_id: str, service: str) -> list[Path]:
    """The sockets of ``service``'s replicas on this node, live or left by a dead one."""
    folder = _socket_dir(node_id)
    try:
        return sorted(folder.glob(f"{_service_key(service)}-*.sock"))
    except OSError:
        return []


async def read_frame(reader: asyncio.StreamReader) -> Any:
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    return pickle.loads(await reader.readexactly(length))


def write_frame(writer: asyncio.StreamWriter, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_LENGTH.pack(len(data)) + data)


class LocalServer:
    """A replica's socket: each request goes to ``handler``, the replica's ``infer``."""

    def __init__(self, path: Path, handler: Handler, service: str) -> None:
        self.path = path
        self.service = service
        self._handler = handler
        self._server: asyncio.AbstractServer | None = None
        self._stopping = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.ongoing = 0
        self.answered = 0

    async def start(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a replica id is never reused; this is a stale leftover
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        os.chmod(self.path, 0o600)

    async def stop(self, timeout_s: float) -> None:
        """Take no new request, then wait up to ``timeout_s`` for those under way."""
        self._stopping = True
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with contextlib.suppress(OSError):  # the node's last replica: leave no folder behind
            self.path.parent.rmdir()
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    request = await read_frame(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the ingress closed the connection
                if self._stopping:
                    write_frame(writer, REFUSED)
                    await writer.drain()
                    return
                write_frame(writer, await self._answer(*request))
                await writer.drain()
        except ConnectionError:
            pass  # the ingress gave up on the request (its own timeout) and closed
        finally:
            writer.close()

    async def _answer(self, body: bytes, content_type: str | None,
                      algo_type: str | None) -> Any:
        self.ongoing += 1
        self._idle.clear()
        try:
            return await self._handler(body, content_type, algo_type)
        except LisError as error:
            return error
        except Exception as error:  # noqa: BLE001 - logged by the handler; answer the caller
            return InferenceFailed(self.service, f"{type(error).__name__}: {error}")
        finally:
            self.ongoing -= 1
            self.answered += 1
            if not self.ongoing:
                self._idle.set()
