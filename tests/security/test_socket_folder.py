"""Door 1 of issue #17: the replicas' socket folder, and who may talk on its sockets.

Another local user could take over ``$TMPDIR/lis-<uid>`` (a predictable name,
created with default permissions, accepted as found) and plant sockets the
ingress connected to. Here the folder is pre-created as an attacker would
leave it, and processes of another uid (65534, forked from this root test
process) connect to a replica and serve the ingress.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import shutil
import signal
import socket
import stat
import struct
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deployments.local_socket import LocalServer, socket_path
from serve_app._local import LocalLimits, LocalRoute, LocalUnavailable
from vocabulary.errors import LisError
from vocabulary.wire import InferenceResult

SERVICE = "svc"
NODE = "node1"
NOBODY = 65534
WAIT_S = 10

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="plays another user: needs root")


@pytest.fixture
def short_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This test's own ``$TMPDIR``, short (a socket path fits in 108 bytes), open to search."""
    folder = Path(tempfile.mkdtemp(prefix="lis", dir="/tmp"))
    folder.chmod(0o755)  # so that the other user can reach what a test opens to it
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _echo(body: bytes, content_type: str | None, algo_type: str | None) -> InferenceResult:
    return InferenceResult(body.decode(), "text/plain")


def _route() -> LocalRoute:
    return LocalRoute(SERVICE, NODE, LocalLimits(max_ongoing=5, max_queued=-1))


def _found() -> LocalRoute:
    """A route that found the replica's socket."""
    route = _route()
    assert route.covers(0)
    return route


def _plant(root: Path, how: str, elsewhere: Path) -> Path:
    """The root as another user left it; the folder sockets would land in."""
    if how == "open to everyone":
        root.mkdir()
        root.chmod(0o777)
        return root
    if how == "owned by another user":
        root.mkdir(mode=0o700)
        os.chown(root, NOBODY, NOBODY)
        return root
    elsewhere.mkdir(mode=0o700)  # "a symlink": to a folder the attacker chose
    root.symlink_to(elsewhere)
    return elsewhere


PLANTED = {"open to everyone": "has mode 0777, open to group or others",
           "owned by another user": f"is owned by uid {NOBODY}",
           "a symlink": "is a symlink"}


@pytest.mark.parametrize("how", sorted(PLANTED))
def test_a_root_folder_not_ours_alone_is_refused_and_gets_no_socket(
        how: str, short_tmp: Path) -> None:
    """Before: ``start`` took the folder as found and bound its socket in it (no error)."""
    path = socket_path(NODE, SERVICE, "r1")
    root = path.parent.parent
    landing = _plant(root, how, short_tmp / "elsewhere")
    server = LocalServer(path, _echo, SERVICE, 10)
    try:
        with pytest.raises(LisError) as refused:
            server.start()
        assert str(root) in refused.value.message
        assert PLANTED[how] in refused.value.message
        assert "mode 0700" in refused.value.message  # and says what is expected
        assert [p for p in landing.rglob("*") if p.is_socket()] == []
    finally:
        server.stop(0)


@pytest.mark.parametrize("how", sorted(PLANTED))
def test_the_ingress_connects_to_no_socket_in_a_refused_folder(how: str, short_tmp: Path) -> None:
    """Before: the ingress listed ``<key>-*.sock`` in the folder as found and connected to it."""
    path = socket_path(NODE, SERVICE, "planted")
    landing = _plant(path.parent.parent, how, short_tmp / "elsewhere")
    (landing / NODE).mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX) as planted:  # the attacker's replica
        planted.bind(str(landing / NODE / path.name))
        planted.listen()
        route = _route()
        assert not route.covers(0)
        with pytest.raises(LocalUnavailable):
            asyncio.run(route.call(b"frame", None, None, 5))


def test_a_new_root_and_node_folder_are_made_0700(short_tmp: Path) -> None:
    """Before: the root was made by ``mkdir(parents=True)`` with the default mode (0755)."""
    server = LocalServer(socket_path(NODE, SERVICE, "r1"), _echo, SERVICE, 10)
    server.start()
    try:
        for folder in (server.path.parent.parent, server.path.parent):
            assert stat.S_IMODE(folder.lstat().st_mode) == 0o700, folder
        answer = asyncio.run(_found().call(b"frame", None, None, 5))
        assert answer.body == "frame"
    finally:
        server.stop(1)


