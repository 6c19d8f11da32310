"""``lis up``: start or join Ray, deploy the services, serve until Ctrl-C or SIGTERM.

Boards are power-cycled and their services restarted by systemd, so a stop
always stops: the first SIGINT or SIGTERM shuts Ray Serve and Ray down, a
second one, or ``STOP_DEADLINE_S`` passing, kills whatever of the stack is
left (this process and every process it started) and exits.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import cv2
import psutil

from cluster.ray_start import connect_ray
from serve_app.config import demo_config_path, load_config
from serve_app.deploy import deploy, wait_for_services
from serve_app.http_token import bound_http_host, http_token
from vocabulary.errors import ConfigError, ConfigIssue
from vocabulary.names import DEFAULT_HTTP_HOST, DEFAULT_HTTP_PORT

# Where Ray keeps replica logs on every node (Ray's default temp dir).
SERVE_LOG_DIR = "/tmp/ray/session_latest/logs/serve/"
# First start includes Ray itself and every model's load.
READY_TIMEOUT_S = 300.0
# From the first signal to the end of the whole stack, come what may: within
# the 30 s a board's service manager is promised, and well within systemd's 90.
STOP_DEADLINE_S = 25.0
# How often the main thread wakes to run a signal handler (see ``_Stopper``).
_WAKE_S = 0.5


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
    return (f"curl -s -X POST http://{url_host}:{port}/inference/{service.name}{auth} "
            f"-H 'Content-Type: image/jpeg' --data-binary @{shlex.quote(str(image or 'image.jpg'))}")


def run(args: argparse.Namespace) -> int:
    stopper = _Stopper()
    try:
        served = _start(args, stopper)
        if args.detach:
            return 0
        stopper.serving = True
        stopper.wait()
    except KeyboardInterrupt:
        if not stopper.requested.is_set():
            raise  # not one of our signals: leave as the CLI does
        served = True
    if served:
        stopper.shut_down()
    return 0


def _start(args: argparse.Namespace, stopper: _Stopper) -> bool:
    """Start or join Ray and deploy; True once there is something to shut down."""
    sources = args.configs or [demo_config_path()]
    config = load_config(sources)
    if not config.services:
        raise ConfigError(", ".join(map(str, sources)), [ConfigIssue("services", None,
                                                                     "no inference service")])
    args.host = args.host or config.http.host
    args.port = args.port or config.http.port
    token = http_token(args.host, config.http.token_env)  # a bad token refused before Ray starts
    connect_ray(args.address, any_platform=args.any_platform, log_to_driver=args.log_to_console,
                http_port=args.port)
    # A Serve already running keeps the host it was first started with, whatever --host says.
    token = http_token(args.host, config.http.token_env, bound_host=bound_http_host())
    stopper.install()  # again: Ray's core worker put its own SIGTERM handler in
    print(f"lis: deploying {len(config.services)} service(s) from "
          f"{', '.join(str(s) for s in sources)}", flush=True)
    deploy(config, host=args.host, port=args.port, token=token)
    states = wait_for_services(config, READY_TIMEOUT_S, on_change=_print_state)
    pending = [n for n in (s.name for s in config.services) if states[n]["state"] != "RUNNING"]
    url_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"lis: serving on http://{url_host}:{args.port}"
          + (f" ({len(pending)} service(s) still pending: {', '.join(pending)})" if pending
             else " - all services ready"), flush=True)
    print(f"try: {_example(config, args.host, args.port, token, _sample_image(sources))}",
          flush=True)
    if not args.log_to_console:
        print(f"logs (one access line per request): {SERVE_LOG_DIR} on each node", flush=True)
    if token and not args.detach:
        print("the ingress requires 'Authorization: Bearer <token>' (LIS_TOKEN)", flush=True)
    return True


class _Stopper:
    """SIGINT and SIGTERM, handled so that a stop always ends the stack in time.

    Python runs signal handlers on the main thread only, between bytecodes;
    the kernel may hand a process-directed signal to any of Ray's threads, and
    an untimed wait on the main thread is then never woken to run the handler
    (seen: ``lis up`` still serving minutes after a SIGINT). So the main
    thread waits in short steps. Ray Serve's controller can retry its graceful
    shutdown forever (seen: 20 minutes), so a watchdog thread started by the
    first signal ends everything at the deadline, and a second signal at once.
    """

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.serving = False  # False: a signal interrupts start-up where it is
        self._signals = 0
        self.install()

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            _kill_the_stack(f"a second {signal.Signals(signum).name}")
        self.requested.set()
        threading.Thread(target=self._watchdog, name="lis-stop-watchdog", daemon=True).start()
        if not self.serving:
            raise KeyboardInterrupt

    def _watchdog(self) -> None:
        threading.Event().wait(STOP_DEADLINE_S)  # a deadline: time passes on purpose
        _kill_the_stack(f"the stop took over {STOP_DEADLINE_S:g} s")

    def wait(self) -> None:
        while not self.requested.wait(_WAKE_S):
            pass

    def shut_down(self) -> None:
        print("lis: shutting down", flush=True)
        import ray
        from ray import serve

        if not ray.is_initialized():
            return  # stopped before Ray was started or joined
        try:
            serve.shutdown()
        finally:
            ray.shutdown()  # a Ray this process started stops with it


def _kill_the_stack(reason: str) -> None:
    """SIGKILL every process this one started (Ray's included), then exit at once."""
    print(f"lis: {reason}: killing what is left of the stack", file=sys.stderr, flush=True)
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        children = []
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass  # already gone
    psutil.wait_procs(children, timeout=5)
    os._exit(1)


