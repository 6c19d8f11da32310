"""The local path: a caller reaches a replica on its own node over a Unix socket.

Ray Serve's handle call costs the 2-core reference box about 3.5 ms of CPU per
request between the ingress and a replica (routing thread, gRPC, Ray's request
bookkeeping on both sides), as much as a small model's whole run. Over a Unix
socket the same hop costs about 0.5 ms. Ray Serve still runs everything else:
it places, starts, health-checks, replaces and autoscales the replicas; only a
request's bytes take the short road (see ``serve_app._local`` for the callers'
side, the ingress's and the in-cluster client's, and docs/architecture.md).

Each replica listens on ``<root>/<node>/<service key>-<replica id>.sock``. The
root is ``lis-v<wire version>`` in the runtime directory systemd gives the
service (``$RUNTIME_DIRECTORY``, else ``$XDG_RUNTIME_DIR``), or
``$TMPDIR/lis-<uid>-v<wire version>``. Its name is predictable, so it is
trusted only as a server trusts its own socket folder (tmux, ssh-agent): the
root and the node's folder are created 0700, and each is refused
(``unsafe_folder``) unless it is a real folder (not a symlink), owned by this
user, with no group or other permission bits. Both ends then check the other
process (``SO_PEERCRED``): a peer of another uid is dropped unread. What a
killed node left there is swept when a replica starts.

Messages are frames of the fixed format of ``vocabulary.wire`` (a JSON header
and raw bytes, bounded, never a pickle). The replica serves its socket with
plain blocking threads (``_send``/``_receive``); its callers, on an event
loop, with asyncio streams (``write_request``/``read_answer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vocabulary.errors import (
    InferenceFailed,
    InvalidArgument,
    LisError,
    ServiceUnavailable,
)
from vocabulary.limits import DEFAULT_MAX_REQUEST_BYTES
from vocabulary.wire import (
    FRAME_PREFIX,
    MAX_ANSWER_BYTES,
    WIRE_VERSION,
    Answer,
    Busy,
    Frame,
    InferenceResult,
    LocalRequest,
    Refused,
    decode_answer,
    decode_request,
    encode_answer,
    encode_request,
    frame_sizes,
)

__all__ = [
    "LOCAL_ONGOING_METRIC",
    "REFUSED",
    "STALE_AFTER_S",
    "Handler",
    "LocalServer",
    "checked_folder",
    "current_node_id",
    "peer_uid",
    "read_answer",
    "receive_answer_frame",
    "receive_frame",
    "send_frame",
    "service_sockets",
    "socket_path",
    "sockets_root",
    "sweep_stale_sockets",
    "unsafe_folder",
    "write_request",
]

log = logging.getLogger("ray.serve.lis")

REFUSED = Refused("the replica is stopping")
# A socket nobody listens on is left by a replica that was killed; one younger
# than this may belong to a replica between bind() and listen().
STALE_AFTER_S = 60.0
# The custom autoscaling metric: requests a replica is answering over its socket.
LOCAL_ONGOING_METRIC = "lis_local_ongoing_requests"
# A caller's first read of an answer: a connector's answer is a few hundred bytes to a
# few kilobytes, so its whole frame as a rule.
_ANSWER_FIRST_READ = 64 * 1024
# struct ucred: pid, uid, gid.
_PEER_CREDENTIALS = struct.Struct("3i")
# systemd's RuntimeDirectory= for the service, then the user's runtime directory.
_RUNTIME_DIRECTORIES = ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR")

Handler = Callable[[bytes, "str | None", "str | None"], Any]


def current_node_id() -> str:
    """This process's Ray node: the sockets of a node are found by its id."""
    import ray

    return ray.get_runtime_context().get_node_id()


def sockets_root() -> Path:
    """The folder of every node's socket folder (see the module docstring)."""
    for variable in _RUNTIME_DIRECTORIES:
        runtime = os.environ.get(variable, "").split(":")[0]  # systemd may list several
        if runtime:
            return Path(runtime) / f"lis-v{WIRE_VERSION}"
    return Path(tempfile.gettempdir()) / f"lis-{os.getuid()}-v{WIRE_VERSION}"


