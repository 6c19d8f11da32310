"""The blocking caller of the replicas' sockets (``deployments.local_caller``: pipelines,
the Python client's threads), against real replica-side servers (``LocalServer``) here."""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from waiting import wait_until

from deployments.local_caller import AllBusy, LocalCaller, LocalUnreachable
from deployments.local_socket import LocalServer, receive_answer_frame, send_frame, socket_path
from vocabulary.errors import AlgorithmMismatch, InferenceTimeout, InvalidArgument
from vocabulary.wire import MAX_ANSWER_BYTES, InferenceResult, decode_answer, encode_answer

SERVICE = "cameraService"


@pytest.fixture
def node() -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex}"
    yield name
    shutil.rmtree(socket_path(name, SERVICE, "any").parent, ignore_errors=True)


class Replica:
    """A replica's socket server that records which connection each request came on."""

    def __init__(self, node: str, name: str, *, max_ongoing: int = 5,
                 gate: threading.Event | None = None) -> None:
        self.threads: list[int] = []
        self.gate = gate
        self.server = LocalServer(socket_path(node, SERVICE, name), self.answer, SERVICE, 10,
                                  max_ongoing=max_ongoing)
        self.server.start()

    def answer(self, body: bytes, content_type: str | None, algo_type: str | None) -> Any:
        self.threads.append(threading.get_ident())  # one thread per connection
        if self.gate is not None:
            self.gate.wait(30)
        if body == b"mismatch":
            raise AlgorithmMismatch(SERVICE, algo_type or "", "image-classification")
        return InferenceResult(f"{body.decode()}|{content_type}", "application/json")


def test_frames_go_over_one_kept_connection(node: str) -> None:
    replica = Replica(node, "r1")
    caller = LocalCaller(SERVICE, node, timeout_s=10)
    try:
        for index in range(3):
            assert caller.call(f"frame{index}".encode(), "image/jpeg").body == \
                f"frame{index}|image/jpeg"
        assert caller.answered == 3
        assert len(replica.threads) == 3 and len(set(replica.threads)) == 1
    finally:
        caller.close()
        replica.server.stop(5)


def test_threads_calling_at_once_each_keep_a_connection_of_their_own(node: str) -> None:
    # A Python client's threads share one caller: a request per connection at a
    # time, and the connections kept for the next round.
    gate = threading.Event()
    replica = Replica(node, "r1", gate=gate)
    caller = LocalCaller(SERVICE, node, timeout_s=10)
    answers: list[str] = []

    def one_round() -> None:
        threads = [threading.Thread(target=lambda i=i: answers.append(
            caller.call(f"t{i}".encode(), None).body)) for i in range(3)]
        for thread in threads:
            thread.start()
        wait_until(lambda: replica.server.ongoing == 3, timeout_s=10,
                   message="three requests running at once")
        gate.set()
        for thread in threads:
            thread.join(10)
        gate.clear()

    try:
        one_round()
        one_round()
        assert sorted(answers) == sorted(["t0|None", "t1|None", "t2|None"] * 2)
        assert len(replica.threads) == 6 and len(set(replica.threads)) == 3
        assert caller.answered == 6
    finally:
        gate.set()
        caller.close()
        replica.server.stop(5)


@contextlib.contextmanager
def _one_request_held(node: str) -> Iterator[Replica]:
    """A replica that takes one request at a time, running one (from another caller) held
    at its gate until the block ends."""
    gate = threading.Event()
    replica = Replica(node, "r1", max_ongoing=1, gate=gate)
    holder = LocalCaller(SERVICE, node, timeout_s=10)
    first = threading.Thread(target=holder.call, args=(b"held", None))
    first.start()
    try:
        wait_until(lambda: len(replica.threads) == 1, timeout_s=10,
                   message="the first request to be running")
        yield replica
    finally:
        gate.set()
        first.join(10)
        holder.close()
        replica.server.stop(5)


def test_every_replica_busy_is_told_apart_from_none_listening(node: str) -> None:
    caller = LocalCaller(SERVICE, node, timeout_s=10)
    with _one_request_held(node):
        # The client waits for a slot on AllBusy; on any other LocalUnreachable it
        # goes through Ray Serve (serve_app/_same_node.py).
        with pytest.raises(AllBusy):
            caller.call(b"second", None)
        with pytest.raises(LocalUnreachable) as elsewhere:
            caller.call(b"third", None, running_replicas=2)
        assert not isinstance(elsewhere.value, AllBusy)
        assert "runs replicas on other nodes too" in str(elsewhere.value)
    caller.close()


