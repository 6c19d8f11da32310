"""The single-box HTTP path: Ray Serve's direct ingress pinned to lis's port."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import urllib.request

import psutil
import pytest

from serve_app.deploy import direct_ingress_environment, direct_ingress_port, wait_until_free
from serve_app.errors import LisError


def test_the_port_range_holds_exactly_the_configured_port() -> None:
    env = direct_ingress_environment(8123)
    assert env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
    # Ray hands out ports from [MIN, MAX): one port, lis's own.
    assert (env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"],
            env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"]) == ("8123", "8124")
    assert env["RAY_SERVE_PORT_QUARANTINE_S"] == "0"


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
    # Only Ray's processes got the port: a cluster this process starts later
    # (the multi-node scenarios) must not inherit it.
    assert not set(direct_ingress_environment(port)) & set(os.environ)
    listeners = {c.pid for c in psutil.net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    assert len(listeners) == 1
    # The ingress replica's own process, not Ray Serve's proxy actor.
    title = " ".join(psutil.Process(listeners.pop()).cmdline())
    assert title.startswith("ray::ServeReplica:lis:LisIngress"), title
    with urllib.request.urlopen(f"{running_lis.endpoint}/healthz", timeout=10) as ok:
        assert json.loads(ok.read()) == {"status": "ok"}


def test_ray_loads_the_middleware_that_spares_a_task_per_request() -> None:
    from ray.serve._private.http_util import validate_http_proxy_callback_return
    from ray.serve._private.utils import call_function_from_import_path

    # What Ray Serve does with the setting when the ingress replica starts.
    path = direct_ingress_environment(8123)["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"]
    (middleware,) = validate_http_proxy_callback_return(call_function_from_import_path(path))
    seen: list[dict] = []

    async def app(scope: dict, receive: object, send: object) -> None:
        seen.append(scope)

    wrapped = middleware.cls(app, *middleware.args, **middleware.kwargs)
    http = {"type": "http", "headers": [(b"content-type", b"image/jpeg")]}
    asyncio.run(wrapped(http, None, None))
    asyncio.run(wrapped({"type": "lifespan"}, None, None))
    # Ray Serve's direct ingress skips its per-request disconnect watch on this header.
    assert dict(seen[0]["headers"]) == {b"content-type": b"image/jpeg",
                                        b"x-request-disconnect-disabled": b"?1"}
    assert "headers" not in seen[1]
