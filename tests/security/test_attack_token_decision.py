"""Issue #17, door 2: a later ``lis reload`` or ``lis up`` without ``--host`` dropped the token.

Ray Serve keeps the HTTP options of its first start: ``lis up --host 0.0.0.0``
leaves its proxies listening on the LAN, and a later deploy's host is ignored.
On the code before this change, ``lis reload SERVICE`` (or a second
``lis up --address auto``) without ``--host`` decided the token from the
config's default host, 127.0.0.1, and deployed the ingress with no token
behind those proxies: ``deploy`` was called with ``token=None``.

These tests drive the CLI's own decision with Ray replaced by fakes that
report a Serve bound to 0.0.0.0; a multi-node cluster is not started (the
decision reads the same controller details there).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from serve_app import http_token as token_module
from serve_app.cli import reload as reload_cli
from serve_app.cli import up as up_cli
from serve_app.config import load_config
from serve_app.http_token import http_token

# The config of a site whose first `lis up` was given --host 0.0.0.0 on the command line:
# the services file says nothing of the host. Loaded as lis loads it, so a field a
# command starts to read is there.
SERVICES = """\
services:
  - LocalInferenceServiceName: svc
    ConnectorArn: arn:aws:greengrass:us-west-2::/connectors/ImageClassificationx86-64/versions/2
    model: /models/ic
"""
RUNNING = {"svc": {"state": "RUNNING", "replicas": {"RUNNING": 1}, "message": ""}}


@pytest.fixture
def serve_bound_to_the_lan(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict]:
    """A Ray whose Serve listens on 0.0.0.0; the deploy calls lis makes, recorded."""
    monkeypatch.delenv("LIS_TOKEN", raising=False)
    monkeypatch.setattr(token_module, "TOKEN_FILE", tmp_path / "lis" / "http-token")
    # raising=False: the code before this change had no such lookup (and so no failure here).
    monkeypatch.setattr(token_module, "serve_details",
                        lambda: {"http_options": {"host": "0.0.0.0", "port": 8000}},
                        raising=False)
    deployed: list[dict] = []

    def deploy(config: Any, **kwargs: Any) -> dict[str, None]:
        deployed.append(kwargs)
        return {"svc": None}

    services = tmp_path / "services.yaml"
    services.write_text(SERVICES)
    config = load_config([services])
    assert config.http.host == "127.0.0.1"
    for cli in (up_cli, reload_cli):
        monkeypatch.setattr(cli, "load_config", lambda sources: config)
        monkeypatch.setattr(cli, "connect_ray", lambda *args, **kwargs: None)
        monkeypatch.setattr(cli, "deploy", deploy)
        monkeypatch.setattr(cli, "wait_for_services", lambda *args, **kwargs: RUNNING)
    monkeypatch.setattr(reload_cli, "_running_version", lambda spec: "v1")
    return deployed


def test_reload_without_host_keeps_the_token_of_a_lan_bound_serve(
        serve_bound_to_the_lan: list[dict]) -> None:
    """Old code: deploy(host='127.0.0.1', token=None): the ingress answered anyone on the LAN."""
    args = argparse.Namespace(service="svc", configs=[Path("services.yaml")], address="auto",
                              host=None, port=None, timeout=1.0)
    assert reload_cli.run(args) == 0
    [deployed] = serve_bound_to_the_lan
    assert deployed["token"] is not None and len(deployed["token"]) >= 32
    assert deployed["host"] == "0.0.0.0"  # the binding it runs with, not the config's default


def test_a_second_up_without_host_keeps_the_token_of_a_lan_bound_serve(
        serve_bound_to_the_lan: list[dict]) -> None:
    """Old code: deploy(token=None), as for reload."""
    args = argparse.Namespace(configs=[Path("services.yaml")], address="auto", host=None,
                              port=None, any_platform=False, log_to_console=False, detach=True)
    up_cli._start(args, SimpleNamespace(install=lambda: None), up_cli._Started(own_ray=False))
    [deployed] = serve_bound_to_the_lan
    assert deployed["token"] is not None and len(deployed["token"]) >= 32


def test_the_decision_requires_a_token_when_either_host_is_beyond_loopback(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Old code: no ``bound_host`` (TypeError); the asked-for host alone decided."""
    monkeypatch.delenv("LIS_TOKEN", raising=False)
    monkeypatch.setattr(token_module, "TOKEN_FILE", tmp_path / "http-token")
    assert http_token("127.0.0.1", bound_host="127.0.0.1") is None
    assert http_token("127.0.0.1", bound_host=None) is None  # Serve not running yet
    made = http_token("127.0.0.1", bound_host="0.0.0.0")
    assert made is not None and len(made) >= 32
    assert http_token("0.0.0.0", bound_host="127.0.0.1") == made


def test_the_bound_host_is_read_from_serves_controller(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(token_module, "serve_details",
                        lambda: {"http_options": {"host": "0.0.0.0", "port": 8000}})
    assert token_module.bound_http_host() == "0.0.0.0"
    monkeypatch.setattr(token_module, "serve_details", lambda: None)
    assert token_module.bound_http_host() is None
