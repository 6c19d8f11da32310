"""Door 1 of issue #17: what crosses a replica's socket is data, never code.

Frames were pickles: whoever could write to either end of a socket ran code in
the other process. Here crafted frames (a pickle that creates a marker file if
unpickled, random bytes, well-framed garbage) are sent to a replica's server
and answered by a fake replica to the ingress's client.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import random
import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vocabulary.errors as errors
from deployments.local_socket import LocalServer, socket_path
from serve_app._local import LocalLimits, LocalRoute, LocalUnavailable
from vocabulary.errors import InferenceFailed, LisError
from vocabulary.wire import InferenceResult

SERVICE = "svc"
NODE = "node1"
WAIT_S = 10
# Random frames per test: each is a connection and a thread; a second or two in all.
CASES = 150


@pytest.fixture
def short_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This test's own ``$TMPDIR``, short: a socket path fits in 108 bytes."""
    folder = Path(tempfile.mkdtemp(prefix="lis", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def marker(short_tmp: Path) -> Path:
    """The file a crafted pickle creates if anything unpickles it."""
    return short_tmp / "pwned"


@pytest.fixture
def thread_failures(monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    """Exceptions that ended a thread (a server's connection thread) during the test."""
    failures: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: failures.append(args.exc_value))
    return failures


class _Plant:
    """Unpickled, it creates ``path``: what an attacker would do with any call."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def _pickle_frames(marker: Path) -> dict[str, bytes]:
    payload = pickle.dumps(_Plant(marker))
    return {"framed as lis framed pickles": struct.pack("!I", len(payload)) + payload,
            "as the JSON header": struct.pack("!II", len(payload), 0) + payload}


def _echo(body: bytes, content_type: str | None, algo_type: str | None) -> InferenceResult:
    return InferenceResult(body.decode(errors="replace"), "text/plain")


def _server() -> LocalServer:
    server = LocalServer(socket_path(NODE, SERVICE, "r1"), _echo, SERVICE, 10)
    server.start()
    return server


def _route() -> LocalRoute:
    return LocalRoute(SERVICE, NODE, LocalLimits(max_ongoing=5, max_queued=-1))


def _found() -> LocalRoute:
    """A route that found the replica's socket."""
    route = _route()
    assert route.covers(0)
    return route


def _still_serves() -> None:
    assert asyncio.run(_found().call(b"after", None, None, 5)).body == "after"


def _reply_to(path: Path, frame: bytes) -> bytes:
    """Send ``frame`` alone on a connection; all the server sends back before it closes."""
    with socket.socket(socket.AF_UNIX) as connection:
        connection.settimeout(WAIT_S)
        connection.connect(str(path))
        reply = b""
        try:
            connection.sendall(frame)
            connection.shutdown(socket.SHUT_WR)
            while chunk := connection.recv(65536):
                reply += chunk
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on a frame it refused before reading all of it
        return reply


def _header(reply: bytes) -> dict[str, Any]:
    """The JSON header of a reply frame (vocabulary.wire's format, read by hand)."""
    header_size, body_size = struct.unpack("!II", reply[:8])
    assert len(reply) == 8 + header_size + body_size, reply
    return json.loads(reply[8:8 + header_size])


def _is_error_of_the_tree(reply: bytes) -> bool:
    error = _header(reply)["error"]
    found = getattr(errors, error["type"], None)
    return isinstance(found, type) and issubclass(found, LisError) and bool(error["message"])


def _random_frames(seed: int) -> list[bytes]:
    """Any bytes; frames of both formats, well-sized, whose contents are garbage or near-misses."""
    rng = random.Random(seed)
    near_misses = [
        {"service": SERVICE, "content_type": None, "algo_type": None},
        {"service": SERVICE, "content_type": 1, "algo_type": None, "timeout_s": 5},
        {"service": [SERVICE], "content_type": None, "algo_type": None, "timeout_s": 5},
        {"service": SERVICE, "content_type": None, "algo_type": None, "timeout_s": -1},
        {"service": SERVICE, "content_type": None, "algo_type": None, "timeout_s": True},
        {"service": "other", "content_type": None, "algo_type": None, "timeout_s": 5},
        {"error": {"type": "LisError", "message": "not a request"}},
        [1, 2, 3], "text", None,
    ]
    frames = []
    for _ in range(CASES):
        junk = rng.randbytes(rng.randrange(0, 64))
        kind = rng.randrange(4)
        if kind == 0:
            frames.append(junk)
        elif kind == 1:
            frames.append(struct.pack("!I", len(junk)) + junk)
        elif kind == 2:
            split = rng.randrange(len(junk) + 1)
            frames.append(struct.pack("!II", split, len(junk) - split) + junk)
        else:
            header = json.dumps(rng.choice(near_misses)).encode()
            frames.append(struct.pack("!II", len(header), len(junk)) + header + junk)
    return frames


# --- sent to a replica --------------------------------------------------------------


@pytest.mark.parametrize("framing", ["framed as lis framed pickles", "as the JSON header"])
def test_a_pickle_sent_to_a_replica_is_not_unpickled_and_it_serves_on(
        framing: str, short_tmp: Path, marker: Path) -> None:
    """Before: the replica unpickled every request: in the old framing the marker file
    appeared; as a header, the garbage raised in its thread and no error came back."""
    server = _server()
    try:
        reply = _reply_to(server.path, _pickle_frames(marker)[framing])
        assert not marker.exists()
        assert _is_error_of_the_tree(reply)
        _still_serves()
    finally:
        server.stop(1)


def test_random_frames_sent_to_a_replica_get_an_error_or_nothing_and_it_serves_on(
        short_tmp: Path, thread_failures: list[BaseException]) -> None:
    """Before: garbage was unpickled and the exception (UnpicklingError, ...) killed the
    connection's thread, answering nothing of the tree."""
    server = _server()
    try:
        for frame in _random_frames(seed=17):
            reply = _reply_to(server.path, frame)
            if reply:
                header = _header(reply)
                assert "error" not in header or _is_error_of_the_tree(reply), (frame, reply)
        assert thread_failures == []
        _still_serves()
    finally:
        server.stop(1)


def test_a_frame_over_the_size_bound_is_refused_unread(short_tmp: Path) -> None:
    """Before: the replica read whatever length a frame announced, up to 4 GiB, into memory."""
    server = _server()
    try:
        header = json.dumps({"service": SERVICE, "content_type": None, "algo_type": None,
                             "timeout_s": 5}).encode()
        announced = struct.pack("!II", len(header), 2**32 - 1) + header  # no body follows
        reply = _reply_to(server.path, announced)
        assert _header(reply)["error"]["type"] == "PayloadTooLarge"
        _still_serves()
    finally:
        server.stop(1)


# --- answered to the ingress --------------------------------------------------------


async def _fake_replica(answers: list[bytes]) -> asyncio.AbstractServer:
    """A replica's socket that answers each connection's request with the next of ``answers``."""
    path = socket_path(NODE, SERVICE, "fake")
    for folder in (path.parent.parent, path.parent):
        folder.mkdir(mode=0o700, exist_ok=True)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(answers.pop(0))
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(answer, path=str(path))


@pytest.mark.parametrize("framing", ["framed as lis framed pickles", "as the JSON header"])
def test_a_pickle_answered_to_the_ingress_is_not_unpickled(
        framing: str, short_tmp: Path, marker: Path) -> None:
    """Before: the ingress unpickled the answer: in the old framing the marker file appeared
    and the call "succeeded"; as a header, ``UnpicklingError`` escaped the call."""
    async def scenario() -> None:
        fake = await _fake_replica([_pickle_frames(marker)[framing]])
        try:
            route = _route()
            assert route.covers(0)
            with pytest.raises(InferenceFailed, match="answer is malformed"):
                await route.call(b"frame", None, None, 5)
        finally:
            fake.close()

    asyncio.run(scenario())
    assert not marker.exists()


def test_random_answers_to_the_ingress_are_errors_of_the_tree(short_tmp: Path) -> None:
    """Before: garbage answers raised UnpicklingError, EOFError, ... out of the ingress's call."""
    asyncio.run(_answer_randomly(_random_frames(seed=71)))


async def _answer_randomly(frames: list[bytes]) -> None:
    fake = await _fake_replica(list(frames))
    try:
        route = _route()
        for frame in frames:
            route.covers(0)  # found again if a broken answer made the route forget it
            try:
                answer = await route.call(b"frame", None, None, 5)
            except (LisError, LocalUnavailable):  # an error of the tree, or "go by Ray"
                continue
            except Exception as error:  # noqa: BLE001 - the failure this test looks for
                pytest.fail(f"{frame!r} raised {type(error).__name__}: {error}")
            assert isinstance(answer, InferenceResult), (frame, answer)
    finally:
        fake.close()


def test_each_malformed_header_is_an_invalid_argument_of_the_codec() -> None:
    """The codec alone (before: there was none; a frame was whatever ``pickle.loads`` made
    of it): not UTF-8, not an object, missing keys, NaN, nesting deep enough to overflow
    the parser's recursion are each an ``InvalidArgument``, nothing else."""
    from vocabulary.wire import decode_answer, decode_request

    for header in (b"\xff", b"[]", b'{"service": "s"}', b'{"timeout_s": NaN}', b"[" * 60000):
        with pytest.raises(errors.InvalidArgument, match="frame"):
            decode_request(header, b"")
        with pytest.raises(errors.InvalidArgument, match="frame"):
            decode_answer(header, b"")
    huge = b"9" * 400  # an integer no float holds
    with pytest.raises(errors.InvalidArgument, match="timeout_s"):
        decode_request(b'{"service": "s", "content_type": null, "algo_type": null, '
                       b'"timeout_s": ' + huge + b"}", b"")
    with pytest.raises(errors.InvalidArgument, match="stages_s"):
        decode_answer(b'{"content_type": "t", "stages_s": [["model", ' + huge + b"]]}", b"")
    with pytest.raises(errors.InvalidArgument, match="UTF-8"):
        decode_answer(b'{"content_type": "t", "stages_s": []}', b"\xff")