def _socket_dir(node_id: str) -> Path:
    # Short on purpose: a socket path must fit in 108 bytes.
    return sockets_root() / node_id[:16]


def unsafe_folder(folder: Path, problem: str) -> LisError:
    """The error for a socket folder that is refused, saying why and what to do."""
    return LisError(f"refusing the local socket folder {folder}: it {problem}; it must be "
                    f"a folder of uid {os.getuid()} with mode 0700 (remove it, and lis "
                    f"makes it so)")


def checked_folder(folder: Path, *, create: bool) -> bool:
    """Whether ``folder`` is there, made 0700 if ``create``; raises ``unsafe_folder`` if refused."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
    try:
        info = os.lstat(folder)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(info.st_mode):
        kind = "a symlink" if stat.S_ISLNK(info.st_mode) else "not a folder"
        raise unsafe_folder(folder, f"is {kind}")
    if info.st_uid != os.getuid():
        raise unsafe_folder(folder, f"is owned by uid {info.st_uid}")
    if info.st_mode & 0o077:
        raise unsafe_folder(folder, f"has mode {stat.S_IMODE(info.st_mode):04o}, "
                                    f"open to group or others")
    return True


def _checked_node_dir(folder: Path, *, create: bool) -> bool:
    """Whether the node's folder and its root are there, and trusted (see ``checked_folder``)."""
    return checked_folder(folder.parent, create=create) and checked_folder(folder, create=create)


def peer_uid(connection: Any) -> int:
    """The uid of the process at the other end of a Unix socket (``SO_PEERCRED``)."""
    data = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEER_CREDENTIALS.size)
    return _PEER_CREDENTIALS.unpack(data)[1]


def sweep_stale_sockets(root: Path | None = None, stale_after_s: float = STALE_AFTER_S) -> int:
    """Remove sockets that nobody listens on and folders they leave empty; how many sockets.

    A replica removes its socket when it stops, but one killed with its node
    (``kill -9``, a crash, a power cut) leaves it, and a new Ray node has a new
    id and folder: without a sweep, folders pile up under ``$TMPDIR`` for as
    long as the box runs. Each replica sweeps when it starts. Only sockets and
    folders older than ``stale_after_s`` are touched, so a replica that is
    starting beside this one keeps what it just made. A root that is not
    trusted (``checked_folder``) is not touched.
    """
    root = sockets_root() if root is None else root
    if not checked_folder(root, create=False):
        return 0
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
            with contextlib.suppress(OSError):  # not empty: a live node's
                folder.rmdir()
    return removed


def _entries(folder: Path) -> list[Path]:
    if folder.is_symlink():
        return []  # nothing of ours: a sweep follows no link
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
    """The sockets of ``service``'s replicas on this node, live or left by a dead one.

    None when the folder is refused (logged once per folder and reason).
    """
    folder = _socket_dir(node_id)
    try:
        if not _checked_node_dir(folder, create=False):
            return []
        return sorted(folder.glob(f"{_service_key(service)}-*.sock"))
    except LisError as refused:
        _warn_once(refused.message)
        return []
    except OSError:
        return []


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("%s: requests go through Ray Serve", message)


def write_request(writer: asyncio.StreamWriter, request: LocalRequest) -> None:
    writer.writelines(encode_request(request))


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """One answer frame; ``InvalidArgument``/``PayloadTooLarge`` if it is not one."""
    header_size, body_size = frame_sizes(await reader.readexactly(FRAME_PREFIX.size),
                                         MAX_ANSWER_BYTES)
    header = await reader.readexactly(header_size)
    return decode_answer(header, await reader.readexactly(body_size))