def test_the_replicas_error_is_raised_and_the_connection_kept(node: str) -> None:
    replica = Replica(node, "r1")
    caller = LocalCaller(SERVICE, node, timeout_s=10)
    try:
        with pytest.raises(AlgorithmMismatch):
            caller.call(b"mismatch", "image/jpeg", "object-detection")
        assert caller.call(b"next", None).body == "next|None"
        assert len(set(replica.threads)) == 1
    finally:
        caller.close()
        replica.server.stop(5)


def test_no_socket_or_a_busy_replica_means_the_handle(node: str) -> None:
    caller = LocalCaller(SERVICE, node, timeout_s=10)
    with pytest.raises(LocalUnreachable, match="no replica of cameraService listens"):
        caller.call(b"x", None)
    with _one_request_held(node) as replica:
        # The replica runs its most (one, held at the gate): it answers Busy, unstarted.
        with pytest.raises(LocalUnreachable, match="the replica is running 1 requests"):
            caller.call(b"second", None)
        assert replica.threads.count(replica.threads[0]) == 1
    caller.close()


def test_a_replica_that_does_not_answer_in_time_is_a_timeout(node: str) -> None:
    gate = threading.Event()
    replica = Replica(node, "r1", gate=gate)
    caller = LocalCaller(SERVICE, node, timeout_s=0.5)
    try:
        with pytest.raises(InferenceTimeout):
            caller.call(b"slow", None)
        gate.set()
        assert caller.call(b"after", None).body == "after|None"  # a new connection
    finally:
        gate.set()
        caller.close()
        replica.server.stop(5)


class _Chunks:
    """A socket's receiving end that hands out bytes in the pieces given, as a stream may."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = list(pieces)

    def recv(self, size: int) -> bytes:
        if not self.pieces:
            return b""
        piece = self.pieces.pop(0)
        if len(piece) > size:
            piece, rest = piece[:size], piece[size:]
            self.pieces.insert(0, rest)
        return piece


def _answer_bytes(body: bytes = b'{"prediction": []}') -> bytes:
    return b"".join(encode_answer(InferenceResult(body.decode(), "application/json")))


def test_an_answer_that_arrives_in_pieces_is_read_whole() -> None:
    # The caller reads an answer's frame in one read as a rule; pieces cut through its
    # prefix, its header and its body must give the same frame.
    whole = _answer_bytes(b"x" * 3000)
    expected = receive_answer_frame(_Chunks(whole), MAX_ANSWER_BYTES)
    for cuts in ((3,), (8, 20), (5, 9, 40, 2000)):
        pieces = [whole[a:b] for a, b in zip((0, *cuts), (*cuts, len(whole)))]
        assert receive_answer_frame(_Chunks(*pieces), MAX_ANSWER_BYTES) == expected  # type: ignore[arg-type]
    assert decode_answer(*expected).body == "x" * 3000  # type: ignore[misc]


def test_bytes_past_an_answer_or_a_cut_answer_are_errors() -> None:
    whole = _answer_bytes()
    with pytest.raises(InvalidArgument, match="answer frame.*3 bytes past its end"):
        receive_answer_frame(_Chunks(whole + b"abc"), MAX_ANSWER_BYTES)  # type: ignore[arg-type]
    for cut in (4, 12, len(whole) - 1):
        with pytest.raises(ConnectionResetError, match="mid-frame"):
            receive_answer_frame(_Chunks(whole[:cut]), MAX_ANSWER_BYTES)  # type: ignore[arg-type]
    assert receive_answer_frame(_Chunks(), MAX_ANSWER_BYTES) is None  # type: ignore[arg-type]


def test_a_frame_larger_than_the_socket_buffer_is_sent_whole() -> None:
    # ``send_frame`` hands both buffers to one sendmsg; on a socket with a timeout (the
    # caller's) it takes what a full buffer holds, and the rest goes as the buffer drains.
    head, body = b"head", bytes(range(256)) * 8192  # 2 MB
    sender, receiver = socket.socketpair()
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sender.settimeout(30)
    received = bytearray()

    def read() -> None:
        while len(received) < len(head) + len(body):
            received.extend(receiver.recv(1 << 16))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        send_frame(sender, (head, body))
        reader.join(30)
        assert bytes(received) == head + body
    finally:
        sender.close()
        receiver.close()
