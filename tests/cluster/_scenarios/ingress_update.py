"""A single box's direct ingress while the set of services changes.

Args (JSON): ``model`` (a classifier artifact folder), ``workdir``.

``lis up``'s local mode: a Ray started with direct ingress on one port. A
first config has one service; a second adds another, which replaces the
ingress replica (its service table changed). The new ingress must get the same
port back; a client polling throughout records how long the port answered
nothing. Redeploying the unchanged config must restart nothing.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psutil
import requests
from _site import classifier_service, free_port, jpeg, report, scenario_args, wait_until, \
    write_config

READY_TIMEOUT_S = 180


def listener(port: int) -> int | None:
    """The pid listening on ``port``."""
    pids = {c.pid for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    return pids.pop() if len(pids) == 1 else None


class Poller(threading.Thread):
    """GET /healthz every 50 ms; records (time, ok) of each try."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/healthz"
        self.seen: list[tuple[float, bool]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                ok = requests.get(self.url, timeout=5).status_code == 200
            except requests.RequestException:
                ok = False
            self.seen.append((time.monotonic(), ok))
            time.sleep(0.05)

    def longest_gap_s(self) -> float:
        gap, started = 0.0, None
        for at, ok in self.seen:
            if not ok and started is None:
                started = at
            elif ok and started is not None:
                gap, started = max(gap, at - started), None
        return gap


def main() -> None:
    from ray import serve

    from serve_app.config import load_config
    from serve_app.deploy import connect_ray, deploy, wait_for_services

    args = scenario_args()
    workdir, model = Path(args["workdir"]), args["model"]
    one = [classifier_service("first", "x86-64", model)]
    two = one + [classifier_service("second", "x86-64", model)]
    config_one = load_config([write_config(workdir / "one.yaml", one)])
    config_two = load_config([write_config(workdir / "two.yaml", two)])
    port = free_port()
    seen: dict[str, Any] = {"port": port}
    connect_ray(None, num_cpus=2, http_port=port)
    try:
        deploy(config_one, port=port)
        wait_for_services(config_one, READY_TIMEOUT_S)
        url = f"http://127.0.0.1:{port}/inference"
        headers = {"Content-Type": "image/jpeg"}
        seen["first_before"] = requests.post(f"{url}/first", data=jpeg(), headers=headers,
                                             timeout=60).status_code
        seen["ingress_before"] = listener(port)
        poller = Poller(port)
        poller.start()
        deploy(config_two, port=port)
        wait_for_services(config_two, READY_TIMEOUT_S)
        seen["ingress_after"] = wait_until(lambda: listener(port), 60)
        seen["second_after"] = requests.post(f"{url}/second", data=jpeg(), headers=headers,
                                             timeout=60).status_code
        seen["first_after"] = requests.post(f"{url}/first", data=jpeg(), headers=headers,
                                            timeout=60).status_code
        poller.stop.set()
        poller.join()
        seen["longest_gap_s"] = poller.longest_gap_s()
        seen["polls"] = len(poller.seen)
        deploy(config_two, port=port)  # unchanged: nothing restarts
        wait_for_services(config_two, READY_TIMEOUT_S)
        seen["ingress_unchanged"] = listener(port)
    finally:
        report(seen)
        serve.shutdown()


if __name__ == "__main__":
    main()
