"""The single-box HTTP server: uvicorn inside the ingress replica, on lis's port.

On one box (``lis up`` without ``--address``) no Ray Serve proxy runs: the
ingress replica serves lis's Starlette app itself. Ray Serve's own direct
ingress did the same, wrapped in its per-request bookkeeping (a request id, a
disconnect watch, request metrics, its queue accounting): about 0.3-0.6 ms of
the ingress's CPU per request on the 2-core reference box, over a third of
all it spends. lis's limits do not need that layer (each service's queue and
slots are kept by ``serve_app._local`` and Ray Serve's handles), and lis
writes its own access line per request on the service replica.

The port belongs to one ingress replica at a time: a new one (the service
table changed) starts only after the old one stopped (no surge replica, see
``serve_app.app.build_app``), and waits briefly for the port in case the old
one's socket is still closing. The port is bound in the replica's constructor,
so when Ray Serve calls the ingress running, connections are already taken.

On loopback the app answers only requests whose ``Host`` names loopback
(``serve_app.ingress.LoopbackHostGuard``): a web page could otherwise reach a
local lis through DNS rebinding.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any

import uvicorn

from serve_app.http_token import is_loopback
from serve_app.ingress import LoopbackHostGuard
from vocabulary.errors import LisError

if TYPE_CHECKING:
    from vocabulary.specs import TlsSpec

__all__ = ["IngressHttpServer"]

log = logging.getLogger("ray.serve.lis")

# Keep-alive connections idle longer than this are closed: past the 5 s of
# uvicorn's default, so a camera sending a frame every few seconds keeps its one.
KEEP_ALIVE_S = 90
# Connections (and requests under way) beyond this are answered 503 at once: a
# cap on what slow or idle clients can hold (sockets, buffers), far above what
# the services' own queues admit.
MAX_CONNECTIONS = 2048
_BIND_WAIT_S = 30.0
_BIND_POLL_S = 0.2


def _load_certificate(config: uvicorn.Config, tls: TlsSpec) -> None:
    """Read the files now: a missing or mismatched key fails the replica's constructor
    with the reason and the files' names, not the first handshake."""
    try:
        config.load()
    except OSError as error:  # a missing file, or ssl.SSLError: a bad or mismatched key
        reason = str(error) if isinstance(error, ssl.SSLError) else error.strerror or str(error)
        raise LisError(f"cannot serve HTTPS with certificate {tls.cert_file} and key "
                       f"{tls.key_file}: {reason}") from error


class IngressHttpServer:
    """uvicorn on the replica's own event loop, serving ``app`` on ``host:port``."""

    def __init__(self, app: Any, host: str, port: int, tls: TlsSpec | None = None) -> None:
        self.host, self.port = host, port
        self.app = LoopbackHostGuard(app) if is_loopback(host) else app
        config = uvicorn.Config(
            self.app, host=host, port=port, loop="none", http="httptools", lifespan="off",
            access_log=False, log_config=None, proxy_headers=False,
            timeout_keep_alive=KEEP_ALIVE_S, limit_concurrency=MAX_CONNECTIONS,
            ssl_certfile=str(tls.cert_file) if tls else None,
            ssl_keyfile=str(tls.key_file) if tls else None)
        if tls is not None:
            _load_certificate(config, tls)
        self.scheme = "https" if tls else "http"
        self._server = uvicorn.Server(config)
        # The replica's process is Ray's: its signals stay Ray's.
        self._server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Listen now (connections wait in the backlog), then serve on the running loop.

        Waits up to 30 s for the port: the previous ingress may still be closing it.
        """
        listener = self._bind()
        listener.listen(2048)
        self._task = asyncio.get_running_loop().create_task(
            self._server.serve(sockets=[listener]))
        log.info("serving %s on %s:%d", self.scheme.upper(), self.host, self.port)

    def check(self) -> None:
        """Raises if the server stopped on its own (the replica is then replaced)."""
        if self._task is not None and self._task.done() and not self._server.should_exit:
            error = None if self._task.cancelled() else self._task.exception()
            raise RuntimeError(f"the HTTP server on {self.host}:{self.port} stopped: {error!r}")

    async def stop(self, timeout_s: float) -> None:
        """Take no new connection; give requests under way up to ``timeout_s`` to finish."""
        if self._task is None:
            return
        self._server.config.timeout_graceful_shutdown = timeout_s
        self._server.should_exit = True
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(self._task, timeout_s + 1)

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        deadline = time.monotonic() + _BIND_WAIT_S
        while True:
            listener = socket.socket(family, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind((self.host, self.port))
                return listener
            except OSError as error:
                listener.close()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cannot serve HTTP on {self.host}:{self.port}: "
                                       f"{error.strerror}") from error
            time.sleep(_BIND_POLL_S)
