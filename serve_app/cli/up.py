"""``lis up``: start or join Ray, deploy the services, serve until Ctrl-C or SIGTERM.

Once the services are ready, this process becomes a small watcher
(``serve_app.cli._watch``) that waits for the stop without Ray in memory;
the stop itself, and what a signal during start-up does, are described
there.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import threading
from pathlib import Path
from typing import Any

import cv2

from cluster.ray_start import connect_ray
from serve_app.cli._watch import Stopper, become_watcher, record_signals, shut_down
from serve_app.config import demo_config_path, load_config
from serve_app.deploy import deploy, wait_for_services
from serve_app.http_token import bound_http_host, http_token
from vocabulary.errors import ConfigError, ConfigIssue
from vocabulary.names import DEFAULT_HTTP_HOST, DEFAULT_HTTP_PORT

# Where Ray keeps replica logs on every node (Ray's default temp dir).
SERVE_LOG_DIR = "/tmp/ray/session_latest/logs/serve/"
# First start includes Ray itself and every model's load.
READY_TIMEOUT_S = 300.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configs", nargs="*", type=Path, metavar="CONFIG",
                        help="connector/resource definitions or lis services files "
                             "(default: the demo services)")
    parser.add_argument("--address", help="join a running Ray cluster: 'auto' or ray://HOST:PORT")
    parser.add_argument("--host", help=f"HTTP bind address (default: the config's http.host or "
                                        f"{DEFAULT_HTTP_HOST}; beyond loopback a bearer token is "
                                        f"required)")
    parser.add_argument("--port", type=int,
                        help=f"HTTP port (default: the config's http.port or {DEFAULT_HTTP_PORT})")
    parser.add_argument("--any-platform", action="store_true",
                        help="advertise all three connector platforms on this machine")
    parser.add_argument("--log-to-console", action="store_true",
                        help="stream every replica's log lines here (costs CPU per request); "
                             "by default they stay in Ray's log folder")
    parser.add_argument("--detach", action="store_true",
                        help="return once deployed instead of serving until Ctrl-C")


def _print_state(name: str, state: dict[str, Any]) -> None:
    message = f" - {state['message']}" if state.get("message") and \
        state["state"] != "RUNNING" else ""
    print(f"  {name}: {state['state']}{message}", flush=True)


def _sample_image(sources: list[Path]) -> Path | None:
    """For the demo services: a generated scene of shapes to try them on."""
    if sources != [demo_config_path()]:
        return None
    sample = demo_config_path().parent.parent / "build" / "models" / "sample-scene.jpg"
    if not sample.is_file():
        from modelkit.shapes import detection_sample

        sample.parent.mkdir(parents=True, exist_ok=True)
        image = detection_sample(seed=2026, index=0).image
        cv2.imwrite(str(sample), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return sample


def _example(config: Any, host: str, port: int, token: str | None,
             image: Path | None) -> str:
    url_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    service = next((s for s in config.services if s.algorithm == "object-detection"),
                   config.services[0])
    auth = ' -H "Authorization: Bearer $LIS_TOKEN"' if token else ""
    scheme = "https" if config.http.tls else "http"
    return (f"curl -s -X POST {scheme}://{url_host}:{port}/inference/{service.name}{auth} "
            f"-H 'Content-Type: image/jpeg' --data-binary @{shlex.quote(str(image or 'image.jpg'))}")


def run(args: argparse.Namespace) -> int:
    stopper = Stopper()
    signals_fd = record_signals()  # before Ray's threads: a signal they catch is noted too
    started = _Started(own_ray=not args.address)
    try:
        _start(args, stopper, started)
        # From here a signal only notes the stop (and the pipe keeps it for the watcher).
        stopper.serving = not args.detach
    except KeyboardInterrupt:
        if not stopper.requested.is_set():
            raise  # not one of our signals: leave as the CLI does
        shut_down(started.address, own_ray=started.own_ray)
        return 0
    if args.detach:
        if started.own_ray:
            print(f"lis: detached; its Ray ({started.address}) keeps serving until "
                  "`ray stop`", flush=True)
        return 0
    if args.log_to_console:  # the replicas' lines stream to this process, Ray's driver: it stays
        stopper.wait()
        shut_down(started.address, own_ray=started.own_ray)
        return 0
    become_watcher(started.address or "", own_ray=started.own_ray, signals_fd=signals_fd)


def _import_deployer() -> None:
    for module in ("ray.serve", "serve_app.app"):
        importlib.import_module(module)


class _Started:
    """What start-up got to: the Ray connected to, and whether this process started it."""

    def __init__(self, *, own_ray: bool) -> None:
        self.own_ray = own_ray
        self.address: str | None = None


def _start(args: argparse.Namespace, stopper: Stopper, started: _Started) -> None:
    """Start or join Ray and deploy."""
    sources = args.configs or [demo_config_path()]
    # The demo declares the x86-64 connectors; its services are meant to run on
    # whatever box `make run` is on (an aarch64 board serves them compiled).
    args.any_platform = args.any_platform or not args.configs
    config = load_config(sources)
    if not config.services:
        raise ConfigError(", ".join(map(str, sources)), [ConfigIssue("services", None,
                                                                     "no inference service")])
    args.host = args.host or config.http.host
    args.port = args.port or config.http.port
    token = http_token(args.host, config.http.token_env)  # a bad token refused before Ray starts
    # What deploying imports (Ray Serve, the application's modules: 0.6 s of
    # CPU) loads while Ray's processes start, instead of after them.
    threading.Thread(target=_import_deployer, name="lis-import", daemon=True).start()
    # A Ray started here outlives this process: its exec into the watcher, which
    # stops it, or its return with --detach, which leaves the services serving.
    started.address = connect_ray(args.address, any_platform=args.any_platform,
                                  log_to_driver=args.log_to_console, http_port=args.port,
                                  outlive_caller=True)
    if args.address:
        # A Serve already running keeps the host it was first started with, whatever
        # --host says. (A Ray started just now runs no Serve yet.)
        token = http_token(args.host, config.http.token_env, bound_host=bound_http_host())
    stopper.install()  # again: Ray's core worker put its own SIGTERM handler in
    print(f"lis: deploying {len(config.services)} service(s) from "
          f"{', '.join(str(s) for s in sources)}", flush=True)
    deploy(config, host=args.host, port=args.port, token=token)
    states = wait_for_services(config, READY_TIMEOUT_S, on_change=_print_state)
    pending = [n for n in (s.name for s in config.services) if states[n]["state"] != "RUNNING"]
    url_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    scheme = "https" if config.http.tls else "http"
    print(f"lis: serving on {scheme}://{url_host}:{args.port}"
          + (f" ({len(pending)} service(s) still pending: {', '.join(pending)})" if pending
             else " - all services ready"), flush=True)
    print(f"try: {_example(config, args.host, args.port, token, _sample_image(sources))}",
          flush=True)
    if config.pipelines:
        print(f"pipelines: {', '.join(p.name for p in config.pipelines)} "
              "(lis status shows what each has read, inferred and published)", flush=True)
    if not args.log_to_console:
        print(f"logs (one access line per request): {SERVE_LOG_DIR} on each node", flush=True)
    if token and not args.detach:
        print("the ingress requires 'Authorization: Bearer <token>' (LIS_TOKEN)", flush=True)
