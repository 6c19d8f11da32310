"""The SDK over HTTP keeps its connection: one TCP connection per thread, not one per call.

A camera's Lambda code calls ``invoke_inference_service`` for every frame; a
new connection each time costs a TCP handshake (and a TLS one over https).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import greengrass_machine_learning_sdk as ml

ANSWER = b"[0.25,0.75]"
CALL = {"AlgoType": "image-classification", "ServiceName": "imageClassification",
        "ContentType": "image/jpeg", "Body": b"\xff\xd8\xff"}


class _Recording(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        self.requests: list[tuple[int, str | None]] = []  # (client port, Authorization)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as lis's ingress

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers["Content-Length"]))
                server.requests.append((self.client_address[1],
                                        self.headers.get("Authorization")))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(ANSWER)))
                self.end_headers()
                self.wfile.write(ANSWER)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Recording]:
    recording = _Recording()
    threading.Thread(target=recording.serve_forever, daemon=True).start()
    monkeypatch.setenv("LIS_TRANSPORT", "http")
    monkeypatch.setenv("LIS_ENDPOINT", f"http://127.0.0.1:{recording.server_address[1]}")
    monkeypatch.delenv("LIS_TOKEN", raising=False)
    yield recording
    recording.shutdown()
    recording.server_close()


def test_calls_from_one_thread_share_one_connection(server: _Recording) -> None:
    for _ in range(5):
        answer = ml.client("inference").invoke_inference_service(**CALL)
        assert answer["Body"].read() == ANSWER
    assert len(server.requests) == 5
    assert len({port for port, _ in server.requests}) == 1


def test_each_thread_has_its_own_and_a_new_token_a_new_one(
        server: _Recording, monkeypatch: pytest.MonkeyPatch) -> None:
    def calls() -> None:
        for _ in range(3):
            ml.client("inference").invoke_inference_service(**CALL)

    workers = [threading.Thread(target=calls) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert len({port for port, _ in server.requests}) == 2
    monkeypatch.setenv("LIS_TOKEN", "a-token-set-later")
    calls()
    assert server.requests[-1][1] == "Bearer a-token-set-later"
    assert len({port for port, _ in server.requests}) == 3


def test_in_the_cluster_the_node_is_asked_of_ray_once_per_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Asking Ray (``get_runtime_context``) on every call cost tens of microseconds
    # right after each wait on a socket; a driver that joins Ray again (a restarted
    # lis, a new node) must still be seen.
    import serve_app._same_node as same_node

    asked: list[str] = []
    connection: list[object | None] = [object()]

    def node_id() -> str:
        asked.append(f"node{len(asked) + 1}")
        return asked[-1]

    monkeypatch.setattr(same_node, "ray_connection", lambda: connection[0])
    monkeypatch.setattr(same_node, "current_node_id", node_id)
    monkeypatch.setattr(same_node, "_same_node", None)
    first = same_node._node()
    assert first is not None and same_node._node() is first and asked == ["node1"]
    connection[0] = object()  # ray.shutdown(), then ray.init() to another lis
    second = same_node._node()
    assert second is not None and second is not first and second.node_id == "node2"
    connection[0] = None  # not in Ray at all: Ray's road, nothing asked
    assert same_node._node() is None and asked == ["node1", "node2"]
