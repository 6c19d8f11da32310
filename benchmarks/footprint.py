"""The whole stack's memory, per process, and the time from ``lis up`` to ready.

``measure_footprint`` starts ``lis up`` with the demo services on a free port,
times it from the command's start to its ``lis: serving on`` line, waits for
the stack to settle (its CPU below ``SETTLE_CPU`` of one core over a
``SETTLE_WINDOW_S`` window), then reads the PSS and RSS of ``lis up`` and
every process under it, each labelled by its role. It then posts the sample
scene to all three services from a few client threads for ``LOAD_S`` seconds
and reads them again at the end of the load, stops lis with SIGINT and waits
for the whole stack to be gone. PSS (each shared page split between the
processes that map it) adds up to what the stack costs the box; reading it
takes root (``/proc/PID/smaps_rollup``). ``make bench`` puts the table in
``docs/benchmarks.md``; ``python -m benchmarks.footprint`` prints it alone.
Not a test: nothing here asserts a size or a time.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
LIS = ROOT / ".venv" / "bin" / "lis"
SAMPLE = ROOT / "build" / "models" / "sample-scene.jpg"
DEMO_SERVICES = ("imageClassification", "objectDetection", "objectDetectionYolo")
READY_LINE = "lis: serving on"
READY_TIMEOUT_S = 300.0
# Idle: the whole stack below a fifth of one core over a 3 s window (an idle demo
# lis takes about 8 % of the 2-core box: the controller's loop, metrics, health
# checks, Ray's agents), at least 5 s after ready, at most 60 s.
SETTLE_CPU, SETTLE_WINDOW_S, SETTLE_MIN_S, SETTLE_MAX_S = 0.20, 3.0, 5.0, 60.0
LOAD_S, THREADS_PER_SERVICE = 10.0, 2
STOP_TIMEOUT_S = 40.0
MB = 2**20

# (role, what it is for): the rows' order and the notes under the table.
ROLES: dict[str, str] = {
    "lis up": "lis's CLI: starts Ray and deploys as a Ray driver, then replaces itself "
              "(exec) with a small watcher that waits for Ctrl-C or SIGTERM and stops "
              "the stack",
    "gcs_server": "Ray's Global Control Service: cluster metadata, actor and node "
                  "tables, the key-value store",
    "raylet": "Ray's node manager: schedules tasks and actors, starts workers, hosts "
              "the shared-memory object store (plasma)",
    "dashboard (head)": "Ray's dashboard head process; with include_dashboard=False (lis) "
                        "it loads only its usage-stats module, no web UI",
    "dashboard agent": "per-node agent under the raylet; on a box lis runs it minimal "
                       "(no gRPC or HTTP server: Ray's metrics export, the dashboard's "
                       "endpoints and job submission are off)",
    "runtime-env agent": "per-node agent that builds runtime environments (pip, "
                         "working_dir...) before a worker starts",
    "log monitor": "tails the workers' log files and publishes their lines to "
                   "drivers (log_to_driver)",
    "autoscaler monitor": "the autoscaler's monitor: reads the GCS's load and asks "
                          "a node provider for nodes",
    "ray client server": "Ray Client's server (ray://)",
    "Serve controller": "Ray Serve's controller actor: reconciles deployments, "
                        "health checks, autoscaling decisions",
    "Serve proxy": "Ray Serve's HTTP proxy actor",
    "ingress replica": "lis's ingress deployment (LisIngress): lis's HTTP server, "
                       "routes each request to its service's replica",
    "idle worker": "a pooled Ray worker process with no task or actor (yet)",
    "other": "any other process under lis up",
}


@dataclass
class Reading:
    """One process's memory at one moment."""
    pid: int
    role: str
    pss: int
    uss: int
    rss: int


@dataclass
class Footprint:
    ready_s: float
    settle_s: float
    idle: list[Reading]
    load: list[Reading]
    load_requests: dict[str, int] = field(default_factory=dict)
    load_errors: int = 0
    load_s: float = LOAD_S
    stopped_s: float = 0.0
    leftovers: int = 0
    neighbours: int = 0  # Ray processes of other stacks on the box at the idle read


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def role_of(process: psutil.Process, driver_pid: int) -> str:
    """The role of one process of the stack, from its name and command line.

    Ray's workers and its two per-node agents rename themselves (setproctitle):
    ``ray::ServeController``, ``ray::ServeReplica:<app>:<deployment>`` (lis's
    ingress is ``ray::ServeReplica:lis:LisIngress``), ``ray::IDLE`` for a pooled
    worker with nothing to run, ``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``.
    """
    if process.pid == driver_pid:
        return "lis up"
    try:
        name = process.name()
        cmdline = " ".join(process.cmdline())
    except psutil.Error:
        return "other"
    if "gcs_server" in name or "/gcs_server" in cmdline:
        return "gcs_server"
    if name == "raylet" or "/raylet " in cmdline:
        return "raylet"
    if "dashboard/agent.py" in cmdline or cmdline.startswith("ray::DashboardAgent"):
        return "dashboard agent"
    if "dashboard/dashboard.py" in cmdline:
        return "dashboard (head)"
    if "runtime_env/agent/main.py" in cmdline or cmdline.startswith("ray::RuntimeEnvAgent"):
        return "runtime-env agent"
    if "log_monitor.py" in cmdline:
        return "log monitor"
    if "autoscaler/_private/monitor.py" in cmdline:
        return "autoscaler monitor"
    if "ray.util.client.server" in cmdline:
        return "ray client server"
    if cmdline.startswith("ray::ServeController"):
        return "Serve controller"
    if cmdline.startswith("ray::ProxyActor"):
        return "Serve proxy"
    if cmdline.startswith("ray::ServeReplica:"):
        deployment = cmdline.split()[0].rsplit(":", 1)[-1]
        if deployment in DEMO_SERVICES:
            return f"replica {deployment}"
        return "ingress replica"  # lis's one other deployment
    if cmdline.startswith("ray::IDLE"):
        return "idle worker"
    return "other"