def test_the_runtime_directory_systemd_gives_holds_the_sockets(
        short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: ``$RUNTIME_DIRECTORY`` was ignored; the sockets went under ``$TMPDIR``."""
    runtime = short_tmp / "run"
    runtime.mkdir(mode=0o755)  # as systemd makes it (RuntimeDirectoryMode=0755)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(runtime))
    server = LocalServer(socket_path(NODE, SERVICE, "r1"), _echo, SERVICE, 10)
    server.start()
    try:
        assert server.path.is_relative_to(runtime)
        assert stat.S_IMODE(server.path.parent.parent.lstat().st_mode) == 0o700
        assert asyncio.run(_found().call(b"frame", None, None, 5)).body == "frame"
    finally:
        server.stop(1)


# --- the other end of a socket, as another user -------------------------------------


def _in_child_as_nobody(work: Callable[[int], None]) -> tuple[int, int]:
    """Fork; the child becomes uid 65534 and runs ``work(fd)`` (``fd`` writes to the parent).

    Returns (pid, the parent's end of the pipe). The child exits however ``work`` ends,
    and within ``WAIT_S`` at the latest.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_end)
            signal.alarm(WAIT_S)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            work(write_end)
        except BaseException as error:  # noqa: BLE001 - reported to the parent
            os.write(write_end, f"child failed: {error!r}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    return pid, read_end


def _read_to_end(fd: int) -> bytes:
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    os.close(fd)
    return data


def _pickled_request() -> bytes:
    """A request as lis framed them before: a 4-byte length and a pickle."""
    data = pickle.dumps((b"from nobody", None, None))
    return struct.pack("!I", len(data)) + data


def _json_request() -> bytes:
    """A well-formed request of the fixed format (vocabulary.wire), written by hand."""
    header = json.dumps({"service": SERVICE, "content_type": None, "algo_type": None,
                         "timeout_s": 5}).encode()
    return struct.pack("!II", len(header), 11) + header + b"from nobody"


def _reply_to(path: Path, frame: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as connection:
        connection.settimeout(WAIT_S)
        connection.connect(str(path))
        try:
            connection.sendall(frame)
            connection.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := connection.recv(65536):
                reply += chunk
            return reply
        except (BrokenPipeError, ConnectionResetError):
            return b""  # dropped before it was read


def test_a_connection_from_another_uid_is_dropped_unread(short_tmp: Path) -> None:
    """Before: the replica answered any process that could open its socket (the handler ran)."""
    calls: list[bytes] = []

    def handler(body: bytes, content_type: str | None, algo_type: str | None) -> Any:
        calls.append(body)
        return InferenceResult(body.decode(), "text/plain")

    server = LocalServer(socket_path(NODE, SERVICE, "r1"), handler, SERVICE, 10)
    server.start()
    folders = (server.path.parent.parent, server.path.parent)
    try:
        # As a careless folder would: the other user reaches the socket; only the
        # peer check is left between it and the model.
        for folder in folders:
            folder.chmod(0o711)
        server.path.chmod(0o666)

        def attack(report: int) -> None:
            replies = [_reply_to(server.path, frame)
                       for frame in (_pickled_request(), _json_request())]
            os.write(report, repr(replies).encode())

        pid, report = _in_child_as_nobody(attack)
        assert _read_to_end(report) == repr([b"", b""]).encode()
        os.waitpid(pid, 0)
        assert calls == []
        for folder in folders:
            folder.chmod(0o700)
        assert asyncio.run(_found().call(b"ours", None, None, 5)).body == "ours"
        assert calls == [b"ours"]  # its own user is still served
    finally:
        server.stop(1)


def test_the_ingress_uses_no_replica_socket_served_by_another_uid(short_tmp: Path) -> None:
    """Before: the ingress sent the request and took the answer of whoever listened."""
    path = socket_path(NODE, SERVICE, "foreign")
    for folder in (path.parent.parent, path.parent):
        folder.mkdir(mode=0o700)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))  # by this user, in the right place: only the listener is foreign

    def serve(report: int) -> None:
        listener.listen()  # SO_PEERCRED is the listener's at listen(): uid 65534
        os.write(report, b"listening\n")
        connection, _ = listener.accept()
        connection.recv(65536)
        answer = pickle.dumps(InferenceResult("from nobody", "text/plain"))
        connection.sendall(struct.pack("!I", len(answer)) + answer)
        connection.close()

    pid, report = _in_child_as_nobody(serve)
    listener.close()
    try:
        assert os.read(report, 10) == b"listening\n"
        route = _route()
        assert route.covers(0)
        with pytest.raises(LocalUnavailable):
            asyncio.run(route.call(b"frame", None, None, 5))
        assert not route.covers(0)  # and not asked again
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(report)