class LocalServer:
    """A replica's socket, served by plain threads: one per caller connection.

    No event loop on this path: each connection's thread reads a request,
    calls ``handler`` (the replica's synchronous ``answer_local``) and writes
    the answer, as the raw pipeline's own threads would.

    Any process of lis's user on the node may call (the ingress, a user's
    driver or deployment through the client), and each counts only its own
    requests: so the replica keeps Ray Serve's per-replica limit itself. With
    ``max_ongoing`` requests under way and within their timeout, the next is
    answered ``Busy`` at once, unstarted: its caller tries another replica or
    waits for a slot. A request its caller gave up on (its timeout) frees its
    caller's slot, but its thread cannot be stopped and runs on: with a model
    that hangs, one more thread would stay for each timeout. So at most
    ``max_running`` requests run here at once, late ones included; past that,
    a request is answered ``ServiceUnavailable`` (503) at once.
    A connection from another uid is closed unread; a malformed frame is
    answered with its error and the connection closed (the stream is out of step).
    """

    def __init__(self, path: Path, handler: Handler, service: str, max_running: int,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 max_ongoing: int | None = None) -> None:
        self.path = path
        self.service = service
        self.max_running = max_running
        self.max_ongoing = max_running if max_ongoing is None else max_ongoing
        self.max_request_bytes = max_request_bytes
        self._handler = handler
        self._listener: socket.socket | None = None
        self._stopping = False
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        # When each request now running here stops holding its caller's slot.
        self._deadlines: dict[int, float] = {}
        self.ongoing = 0  # running here now, late ones included
        self.answered = 0
        self.busy = 0  # requests answered Busy
        self.most_ongoing = 0  # the most requests running here at once within their timeout

    def start(self) -> None:
        """Listen; an ``OSError``, or a ``LisError`` for a refused folder, if it cannot."""
        checked_folder(self.path.parent.parent, create=True)
        try:
            sweep_stale_sockets()
        except (OSError, LisError):  # tidying up must never keep a replica from starting
            log.warning("could not sweep stale local sockets", exc_info=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._bind(listener)
        except BaseException:
            listener.close()
            raise
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, name=f"{self.service}-local", daemon=True).start()

    def _bind(self, listener: socket.socket) -> None:
        for last_try in (False, True):
            _checked_node_dir(self.path.parent, create=True)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # a replica id is never reused; this is a stale leftover
            try:
                listener.bind(str(self.path))
                break
            except FileNotFoundError:
                # Another replica's sweep removed the folder, old and empty, in between.
                if last_try:
                    raise
        os.chmod(self.path, 0o600)

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
                if not self._trusted(connection):
                    return
                while True:
                    try:
                        request = _receive(connection, self.max_request_bytes)
                    except LisError as malformed:
                        _send(connection, malformed)
                        return
                    if request is None:
                        return  # the ingress closed the connection
                    if self._stopping:
                        _send(connection, REFUSED)
                        return
                    _send(connection, self._answer(request))
            except OSError:
                pass  # the ingress gave up on the request (its own timeout) and closed

    def _trusted(self, connection: socket.socket) -> bool:
        uid = peer_uid(connection)
        if uid != os.getuid():
            log.warning("%s: refused a local connection from uid %d (this replica runs as %d)",
                        self.service, uid, os.getuid())
        return uid == os.getuid()

    def _answer(self, request: LocalRequest) -> Answer:
        if request.service != self.service:
            return InvalidArgument("service", request.service, f"{self.service!r}, this "
                                   f"socket's service")
        key = threading.get_ident()
        with self._lock:
            refusal = self._refusal()
            if refusal is not None:
                return refusal
            now = time.monotonic()
            self._deadlines[key] = now + request.timeout_s
            self.ongoing += 1
            self.most_ongoing = max(self.most_ongoing, self._on_time(now))
            self._idle.clear()
        try:
            return self._result(request)
        finally:
            with self._lock:
                del self._deadlines[key]
                self.ongoing -= 1
                self.answered += 1
                if not self.ongoing:
                    self._idle.set()

    def _refusal(self) -> Answer | None:
        """Why a new request is not started now (under ``_lock``); None if it is."""
        if self.ongoing >= self.max_running:
            return ServiceUnavailable(
                self.service, f"its replica is still running {self.ongoing} requests, "
                              f"the most it takes; those past their timeout run on")
        if self._on_time(time.monotonic()) >= self.max_ongoing:
            self.busy += 1
            return Busy(f"the replica is running {self.max_ongoing} requests, the most it "
                        f"takes at once")
        return None

    def _on_time(self, now: float) -> int:
        # Past its timeout a request no longer holds its caller's slot (the
        # caller gave up): only the others count against ``max_ongoing``.
        return sum(deadline > now for deadline in self._deadlines.values())

    def _result(self, request: LocalRequest) -> Answer:
        try:
            result = self._handler(request.body, request.content_type, request.algo_type)
        except LisError as error:
            return error
        except Exception as error:  # noqa: BLE001 - logged by the handler; answer the caller
            return InferenceFailed(self.service, f"{type(error).__name__}: {error}")
        if not isinstance(result, InferenceResult):
            return InferenceFailed(self.service, f"its answer is a {type(result).__name__}, "
                                                 f"not an InferenceResult")
        return result


