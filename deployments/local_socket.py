"""The local path: the ingress reaches a replica on its own node over a Unix socket.

Ray Serve's handle call costs the 2-core reference box about 3.5 ms of CPU per
request between the ingress and a replica (routing thread, gRPC, Ray's request
bookkeeping on both sides), as much as a small model's whole run. Over a Unix
socket the same hop costs about 0.5 ms. Ray Serve still runs everything else:
it places, starts, health-checks, replaces and autoscales the replicas; only a
request's bytes take the short road (see ``serve_app._local`` for the ingress's
side and docs/architecture.md).

Each replica listens on ``<socket dir>/<service key>-<replica id>.sock``; the
directory is per Ray node, readable by this user only; what a killed node
left there is swept when a replica starts. The wire format is one
frame per message: a 4-byte big-endian length, then a pickle. A request is
``(body, content_type, algo_type)``; an answer is the ``InferenceResult``, the
``LisError``, or ``REFUSED`` when the replica is stopping and has not started
the request (the ingress then sends it through Ray Serve instead). The replica
serves its socket with plain blocking threads (``_send``/``_receive``); the
ingress, on its event loop, with asyncio streams (``write_frame``/``read_frame``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import pickle
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vocabulary.errors import InferenceFailed, LisError, ServiceUnavailable

__all__ = [
    "LOCAL_ONGOING_METRIC",
    "REFUSED",
    "STALE_AFTER_S",
    "Handler",
    "LocalServer",
    "current_node_id",
    "read_frame",
    "service_sockets",
    "socket_path",
    "sweep_stale_sockets",
    "write_frame",
]

log = logging.getLogger("ray.serve.lis")

REFUSED = "refused: the replica is stopping"
# A socket nobody listens on is left by a replica that was killed; one younger
# than this may belong to a replica between bind() and listen().
STALE_AFTER_S = 60.0
# The custom autoscaling metric: requests a replica is answering over its socket.
LOCAL_ONGOING_METRIC = "lis_local_ongoing_requests"
_LENGTH = struct.Struct("!I")

Handler = Callable[[bytes, "str | None", "str | None"], Any]


def current_node_id() -> str:
    """This process's Ray node: the sockets of a node are found by its id."""
    import ray

    return ray.get_runtime_context().get_node_id()


def _sockets_root() -> Path:
    return Path(tempfile.gettempdir()) / f"lis-{os.getuid()}"


def _socket_dir(node_id: str) -> Path:
    # Short on purpose: a socket path must fit in 108 bytes.
    return _sockets_root() / node_id[:16]


def sweep_stale_sockets(root: Path | None = None, stale_after_s: float = STALE_AFTER_S) -> int:
    """Remove sockets that nobody listens on and folders they leave empty; how many sockets.

    A replica removes its socket when it stops, but one killed with its node
    (``kill -9``, a crash, a power cut) leaves it, and a new Ray node has a new
    id and folder: without a sweep, folders pile up under ``$TMPDIR`` for as
    long as the box runs. Each replica sweeps when it starts. Only sockets and
    folders older than ``stale_after_s`` are touched, so a replica that is
    starting beside this one keeps what it just made.
    """
    root = _sockets_root() if root is None else root
    old = time.time() - stale_after_s
    removed = 0
    for folder in _entries(root):
        folder_was_old = _mtime(folder) < old  # before removals touch it
        for path in _entries(folder):
            if path.suffix == ".sock" and _mtime(path) < old and not _listening(path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        if folder_was_old:
            with contextlib.suppress(OSError):  # not empty: a live node's, or someone else's
                folder.rmdir()
    return removed


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:  # gone, or not a folder
        return []


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except FileNotFoundError:
        return float("inf")  # gone already: nothing to do


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:
            return True  # not ours to judge (a full backlog, permissions): keep it
        return True


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
    writer.write(_frame(message))


def _frame(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


class LocalServer:
    """A replica's socket, served by plain threads: one per ingress connection.

    No event loop on this path: each connection's thread reads a request,
    calls ``handler`` (the replica's synchronous ``answer_local``) and writes
    the answer, as the raw pipeline's own threads would. The ingress holds at
    most ``max_ongoing_requests`` connections to a replica, so in normal use
    that is also the most threads this runs. A request the ingress gave up on
    (its timeout) closes its connection, but its thread cannot be stopped and
    runs on: with a model that hangs, one more thread and request would stay
    for each timeout. So at most ``max_ongoing`` requests run here at once;
    past that, a request is answered ``ServiceUnavailable`` (503) at once.
    """

    def __init__(self, path: Path, handler: Handler, service: str, max_ongoing: int) -> None:
        self.path = path
        self.service = service
        self.max_ongoing = max_ongoing
        self._handler = handler
        self._listener: socket.socket | None = None
        self._stopping = False
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self.ongoing = 0
        self.answered = 0

    def start(self) -> None:
        try:
            sweep_stale_sockets()
        except OSError:  # tidying up must never keep a replica from starting
            log.warning("could not sweep stale local sockets", exc_info=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        for last_try in (False, True):
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # a replica id is never reused; this is a stale leftover
            try:
                listener.bind(str(self.path))
                break
            except FileNotFoundError:
                # Another replica's sweep removed the folder, old and empty, in between.
                if last_try:
                    listener.close()
                    raise
        os.chmod(self.path, 0o600)
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, name=f"{self.service}-local", daemon=True).start()

    def stop(self, timeout_s: float) -> None:
        """Take no new request, then wait up to ``timeout_s`` for those under way."""
        self._stopping = True
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with contextlib.suppress(OSError):  # the node's last replica: leave no folder behind
            self.path.parent.rmdir()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
            self._listener.close()
        self._idle.wait(timeout_s)

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return  # closed by ``stop``
            threading.Thread(target=self._serve, args=(connection,),
                             name=f"{self.service}-conn", daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            try:
                while True:
                    request = _receive(connection)
                    if request is None:
                        return  # the ingress closed the connection
                    if self._stopping:
                        _send(connection, REFUSED)
                        return
                    _send(connection, self._answer(*request))
            except OSError:
                pass  # the ingress gave up on the request (its own timeout) and closed

    def _answer(self, body: bytes, content_type: str | None, algo_type: str | None) -> Any:
        with self._lock:
            if self.ongoing >= self.max_ongoing:
                return ServiceUnavailable(
                    self.service, f"its replica is still running {self.ongoing} requests, "
                                  f"the most it takes; those past their timeout run on")
            self.ongoing += 1
            self._idle.clear()
        try:
            return self._handler(body, content_type, algo_type)
        except LisError as error:
            return error
        except Exception as error:  # noqa: BLE001 - logged by the handler; answer the caller
            return InferenceFailed(self.service, f"{type(error).__name__}: {error}")
        finally:
            with self._lock:
                self.ongoing -= 1
                self.answered += 1
                if not self.ongoing:
                    self._idle.set()


def _receive_exactly(connection: socket.socket, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = connection.recv(min(size - len(data), 1 << 20))
        if not chunk:
            if data:
                raise ConnectionResetError("the connection closed mid-frame")
            return None
        data += chunk
    return bytes(data)


def _receive(connection: socket.socket) -> Any:
    """One frame from a blocking socket; ``None`` when the other side closed."""
    header = _receive_exactly(connection, _LENGTH.size)
    if header is None:
        return None
    (length,) = _LENGTH.unpack(header)
    data = _receive_exactly(connection, length)
    if data is None:
        raise ConnectionResetError("the connection closed mid-frame")
    return pickle.loads(data)


def _send(connection: socket.socket, message: Any) -> None:
    connection.sendall(_frame(message))
