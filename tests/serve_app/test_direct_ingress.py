"""The single-box HTTP path: the ingress replica serves lis's port itself."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import threading
import urllib.request
import uuid
from typing import Any

import psutil
import pytest
from scrape import sample_value
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from waiting import wait_until, wait_until_async

import serve_app._http_server as http_server
from cluster.ray_start import direct_ingress_port
from deployments.local_socket import LocalServer, socket_path
from serve_app._http_server import IngressHttpServer
from serve_app._local import Gone, LocalLimits, LocalRoute
from serve_app.deploy import wait_until_free
from serve_app.ingress import ServiceInfo, build_http_app
from vocabulary.errors import LisError
from vocabulary.wire import InferenceResult

# Generous: a real server and its clients in this process, on a busy 2-core box.
WAIT_S = 20


def test_a_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(LisError, match=f"cannot serve HTTP on 127.0.0.1:{port}"):
            wait_until_free("127.0.0.1", port, timeout_s=0.5)
    wait_until_free("127.0.0.1", port, timeout_s=5)  # released: no error


def test_the_ingress_replica_itself_listens_on_the_port(running_lis) -> None:
    port = int(running_lis.endpoint.rsplit(":", 1)[1])
    assert direct_ingress_port() == port
    listeners = {c.pid for c in psutil.net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    assert len(listeners) == 1
    # The ingress replica's own process; on one box no Ray Serve proxy runs.
    title = " ".join(psutil.Process(listeners.pop()).cmdline())
    assert title.startswith("ray::ServeReplica:lis:LisIngress"), title
    assert not [p for p in psutil.process_iter(["cmdline"])
                if " ".join(p.info["cmdline"] or []).startswith("ray::ProxyActor")]
    with urllib.request.urlopen(f"{running_lis.endpoint}/healthz", timeout=10) as ok:
        assert json.loads(ok.read()) == {"status": "ok"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def _get(port: int, path: str) -> tuple[int, bytes]:
    return await asyncio.to_thread(_fetch, f"http://127.0.0.1:{port}{path}")


def _fetch(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.status, answer.read()


def _listening(port: int) -> bool:
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port
               for c in psutil.Process().net_connections(kind="tcp"))


def _app(arrived: asyncio.Event, release: asyncio.Event) -> Starlette:
    async def slow(_: object) -> PlainTextResponse:
        arrived.set()
        await release.wait()
        return PlainTextResponse("finished")

    return Starlette(routes=[Route("/slow", slow),
                             Route("/ok", lambda _: PlainTextResponse("ok"))])


def test_the_server_serves_then_stops_after_the_requests_under_way(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_server, "_BIND_WAIT_S", 0.5)
    port = _free_port()

    async def scenario() -> None:
        arrived, release = asyncio.Event(), asyncio.Event()
        server = IngressHttpServer(_app(arrived, release), "127.0.0.1", port)
        server.start()
        assert await _get(port, "/ok") == (200, b"ok")
        # A second server (an ingress started before the old one let go)
        # waits for the port, then names it.
        with pytest.raises(RuntimeError, match=f"cannot serve HTTP on 127.0.0.1:{port}"):
            IngressHttpServer(_app(arrived, release), "127.0.0.1", port).start()
        slow = asyncio.create_task(_get(port, "/slow"))
        await wait_until_async(arrived.is_set, timeout_s=WAIT_S, message="/slow to be under way")
        stopping = asyncio.create_task(server.stop(10))
        await wait_until_async(lambda: not _listening(port), timeout_s=WAIT_S,
                               message="the stopping server to close its port")
        assert not stopping.done()  # waits for /slow
        release.set()
        assert await slow == (200, b"finished")
        await stopping
        server.check()  # asked to stop: not a failure
        wait_until_free("127.0.0.1", port, timeout_s=5)

    asyncio.run(scenario())


# --- a caller that hangs up while its request is queued ------------------------------

SERVICE = "held"


class _LocalRouter:
    """A ``Router`` with one service on a real replica socket, one request at a time."""

    def __init__(self, node: str) -> None:
        self.services = {SERVICE: ServiceInfo(
            name=SERVICE, algorithm="image-classification", connector_id="c", connector_arn="",
            platform="x86-64", timeout_s=30.0, max_request_bytes=1 << 20)}
        self.route = LocalRoute(SERVICE, node, LocalLimits(max_ongoing=1, max_queued=-1))

    async def infer(self, service: ServiceInfo, body: bytes, content_type: str | None,
                    algo_type: str | None, gone: Gone | None = None) -> InferenceResult:
        assert self.route.covers(1)
        result: InferenceResult = await self.route.call(body, content_type, algo_type,
                                                        service.timeout_s, gone)
        return result

    async def service_states(self) -> dict[str, dict[str, Any]]:
        return {SERVICE: {"state": "RUNNING"}}

    async def publish_feedback(self, config_id: str, body: bytes, prediction: Any,
                               metadata: dict[str, str]) -> dict[str, Any]:
        raise AssertionError("not used")


def _post(port: int, body: bytes) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/inference/{SERVICE}", data=body,
                                     headers={"Content-Type": "image/jpeg"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.status


def _metric(port: int, series: str) -> float:
    return sample_value(_fetch(f"http://127.0.0.1:{port}/metrics")[1].decode(), series)


def _server_side_open(port: int, client_port: int) -> bool:
    """Whether the server still holds its end of the connection from ``client_port``."""
    return any(c.laddr and c.laddr.port == port and c.raddr and c.raddr.port == client_port
               and c.status in (psutil.CONN_ESTABLISHED, psutil.CONN_CLOSE_WAIT)
               for c in psutil.Process().net_connections(kind="tcp"))


def test_a_request_whose_caller_hung_up_in_the_queue_never_reaches_the_replica(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_server, "_BIND_WAIT_S", 0.5)
    node = f"test-{uuid.uuid4().hex}"
    port = _free_port()
    release = threading.Event()
    reached: list[bytes] = []

    def held(body: bytes, content_type: str | None, algo_type: str | None) -> InferenceResult:
        reached.append(body[:5])
        if body.startswith(b"first"):
            release.wait(30)
        return InferenceResult("[1.0]", "application/json")

    async def scenario() -> None:
        replica = LocalServer(socket_path(node, SERVICE, "r1"), held, SERVICE, 10)
        replica.start()
        server = IngressHttpServer(build_http_app(_LocalRouter(node)), "127.0.0.1", port)
        server.start()
        first = asyncio.create_task(asyncio.to_thread(_post, port, b"first"))
        await wait_until_async(lambda: reached == [b"first"], timeout_s=WAIT_S,
                               message="the first request to run")
        # The second caller sends a frame-sized body, waits until its request is
        # queued behind the first, and hangs up.
        with socket.create_connection(("127.0.0.1", port)) as caller:
            body = b"gone!" + bytes(100_000)
            caller.sendall(f"POST /inference/{SERVICE} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           f"Content-Type: image/jpeg\r\nContent-Length: {len(body)}\r\n\r\n"
                           .encode() + body)
            in_flight = f'lis_requests_in_flight{{service="{SERVICE}"}}'
            # Asked from a thread: the server that answers /metrics runs on this loop.
            await asyncio.to_thread(wait_until, lambda: _metric(port, in_flight) == 2,
                                    timeout_s=WAIT_S, message="the second request to queue")
            client_port = caller.getsockname()[1]
        await wait_until_async(lambda: not _server_side_open(port, client_port),
                               timeout_s=WAIT_S, message="the server to see the caller leave")
        release.set()
        assert await first == 200
        assert await asyncio.to_thread(_post, port, b"third") == 200
        assert reached == [b"first", b"third"]  # the hung-up request never ran
        metrics = {line: await asyncio.to_thread(_metric, port, line) for line in (
            f'lis_requests_total{{service="{SERVICE}",code="499"}}',
            f'lis_requests_total{{service="{SERVICE}",code="200"}}',
            f'lis_requests_in_flight{{service="{SERVICE}"}}')}
        assert list(metrics.values()) == [1, 2, 0]
        await server.stop(5)
        await asyncio.to_thread(replica.stop, 5)

    try:
        asyncio.run(scenario())
    finally:
        shutil.rmtree(socket_path(node, SERVICE, "any").parent, ignore_errors=True)


class _HeldRouter(_LocalRouter):
    """Each request waits until it is cancelled."""

    def __init__(self) -> None:
        super().__init__("unused")
        self.entered = asyncio.Event()

    async def infer(self, service: ServiceInfo, body: bytes, content_type: str | None,
                    algo_type: str | None, gone: Gone | None = None) -> InferenceResult:
        self.entered.set()
        await asyncio.Event().wait()
        raise AssertionError("never answered")


async def _asgi(app: Starlette, method: str, path: str, body: bytes = b"") -> list[dict]:
    """One request through the ASGI app, as a server would send it; the messages sent back."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "root_path": "", "query_string": b"", "server": ("127.0.0.1", 8000),
             "client": ("127.0.0.1", 50000),
             "headers": [(b"content-type", b"image/jpeg"),
                         (b"content-length", str(len(body)).encode())]}
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive() -> dict:
        if incoming:
            return incoming.pop()
        await asyncio.Event().wait()  # the client stays connected
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def test_a_request_cancelled_by_ray_serves_proxy_counts_as_499_not_500() -> None:
    # On a cluster, Ray Serve's proxy cancels the ingress's request when the client hangs up.
    async def scenario() -> None:
        router = _HeldRouter()
        app = build_http_app(router)
        request = asyncio.create_task(_asgi(app, "POST", f"/inference/{SERVICE}", b"frame"))
        await asyncio.wait_for(router.entered.wait(), 10)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        sent = await _asgi(app, "GET", "/metrics")
        text = b"".join(m.get("body", b"") for m in sent).decode()
        assert sample_value(text, f'lis_requests_total{{service="{SERVICE}",code="499"}}') == 1
        assert 'code="500"' not in text
        assert sample_value(text, f'lis_requests_in_flight{{service="{SERVICE}"}}') == 0

    asyncio.run(scenario())
