"""A single box's direct ingress while the set of services changes.

Args (JSON): ``model`` (a classifier artifact folder), ``workdir``.

``lis up``'s local mode: a Ray started with direct ingress on one port. A
first config has one service; a second adds another, which replaces the
ingress replica (its service table changed). The new ingress must get the same
port back; a client polling throughout records when the port answered nothing.
Redeploying the unchanged config must restart nothing.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psutil
import requests
from _site import (
    POLL_S,
    classifier_service,
    free_port,
    jpeg,
    report,
    scenario_args,
    wait_until,
    write_config,
)

READY_TIMEOUT_S = 180
HEALTHZ_EVERY_S = 0.05


def listener(port: int) -> int | None:
    """The pid listening on ``port``."""
    pids = {c.pid for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    return pids.pop() if len(pids) == 1 else None


class Poller(threading.Thread):
    """GET /healthz every ``HEALTHZ_EVERY_S``; records whether each try was answered."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/healthz"
        self.seen: list[bool] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                ok = requests.get(self.url, timeout=5).status_code == 200
            except requests.RequestException:
                ok = False
            self.seen.append(ok)
            self.stop.wait(HEALTHZ_EVERY_S)  # the sampling interval, on purpose


def main() -> None:
    from ray import serve

    from cluster.ray_start import connect_ray
    from serve_app.config import load_config
    from serve_app.deploy import deploy, wait_for_services

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
        wait_until(lambda: poller.seen, timeout_s=60, message="the poller's first answer")
        seen["swap_from"] = len(poller.seen)
        deploy(config_two, port=port)
        wait_for_services(config_two, READY_TIMEOUT_S)
        seen["ingress_after"] = wait_until(lambda: listener(port), timeout_s=60,
                                           interval_s=POLL_S, message="a listener on the port")
        seen["swap_to"] = len(poller.seen)
        seen["second_after"] = requests.post(f"{url}/second", data=jpeg(), headers=headers,
                                             timeout=60).status_code
        seen["first_after"] = requests.post(f"{url}/first", data=jpeg(), headers=headers,
                                            timeout=60).status_code
        wait_until(lambda: len(poller.seen) > seen["swap_to"], timeout_s=60,
                   message="the poller's first try after the swap")
        poller.stop.set()
        poller.join()
        seen["polls"] = poller.seen
        deploy(config_two, port=port)  # unchanged: nothing restarts
        wait_for_services(config_two, READY_TIMEOUT_S)
        seen["ingress_unchanged"] = listener(port)
    finally:
        report(seen)
        serve.shutdown()


if __name__ == "__main__":
    main()
