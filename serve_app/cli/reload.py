"""``lis reload SERVICE [CONFIG...]``: replace a service's replicas, one at a time.

For a new model at the same path (or a changed ``s3://`` object, which only
the replicas' fetch can see). The service keeps answering throughout: each new
replica loads the model and is ready before an old one stops. The other
services change only if the configuration given differs from the one running,
so give the same files as ``lis up``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cluster.ray_start import connect_ray
from serve_app.cli.up import READY_TIMEOUT_S, _print_state
from serve_app.config import demo_config_path, load_config
from serve_app.deploy import deploy, wait_for_services
from serve_app.http_token import bound_http_host, http_token
from vocabulary.specs import ServiceSpec

__all__ = ["add_arguments", "run"]

_DESCRIBE_TIMEOUT_S = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("service", metavar="SERVICE", help="the LocalInferenceServiceName")
    parser.add_argument("configs", nargs="*", type=Path, metavar="CONFIG",
                        help="the files `lis up` was given (default: the demo services)")
    parser.add_argument("--address", default="auto",
                        help="the Ray cluster lis runs on (default: %(default)s)")
    parser.add_argument("--host", help="the HTTP bind address `lis up` was given (default: "
                                       "the one the running lis listens on); beyond loopback, "
                                       "here or there, the ingress needs a token")
    parser.add_argument("--port", type=int, help="the HTTP port `lis up` was given")
    parser.add_argument("--timeout", type=float, default=READY_TIMEOUT_S,
                        help="seconds to wait for the new replicas (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.configs or [demo_config_path()])
    spec = config.service(args.service)  # ServiceNotFound before touching the cluster
    connect_ray(args.address)
    # The token follows what Ray Serve actually bound (its first start's host), not this
    # command's --host: the proxies keep listening where they were started.
    bound = bound_http_host()
    host = args.host or bound or config.http.host
    token = http_token(host, config.http.token_env, bound_host=bound)
    before = _running_version(spec)
    versions = deploy(config, host=host, port=args.port or config.http.port, token=token,
                      restart=[spec.name])
    print(f"lis: reloading {spec.name} (now {before or 'not running'}; model "
          f"{versions[spec.name] or 'as the replicas fetch it'})", flush=True)
    states = wait_for_services(config, args.timeout, on_change=_print_state)
    return _report(spec, states)


def _report(spec: ServiceSpec, states: dict[str, dict[str, Any]]) -> int:
    state = states[spec.name]
    if state["state"] != "RUNNING" or state.get("updating"):
        print(f"lis: {spec.name} is {state['state']}"
              + (" (replicas still being replaced)" if state.get("updating") else "")
              + (f" - {state['message']}" if state.get("message") else ""), flush=True)
        return 1
    running = state["replicas"].get("RUNNING", 0)
    print(f"lis: {spec.name} serves version {_running_version(spec)} on {running} "
          f"replica(s)", flush=True)
    return 0


def _running_version(spec: ServiceSpec) -> str | None:
    """The model version one replica reports, or None when none answers."""
    from ray import serve

    from vocabulary.names import APP_NAME

    try:
        handle = serve.get_deployment_handle(spec.name, APP_NAME)
        return handle.describe.remote().result(timeout_s=_DESCRIBE_TIMEOUT_S)["version"]
    except Exception:  # noqa: BLE001 - not deployed yet, or no replica running
        return None
