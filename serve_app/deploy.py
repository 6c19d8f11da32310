"""Deploying the lis application to a running Ray, and waiting for it: what ``lis up`` does
once Ray is there (``cluster.ray_start``).

Kept apart from the CLI so tests and embedding programs deploy the same way.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from cluster.ray_start import direct_ingress_port
from deployments.archive import artifact_version
from deployments.model_source import fetch_model
from deployments.ray_internals import serve_details
from vocabulary.errors import LisError
from vocabulary.names import (
    APP_NAME,
    DEFAULT_HTTP_HOST,
    DEFAULT_HTTP_PORT,
    INGRESS_DEPLOYMENT,
)
from vocabulary.specs import LisConfig

__all__ = ["deploy", "model_versions", "wait_for_services", "wait_until_free"]


def model_versions(config: LisConfig) -> dict[str, str | None]:
    """Each service's model content hash, for models this machine can read (else None).

    On a cluster a local model path is read on every node; the deployer's copy
    decides the version, so a new model there rolls the service's replicas.
    """
    versions: dict[str, str | None] = {}
    for spec in config.services:
        versions[spec.name] = None
        if spec.model_source.startswith("s3://"):
            continue  # only the replica's fetch knows the object (ETag)
        try:  # a local source is returned where it is: no cache is used
            local = fetch_model(spec.model_source, destination=None, store=None,
                                cache_dir=Path(os.devnull))
        except LisError:
            continue  # the replica reports it, where the path matters
        versions[spec.name] = artifact_version(local)
    return versions


def deploy(config: LisConfig, *, host: str = DEFAULT_HTTP_HOST, port: int = DEFAULT_HTTP_PORT,
           token: str | None = None, restart: Collection[str] = ()) -> dict[str, str | None]:
    """Deploy (or update in place) the lis application; returns without waiting.

    Only services whose spec, model content or code changed get new replicas,
    one at a time (see ``serve_app.app``); ``restart`` names services replaced
    regardless (``lis reload``). Returns the model versions deployed.
    """
    from ray import serve
    from ray.serve.config import HTTPOptions, ProxyLocation
    from ray.serve.schema import LoggingConfig

    from serve_app.app import build_app

    versions = model_versions(config)
    nonce = secrets.token_hex(8)
    # Each replica writes lis's own access line; Ray's per-request lines (proxy,
    # ingress, replica) would triple the logging work of every request.
    quiet = LoggingConfig(enable_access_log=False)
    direct_port = direct_ingress_port()
    if direct_port is not None and direct_port != port:
        raise LisError(f"this Ray serves HTTP from its ingress on port {direct_port}, "
                       f"not {port}: restart lis to change the port")
    # One box: the ingress replica serves HTTP itself, so no proxy runs. On a
    # cluster Ray Serve's proxies serve it, with the certificate when there is one.
    tls = config.http.tls if direct_port is None else None
    certificate = {} if tls is None else {"ssl_certfile": str(tls.cert_file),
                                          "ssl_keyfile": str(tls.key_file)}
    serve.start(http_options=HTTPOptions(host=host, port=port, **certificate),
                proxy_location=ProxyLocation.Disabled if direct_port else ProxyLocation.EveryNode,
                logging_config=quiet)
    if tls is not None:
        _require_proxies_with(certificate)
    if direct_port is not None and APP_NAME not in serve.status().applications:
        wait_until_free(host, port)
    app = build_app(config, token=token, model_versions=versions,
                    restart={name: nonce for name in restart},
                    http=(host, port) if direct_port is not None else None)
    serve.run_many([serve.RunTarget(app, name=APP_NAME, route_prefix="/", logging_config=quiet)],
                   wait_for_applications_running=False)
    return versions


def _require_proxies_with(certificate: dict[str, str]) -> None:
    """Refuse to deploy behind proxies that serve plain HTTP where TLS was asked for.

    Ray Serve keeps the HTTP options of its first start: a Serve started
    without the certificate (or with another) ignores this one.
    """
    details = serve_details() or {}
    running = details.get("http_options") or {}
    if any(running.get(key) != value for key, value in certificate.items()):
        raise LisError("http.tls is set, but Ray Serve's proxies already run with other TLS "
                       f"settings (certificate {running.get('ssl_certfile')!r}): they keep "
                       "those of their first start; run `serve shutdown` or restart the "
                       "cluster's lis to serve HTTPS")


# A lis stopped a moment ago may still hold its port while Ray winds down.
_PORT_WAIT_S = 60.0
_PORT_POLL_S = 0.5


def wait_until_free(host: str, port: int, timeout_s: float = _PORT_WAIT_S) -> None:
    """Wait for ``port`` to be bindable: Ray gives up on a port that failed to bind once."""
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
                return
            except OSError as error:
                if time.monotonic() > deadline:
                    raise LisError(f"cannot serve HTTP on {host}:{port}: {error.strerror}") \
                        from None
        time.sleep(_PORT_POLL_S)


# How often the wait asks the controller (about 1 ms of its CPU a time).
_STATE_POLL_S = 0.2
# A deployment's status lags the deploy call by a control-loop tick or more
# (0.5 s on the 2-core reference box): a state settled from the first look may
# be the one from before the deploy, and counts only when a look this much
# later agrees. One seen unsettled first has changed since the deploy: it counts
# at once.
_CONFIRM_S = 1.0


def _settled(state: dict[str, Any]) -> bool:
    return (state["state"] == "RUNNING" and not state.get("updating")) \
        or state["state"] == "PENDING"


def wait_for_services(config: LisConfig, timeout_s: float,
                      on_change: Callable[[str, dict[str, Any]], None] | None = None
                      ) -> dict[str, dict[str, Any]]:
    """Poll until every service runs with all its replicas up to date or is pending
    (no node can host it), one fails, or ``timeout_s`` passes; return the states."""
    from serve_app.app import replica_demand
    from serve_app.service_state import service_states

    demands = {spec.name: replica_demand(spec) for spec in config.services}
    names = [INGRESS_DEPLOYMENT, *demands]  # the ingress too: its port opens only when it runs
    started = time.monotonic()
    deadline = started + timeout_s
    seen: dict[str, str] = {}
    changed: set[str] = set()  # seen unsettled since the deploy
    while True:
        time.sleep(_STATE_POLL_S)
        states = service_states(demands=demands)
        for spec in config.services:
            state = states.setdefault(spec.name, {"state": "DEPLOYING", "message": ""})
            if on_change and seen.get(spec.name) != state["state"]:
                on_change(spec.name, state)
            seen[spec.name] = state["state"]
        failed = {n: states[n]["message"] for n, s in seen.items() if s == "FAILED"}
        if states.get(INGRESS_DEPLOYMENT, {}).get("state") == "FAILED":
            failed[INGRESS_DEPLOYMENT] = states[INGRESS_DEPLOYMENT]["message"]
        if failed:
            raise LisError("services failed to start: " +
                           "; ".join(f"{n}: {m}" for n, m in failed.items()))
        settled = {name for name in names
                   if _settled(states.get(name, {"state": "DEPLOYING"}))}
        changed |= set(names) - settled
        confirmed = time.monotonic() - started >= _CONFIRM_S
        if all(name in settled and (name in changed or confirmed) for name in names) \
                or time.monotonic() > deadline:
            return states