def stack(driver: psutil.Process) -> list[psutil.Process]:
    try:
        return [driver, *driver.children(recursive=True)]
    except psutil.Error:
        return []


def read_memory(driver: psutil.Process) -> list[Reading]:
    readings = []
    for process in stack(driver):
        try:
            info = process.memory_full_info()
        except psutil.Error:
            continue  # gone meanwhile
        readings.append(Reading(process.pid, role_of(process, driver.pid), info.pss, info.uss,
                                info.rss))
    return readings


def other_ray_processes(ours: set[int]) -> int:
    """Ray processes on the box outside this stack: they share library pages, so lower its PSS."""
    found = 0
    for process in psutil.process_iter(["pid", "name", "cmdline"]):
        if process.info["pid"] in ours:
            continue
        cmdline = " ".join(process.info["cmdline"] or [])
        if cmdline.startswith("ray::") or process.info["name"] in ("raylet", "gcs_server"):
            found += 1
    return found


def _cpu_seconds(processes: Iterable[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def wait_idle(driver: psutil.Process) -> float:
    """Seconds waited until the stack's CPU stays below ``SETTLE_CPU`` of a core for a window."""
    started = time.monotonic()
    time.sleep(SETTLE_MIN_S)
    while time.monotonic() - started < SETTLE_MAX_S:
        processes = stack(driver)
        before = _cpu_seconds(processes)
        time.sleep(SETTLE_WINDOW_S)
        if (_cpu_seconds(processes) - before) / SETTLE_WINDOW_S < SETTLE_CPU:
            break
    return time.monotonic() - started


def post_loop(port: int, service: str, body: bytes, stop: threading.Event,
              counts: dict[str, int], errors: list[int], lock: threading.Lock) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        while not stop.is_set():
            try:
                connection.request("POST", f"/inference/{service}", body,
                                   {"Content-Type": "image/jpeg"})
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                ok = False
            with lock:
                if ok:
                    counts[service] += 1
                else:
                    errors[0] += 1
    finally:
        connection.close()


def read_lines(stream: Iterable[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


def measure_footprint(config: Path | None = None, load_s: float = LOAD_S,
                      echo: bool = False) -> Footprint:
    """Start ``lis up``, time it to ready, read the stack's memory idle and under load, stop it."""
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "TOPHUB_LOCATION": "NONE"}
    command = [str(LIS), "up", *([str(config)] if config else []), "--port", str(port)]
    started = time.monotonic()
    lis = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=read_lines, args=(lis.stdout, lines), daemon=True).start()
    driver = psutil.Process(lis.pid)
    known: dict[int, psutil.Process] = {}
    try:
        ready_s = None
        while ready_s is None:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                if lis.poll() is not None or time.monotonic() - started > READY_TIMEOUT_S:
                    raise RuntimeError("lis up did not get to ready") from None
                continue
            if echo:
                print(f"  | {line.rstrip()}", flush=True)
            if line.startswith(READY_LINE):
                ready_s = time.monotonic() - started
        settle_s = wait_idle(driver)
        known.update((p.pid, p) for p in stack(driver))
        idle = read_memory(driver)
        neighbours = other_ray_processes({r.pid for r in idle})

        body = SAMPLE.read_bytes()  # written by `lis up` for the demo services
        stop, lock = threading.Event(), threading.Lock()
        counts, errors = dict.fromkeys(DEMO_SERVICES, 0), [0]
        clients = [threading.Thread(target=post_loop, daemon=True,
                                    args=(port, service, body, stop, counts, errors, lock))
                   for service in DEMO_SERVICES for _ in range(THREADS_PER_SERVICE)]
        for client in clients:
            client.start()
        time.sleep(load_s)
        known.update((p.pid, p) for p in stack(driver))
        load = read_memory(driver)  # the clients still posting
        stop.set()
        for client in clients:
            client.join(30)
        footprint = Footprint(ready_s, settle_s, idle, load, counts, errors[0], load_s,
                              neighbours=neighbours)
    finally:
        known.update((p.pid, p) for p in stack(driver))
        stopping = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            lis.send_signal(signal.SIGINT)
        try:
            lis.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            lis.kill()
        _, alive = psutil.wait_procs(list(known.values()),
                                     timeout=max(1.0, STOP_TIMEOUT_S - (time.monotonic()
                                                                          - stopping)))
        for process in alive:  # only the processes this lis started
            with contextlib.suppress(psutil.Error):
                process.kill()
    footprint.stopped_s = time.monotonic() - stopping
    footprint.leftovers = len(alive)
    return footprint


def _by_role(readings: list[Reading]) -> dict[str, list[Reading]]:
    grouped: dict[str, list[Reading]] = {}
    for reading in readings:
        grouped.setdefault(reading.role, []).append(reading)
    return grouped


def _order(role: str) -> tuple[int, str]:
    """Ray's processes, then Serve's, then the replicas by name, then the rest."""
    names = list(ROLES)
    if role.startswith("replica "):
        return names.index("ingress replica"), role
    return (names.index(role) if role in names else len(names)), role


def footprint_table(footprint: Footprint) -> str:
    """Markdown: one row per role (processes summed), then the totals and the times."""
    idle, load = _by_role(footprint.idle), _by_role(footprint.load)
    lines = ["| process | n | PSS idle MB | PSS load MB | USS idle MB | USS load MB | "
             "RSS idle MB | RSS load MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]

    def mb(readings: list[Reading], attr: str) -> str:
        return f"{sum(getattr(r, attr) for r in readings) / MB:.0f}" if readings else "-"

    for role in sorted(set(idle) | set(load), key=_order):
        i, lo = idle.get(role, []), load.get(role, [])
        lines.append(f"| {role} | {max(len(i), len(lo))} | {mb(i, 'pss')} | {mb(lo, 'pss')} | "
                     f"{mb(i, 'uss')} | {mb(lo, 'uss')} | {mb(i, 'rss')} | {mb(lo, 'rss')} |")
    lines.append(f"| **total** | {len(footprint.idle)}/{len(footprint.load)} | "
                 f"**{mb(footprint.idle, 'pss')}** | **{mb(footprint.load, 'pss')}** | "
                 f"{mb(footprint.idle, 'uss')} | {mb(footprint.load, 'uss')} | "
                 f"{mb(footprint.idle, 'rss')} | {mb(footprint.load, 'rss')} |")
    served = sum(footprint.load_requests.values())
    lines += ["", f"Time from `lis up` to ready (`{READY_LINE}`): **{footprint.ready_s:.1f} s**; "
                  f"idle read {footprint.settle_s:.0f} s after ready; the load: "
                  f"{THREADS_PER_SERVICE * len(DEMO_SERVICES)} client threads, "
                  f"{served} requests in {footprint.load_s:g} s "
                  f"({', '.join(f'{k} {v}' for k, v in footprint.load_requests.items())}; "
                  f"{footprint.load_errors} errors); stopped (SIGINT) in "
                  f"{footprint.stopped_s:.1f} s"
                  + (f", {footprint.leftovers} process(es) left and killed" if footprint.leftovers
                     else "") + f"; {footprint.neighbours} Ray processes of other stacks on the "
                  f"box at the idle read."]
    return "\n".join(lines)


FOOTPRINT_MEANING = """\
PSS splits each shared page between the processes that map it, so the PSS column adds up to
what the stack costs the box; USS is each process's own pages only (what stopping it would
free); RSS counts shared pages (Python, Ray's and the runtimes' libraries) in full in every
process. Another Ray on the box (a second lis, a test) maps the same libraries and so lowers
this stack's PSS and USS (their pages are shared then), not its RSS. Idle is read once the stack's CPU stays below a fifth of
a core; under load at the end of 10 s of six client threads posting the demo sample scene to
the three services. `n` is the number of processes (total: idle/load)."""


def footprint_section(footprint: Footprint) -> str:
    """The ``Footprint`` section of ``docs/benchmarks.md``."""
    present = {r.role for r in footprint.idle + footprint.load}
    notes = "\n".join(f"- **{role}**: {note}." for role, note in ROLES.items() if role in present)
    return (f"## Footprint\n\n`lis up` with the demo services (`configs/demo.yaml`), "
            f"each process of the stack by its role:\n\n{footprint_table(footprint)}\n\n"
            f"{FOOTPRINT_MEANING}\n\nWhat each process is for (the service replicas are "
            f"lis's models):\n{notes}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--load-s", type=float, default=LOAD_S, help="seconds of load")
    parser.add_argument("--echo", action="store_true", help="print lis up's lines to ready")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("note: PSS of other users' processes needs root", file=sys.stderr)
    print(footprint_section(measure_footprint(load_s=args.load_s, echo=args.echo)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
