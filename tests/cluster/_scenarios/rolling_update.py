"""Rolling model updates under continuous load.

Args (JSON): ``models`` (three classifier artifact folders A, B, C whose answers
differ), ``workdir``.

A service with two replicas serves model A while a client thread sends requests
throughout. Then ``lis up`` with the model path changed to B, then model C put
at B's path and ``lis reload``. Every answer is recorded, so a failed request, or
an answer from a model that should be gone, shows.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

from _site import (
    Site,
    classifier_service,
    jpeg,
    lis,
    report,
    scenario_args,
    wait_until,
    write_config,
)

SERVICE = "rollingClassifier"
MAX_REQUESTS = 4000
LOAD_DEADLINE_S = 200
# Between requests: keeps the load steady without starving replica start-up on 2 cores.
PAUSE_S = 0.02
# For the client's next answers (20 of them), with room to spare on a busy 2-core box.
ANSWERS_TIMEOUT_S = 60


class Client(threading.Thread):
    """Sends the same image again and again; records (status, body) of every answer."""

    def __init__(self, site: Site) -> None:
        super().__init__(daemon=True)
        self.site = site
        self.answers: list[tuple[int, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        body = jpeg()
        deadline = time.monotonic() + LOAD_DEADLINE_S
        while not self.stop.is_set() and len(self.answers) < MAX_REQUESTS \
                and time.monotonic() < deadline:
            try:
                answer = self.site.post(SERVICE, body, timeout_s=30)
                self.answers.append((answer.status_code, answer.text))
            except Exception as error:  # noqa: BLE001 - a failed request is an observation
                self.answers.append((0, f"{type(error).__name__}: {error}"))
            time.sleep(PAUSE_S)  # paces the load on purpose (see PAUSE_S)

    def mark(self) -> int:
        return len(self.answers)

    def wait_for(self, count: int) -> None:
        """Until the client has ``count`` answers, or has stopped (the test judges what it got)."""
        wait_until(lambda: len(self.answers) >= count or not self.is_alive(),
                   timeout_s=ANSWERS_TIMEOUT_S, interval_s=0.2,
                   message=f"the client's first {count} answers")


class ReplicaMonitor(threading.Thread):
    """Samples the service's replica states, to show how many run and start at once."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[dict[str, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        from ray import serve

        from vocabulary.names import APP_NAME

        while not self.stop.is_set() and len(self.samples) < MAX_REQUESTS:
            deployment = serve.status().applications[APP_NAME].deployments[SERVICE]
            self.samples.append({str(getattr(state, "value", state)): count
                                 for state, count in deployment.replica_states.items()})
            self.stop.wait(0.25)


def replica_versions(site: Site) -> list[str]:
    return sorted({site.describe(SERVICE)["version"] for _ in range(8)})


def main() -> None:
    args = scenario_args()
    work = Path(args["workdir"])
    model_a, model_b, model_c = (Path(m) for m in args["models"])
    live_a, live_b = work / "models" / "a", work / "models" / "b"
    shutil.copytree(model_a, live_a)
    shutil.copytree(model_b, live_b)
    service = {"num_replicas": 2}
    config_a = write_config(work / "a.json", [classifier_service(SERVICE, "x86-64", str(live_a),
                                                                 **service)])
    config_b = write_config(work / "b.json", [classifier_service(SERVICE, "x86-64", str(live_b),
                                                                 **service)])
    site = Site()
    seen: dict[str, Any] = {}
    client = Client(site)
    monitor = ReplicaMonitor()
    try:
        site.add("gateway", "x86-64", num_cpus=2)
        seen["up_a"] = lis("up", str(config_a), "--port", str(site.port), "--detach")
        seen["versions_a"] = replica_versions(site)
        client.start()
        client.wait_for(20)
        monitor.start()

        seen["up_b_from"] = client.mark()
        seen["up_b"] = lis("up", str(config_b), "--port", str(site.port), "--detach")
        seen["up_b_to"] = client.mark()
        seen["services_b"] = site.services()[SERVICE]
        seen["versions_b"] = replica_versions(site)
        client.wait_for(client.mark() + 20)

        # A new artifact at the same path, swapped in whole.
        shutil.copytree(model_c, work / "models" / "b.new")
        live_b.rename(work / "models" / "b.old")
        (work / "models" / "b.new").rename(live_b)
        seen["reload_from"] = client.mark()
        seen["reload"] = lis("reload", SERVICE, str(config_b), "--port", str(site.port))
        seen["reload_to"] = client.mark()
        seen["services_c"] = site.services()[SERVICE]
        seen["versions_c"] = replica_versions(site)
        client.wait_for(client.mark() + 20)
    finally:
        for thread in (client, monitor):
            thread.stop.set()
            if thread.is_alive():
                thread.join(timeout=60)
        seen["answers"] = client.answers
        seen["replica_samples"] = monitor.samples
        site.shutdown()
        report(seen)


if __name__ == "__main__":
    main()
