"""The single-box HTTP path: the ingress replica serves lis's port itself."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import urllib.request

import psutil
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import serve_app._http_server as http_server
from serve_app._http_server import IngressHttpServer
from serve_app.deploy import direct_ingress_port, wait_until_free
from serve_app.errors import LisError


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


def _app(release: asyncio.Event) -> Starlette:
    async def slow(_: object) -> PlainTextResponse:
        await release.wait()
        return PlainTextResponse("finished")

    return Starlette(routes=[Route("/slow", slow),
                             Route("/ok", lambda _: PlainTextResponse("ok"))])


def test_the_server_serves_then_stops_after_the_requests_under_way(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_server, "_BIND_WAIT_S", 0.5)
    port = _free_port()

    async def scenario() -> None:
        release = asyncio.Event()
        server = IngressHttpServer(_app(release), "127.0.0.1", port)
        server.start()
        assert await _get(port, "/ok") == (200, b"ok")
        # A second server (an ingress started before the old one let go)
        # waits for the port, then names it.
        with pytest.raises(RuntimeError, match=f"cannot serve HTTP on 127.0.0.1:{port}"):
            IngressHttpServer(_app(release), "127.0.0.1", port).start()
        slow = asyncio.create_task(_get(port, "/slow"))
        await asyncio.sleep(0.3)
        stopping = asyncio.create_task(server.stop(10))
        await asyncio.sleep(0.3)
        assert not stopping.done()  # waits for /slow
        release.set()
        assert await slow == (200, b"finished")
        await stopping
        server.check()  # asked to stop: not a failure
        wait_until_free("127.0.0.1", port, timeout_s=5)

    asyncio.run(scenario())
