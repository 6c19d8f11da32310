"""The ingress deployment: the HTTP front door of the lis application, on the head node.

It holds a ``SocketFirstRouter`` and serves the HTTP routes of ``serve_app.ingress``
over it: on one box with its own HTTP server (``serve_app._http_server``), on a
cluster behind Ray Serve's proxies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app._http_server import IngressHttpServer
from serve_app._local import LocalLimits
from serve_app.ingress import LoopbackHostGuard, ServiceInfo, build_http_app
from serve_app.router import SocketFirstRouter
from vocabulary.limits import DEFAULT_TIMEOUT_S
from vocabulary.names import INGRESS_DEPLOYMENT
from vocabulary.specs import TlsSpec

__all__ = ["LisIngress"]


@serve.deployment(name=INGRESS_DEPLOYMENT)
@serve.ingress()
class LisIngress:
    """The HTTP front door, on the head node.

    On one box it serves HTTP itself on ``http`` = (host, port), HTTPS with
    ``tls``, see ``serve_app._http_server``; on a cluster Ray Serve's proxies (on the head
    and on each node that runs a replica) forward to it, and with ``host_guard`` (the
    proxies listen on loopback) it checks the ``Host`` header itself.
    """

    def __init__(self, services: list[ServiceInfo], handles: dict[str, DeploymentHandle],
                 feedback: DeploymentHandle | None, token: str | None,
                 demands: Mapping[str, Mapping[str, float]] | None = None,
                 local: Mapping[str, LocalLimits] | None = None,
                 http: tuple[str, int] | None = None, tls: TlsSpec | None = None,
                 host_guard: bool = False,
                 pipelines: Mapping[str, DeploymentHandle] | None = None) -> None:
        self.router = SocketFirstRouter(services, handles, feedback, demands, local, pipelines)
        self.token = token
        self._host_guard = host_guard
        self._shutdown_s = max((info.timeout_s for info in services), default=DEFAULT_TIMEOUT_S)
        self._http: IngressHttpServer | None = None
        if http is not None:
            self._http = IngressHttpServer(build_http_app(self.router, token=token), *http,
                                           tls=tls)
            self._http.start()

    def __serve_build_asgi_app__(self) -> Any:
        app = build_http_app(self.router, token=self.token)
        # Proxies on loopback: the Host header reaches this app, which answers 421 to
        # a name other than loopback's (a web page's DNS rebinding), as on one box.
        return LoopbackHostGuard(app) if self._host_guard else app

    def check_health(self) -> None:
        if self._http is not None:
            self._http.check()

    async def __del__(self) -> None:
        # Ray Serve calls this when the replica stops: requests under way get
        # as long as the slowest service's timeout.
        server = getattr(self, "_http", None)  # None if the constructor failed early
        if server is not None:
            await server.stop(self._shutdown_s)
