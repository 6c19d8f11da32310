"""What the attack tests share: a router with one fake service, and lis's own HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

from serve_app._http_server import IngressHttpServer
from serve_app.ingress import ServiceInfo, build_http_app
from vocabulary.wire import InferenceResult

SERVICE = "cls"
MAX_BODY = 1 << 20
_START_TIMEOUT_S = 30.0


class FakeRouter:
    """A ``Router`` with one service that answers ``[]`` to anything that reaches it."""

    def __init__(self) -> None:
        self.services = {SERVICE: ServiceInfo(
            name=SERVICE, algorithm="image-classification", connector_id="c",
            connector_arn="", platform="x86-64", timeout_s=5.0, max_request_bytes=MAX_BODY)}
        self.bodies: list[bytes] = []

    async def infer(self, service: ServiceInfo, body: bytes, content_type: str | None,
                    algo_type: str | None, gone: Any = None) -> InferenceResult:
        self.bodies.append(body)
        return InferenceResult("[]", "application/json")

    async def service_states(self) -> dict[str, dict[str, Any]]:
        return {SERVICE: {"state": "RUNNING"}}

    async def publish_feedback(self, config_id: str, body: bytes, prediction: Any,
                               metadata: dict[str, str]) -> dict[str, Any]:
        raise AssertionError("not used")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serving(router: FakeRouter, *, token: str | None = None) -> Iterator[int]:
    """lis's own uvicorn (as the ingress replica runs it) on 127.0.0.1, in a thread; its port."""
    port = free_port()
    started = threading.Event()
    control: dict[str, Any] = {}

    async def main() -> None:
        server = IngressHttpServer(build_http_app(router, token=token), "127.0.0.1", port)
        server.start()
        control["loop"], control["stop"] = asyncio.get_running_loop(), asyncio.Event()
        started.set()
        await control["stop"].wait()
        await server.stop(5)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(_START_TIMEOUT_S), "lis's HTTP server did not start"
    try:
        yield port
    finally:
        control["loop"].call_soon_threadsafe(control["stop"].set)
        thread.join(_START_TIMEOUT_S)
