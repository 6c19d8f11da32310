"""Losing worker nodes: replicas move to another eligible node, or wait for one.

Args (JSON): ``model`` (a small classifier), ``slow_model`` (one that takes
seconds per request, so a request is surely in flight when its node dies),
``workdir``.

Two x86-64 nodes, a Jetson and a Pi. The x86-64 node running the slow service's
replica dies while it answers a request; later the only Jetson dies.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import requests
from _site import (
    HTTP_TIMEOUT_S,
    NOT_YET,
    POLL_S,
    Site,
    classifier_service,
    lis,
    report,
    scenario_args,
    wait_until,
    write_config,
)

START_TIMEOUT_S = 120
IN_FLIGHT_TIMEOUT_S = 120
# The slow model needs seconds per request and its replica runs one at a time:
# when the node dies, the first request is running and the others wait in the replica.
IN_FLIGHT_REQUESTS = 3


def answer(response: Any) -> dict[str, Any]:
    error = response.json().get("error", {}) if response.status_code != 200 else {}
    return {"status": response.status_code, "type": error.get("type"),
            "message": error.get("message")}


def in_flight_requests(site: Site, service: str, count: int) -> tuple[list[threading.Thread],
                                                                        list[dict[str, Any]]]:
    """``count`` concurrent requests; the replica runs one at a time, so they stay in flight."""
    results: list[dict[str, Any]] = [{} for _ in range(count)]

    def send(into: dict[str, Any]) -> None:
        try:
            into.update(answer(site.post(service, timeout_s=IN_FLIGHT_TIMEOUT_S)))
        except Exception as error:  # noqa: BLE001 - a hang shows as a client timeout
            into.update(status=None, type=type(error).__name__, message=str(error))

    threads = [threading.Thread(target=send, args=(into,), daemon=True) for into in results]
    for thread in threads:
        thread.start()
    return threads, results


def in_flight(site: Site, service: str) -> float:
    """The requests for ``service`` that the ingress is answering now (its /metrics)."""
    answer = requests.get(f"{site.endpoint}/metrics", timeout=HTTP_TIMEOUT_S)
    answer.raise_for_status()
    gauge = f'lis_requests_in_flight{{service="{service}"}} '
    return next((float(line[len(gauge):]) for line in answer.text.splitlines()
                 if line.startswith(gauge)), 0.0)


def state_of(site: Site, service: str) -> dict[str, Any]:
    entry = site.services()[service]
    return {key: entry.get(key) for key in ("state", "message", "replicas")}


def main() -> None:
    args = scenario_args()
    config = write_config(Path(args["workdir"]) / "services.json", [
        classifier_service("x86Slow", "x86-64", args["slow_model"],
                           LocalInferenceServiceTimeoutSeconds="90"),
        classifier_service("jetsonClassifier", "Aarch64JTX2", args["model"],
                           GPUAcceleration="CPU"),
        classifier_service("piClassifier", "ARMv7", args["model"]),
    ])
    site = Site()
    seen: dict[str, Any] = {"nodes": {}}
    others = ("jetsonClassifier", "piClassifier")
    try:
        for name, platform in (("x86_a", "x86-64"), ("x86_b", "x86-64"),
                               ("jetson", "Aarch64JTX2"), ("pi", "ARMv7")):
            seen["nodes"][name] = site.add(name, platform)
        seen["up"] = lis("up", str(config), "--port", str(site.port), "--detach")
        if seen["up"]["exit"]:
            raise RuntimeError("lis up failed")
        before = site.describe("x86Slow")["node_id"]
        victim = next(n for n, node_id in seen["nodes"].items() if node_id == before)
        seen["slow_node_before"] = victim

        # 1. The x86-64 node dies while the slow service answers a request.
        senders, seen["in_flight"] = in_flight_requests(site, "x86Slow", IN_FLIGHT_REQUESTS)
        wait_until(lambda: in_flight(site, "x86Slow") == IN_FLIGHT_REQUESTS,
                   timeout_s=IN_FLIGHT_TIMEOUT_S, interval_s=0.1,
                   message=f"{IN_FLIGHT_REQUESTS} requests of x86Slow in flight")
        # In flight at the ingress is not yet accepted by the replica: Ray Serve
        # sends a request the replica has not accepted to another replica, so a
        # node killed that early loses nothing. Wait until the replica works on one.
        wait_until(lambda: site.describe("x86Slow")["running"] >= 1,
                   timeout_s=IN_FLIGHT_TIMEOUT_S, interval_s=0.1,
                   message="x86Slow's replica running a request")
        site.remove(victim)
        seen["others_right_after_x86_loss"] = {s: site.post(s).status_code for s in others}
        for sender in senders:
            sender.join(IN_FLIGHT_TIMEOUT_S + 10)
        wait_until(lambda: site.describe("x86Slow")["node_id"] != before,
                   timeout_s=START_TIMEOUT_S, interval_s=POLL_S, retry_on=NOT_YET,
                   message="x86Slow's replica on the other x86-64 node")
        seen["slow_node_after"] = next(n for n, node_id in seen["nodes"].items()
                                       if node_id == site.describe("x86Slow")["node_id"])
        seen["slow_answer_after"] = site.post("x86Slow").status_code

        # 2. The only Jetson dies: its service waits for another.
        site.remove("jetson")
        wait_until(lambda: state_of(site, "jetsonClassifier")["state"] == "PENDING",
                   timeout_s=START_TIMEOUT_S, interval_s=POLL_S, retry_on=NOT_YET,
                   message="jetsonClassifier pending after its node died")
        seen["jetson_after_loss"] = state_of(site, "jetsonClassifier")
        seen["jetson_request_while_pending"] = answer(site.post("jetsonClassifier"))
        seen["others_after_jetson_loss"] = {s: site.post(s).status_code
                                            for s in ("x86Slow", "piClassifier")}
        seen["status_after_jetson_loss"] = lis("status", "--endpoint", site.endpoint)

        # 3. A Jetson joins again: the service comes back by itself.
        seen["nodes"]["jetson_2"] = site.add("jetson_2", "Aarch64JTX2")
        wait_until(lambda: state_of(site, "jetsonClassifier")["state"] == "RUNNING",
                   timeout_s=START_TIMEOUT_S, interval_s=POLL_S, retry_on=NOT_YET,
                   message="jetsonClassifier running on the new Jetson")
        seen["jetson_after_rejoin"] = state_of(site, "jetsonClassifier")
        seen["jetson_node_after_rejoin"] = site.describe("jetsonClassifier")["node_id"]
    finally:
        site.shutdown()
        report(seen)


if __name__ == "__main__":
    main()