def _receive_exactly(connection: socket.socket, size: int) -> bytes | None:
    """``size`` bytes; ``None`` if the other side closed before the first."""
    if size == 0:
        return b""
    chunk = connection.recv(size)  # as a rule all of it: one copy, nothing to join
    if len(chunk) == size or not chunk:
        return chunk or None
    data = bytearray(chunk)
    while len(data) < size:
        chunk = connection.recv(min(size - len(data), 1 << 20))
        if not chunk:
            raise ConnectionResetError("the connection closed mid-frame")
        data += chunk
    return bytes(data)


def receive_frame(connection: socket.socket, max_body_bytes: int) -> tuple[bytes, bytes] | None:
    """One frame's (header, body) from a blocking socket; ``None`` when the other side closed.

    Exactly the frame's bytes are read: a caller may send its next request at once.
    """
    prefix = _receive_exactly(connection, FRAME_PREFIX.size)
    if prefix is None:
        return None
    header_size, body_size = frame_sizes(prefix, max_body_bytes)
    return _more(connection, header_size), _more(connection, body_size)


def receive_answer_frame(connection: socket.socket, max_body_bytes: int
                         ) -> tuple[bytes, bytes] | None:
    """``receive_frame`` for a caller waiting on its answer: prefix, header and body in
    one read as a rule (a socket with a timeout polls before each read).

    A replica sends one answer per request and nothing unasked, so bytes past
    the frame are a malformed answer (``InvalidArgument``).
    """
    data = connection.recv(_ANSWER_FIRST_READ)
    if not data:
        return None
    while len(data) < FRAME_PREFIX.size:
        data += _more(connection, FRAME_PREFIX.size - len(data))
    header_size, body_size = frame_sizes(data[:FRAME_PREFIX.size], max_body_bytes)
    end = FRAME_PREFIX.size + header_size
    size = end + body_size
    if len(data) > size:
        raise InvalidArgument("answer frame", f"{len(data) - size} bytes past its end",
                              "one frame per request")
    if len(data) < size:
        data += _more(connection, size - len(data))
    return data[FRAME_PREFIX.size:end], data[end:]


def _more(connection: socket.socket, size: int) -> bytes:
    """The next ``size`` bytes of a frame already begun."""
    rest = _receive_exactly(connection, size)
    if rest is None:
        raise ConnectionResetError("the connection closed mid-frame")
    return rest


def send_frame(connection: socket.socket, frame: Frame) -> None:
    """Both buffers of ``frame`` in one call, the body not copied."""
    sent = connection.sendmsg(frame)
    if sent < len(frame[0]) + len(frame[1]):  # a full socket buffer: the rest as it drains
        connection.sendall(memoryview(b"".join(frame))[sent:])


def _receive(connection: socket.socket, max_body_bytes: int) -> LocalRequest | None:
    """One request from a blocking socket; ``None`` when the other side closed."""
    frame = receive_frame(connection, max_body_bytes)
    return None if frame is None else decode_request(*frame)


def _send(connection: socket.socket, answer: Answer) -> None:
    send_frame(connection, encode_answer(answer))
