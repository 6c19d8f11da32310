"""Issue #17: no ``Host`` check, so a web page could reach a token-less loopback lis.

A page at ``http://evil.example:8000`` makes its name resolve to 127.0.0.1
(DNS rebinding); the browser then sends the page's requests to the local lis
as same-origin ones, with ``Host: evil.example:8000``. On the code before
this change lis answered them (200 with the services listing, and any
inference). A lis served on loopback now answers 421 ``MisdirectedRequest``
unless the ``Host`` header names loopback: lis's own server on one box, and
lis's app behind Ray Serve's proxies when they listen on loopback.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import pytest
from _proxied import classifier_services, run_proxied_lis
from _security_fakes import FakeRouter, free_port, serving
from starlette.testclient import TestClient

from serve_app._http_server import IngressHttpServer
from serve_app.ingress import build_http_app

REBOUND = "evil.example:8000"


def test_a_rebound_page_gets_421_from_a_real_loopback_lis() -> None:
    """Old code: 200 and the services listing for ``Host: evil.example:8000``."""
    with serving(FakeRouter()) as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/services", headers={"Host": REBOUND})
        answer = connection.getresponse()
        assert (answer.status, json.loads(answer.read())["error"]["type"]) == \
            (421, "MisdirectedRequest")
        connection.close()


def _loopback_app() -> Any:
    server = IngressHttpServer(build_http_app(FakeRouter()), "127.0.0.1", free_port())
    return server.app


@pytest.mark.parametrize("host", [REBOUND, "evil.example", "192.168.1.20:8000",
                                  "localhost.evil.example", "127.0.0.1.evil.example:8000",
                                  "[::2]:8000"])
def test_every_route_answers_421_to_a_host_not_naming_loopback(host: str) -> None:
    with TestClient(_loopback_app(), base_url=f"http://{host}") as client:
        answers = [client.get("/services"), client.get("/healthz"),
                   client.post("/inference/cls", content=b"frame",
                               headers={"Content-Type": "image/jpeg"})]
    assert {answer.status_code for answer in answers} == {421}
    assert answers[0].json() == {"error": {"type": "MisdirectedRequest", "message": (
        f"this lis listens on loopback only and answers requests for localhost, 127.x.x.x "
        f"or [::1], not Host {host!r}")}}


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "LOCALHOST:8000", "127.0.0.1",
                                  "127.0.0.1:8000", "127.1.2.3:80", "[::1]", "[::1]:8000"])
def test_loopback_names_are_served(host: str) -> None:
    with TestClient(_loopback_app(), base_url=f"http://{host}") as client:
        assert client.get("/services").status_code == 200


def test_beyond_loopback_the_host_is_not_checked() -> None:
    # There the token guards the door; names and addresses of the box are many.
    app = build_http_app(FakeRouter())
    assert IngressHttpServer(app, "0.0.0.0", free_port()).app is app


def test_behind_ray_serves_proxies_on_loopback_a_rebound_page_gets_421(
        tiny_classifier_artifact: Path, tmp_path: Path) -> None:
    """The cluster path: Ray Serve's proxies (Ray's code) serve the app, which now checks
    ``Host`` itself when they listen on loopback. Old code: 200 for ``evil.example``."""
    services = classifier_services(tmp_path, tiny_classifier_artifact)
    seen = run_proxied_lis(services, [REBOUND, "localhost:8000", "127.0.0.1"])
    assert seen == {REBOUND: [421, "MisdirectedRequest"],
                    "localhost:8000": [200, None], "127.0.0.1": [200, None]}
