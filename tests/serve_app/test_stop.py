"""``lis up`` stops, every time: SIGINT or SIGTERM ends the whole stack within the deadline.

Boards are power-cycled and their services restarted by systemd, so a stop
that leaves Ray or a replica running (or never starts, because the signal
went to one of Ray's threads) is a board that cannot restart lis. Each case
starts its own ``lis up`` (its own Ray), records every process of the stack,
sends the signal, and waits for all of them to be gone.

Shown to fail before the fix: Ray's core worker replaces the driver's SIGTERM
handler when ``lis up`` starts Ray, so a SIGTERM dumped a stack trace and
killed ``lis up`` without shutting Ray Serve down (no "lis: shutting down",
exit code -15): both SIGTERM cases fail there.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest
import requests
from waiting import wait_until

from cluster.ray_start import FAST_CONNECT_ENVIRONMENT
from serve_app.cli._watch import STOP_DEADLINE_S

START_TIMEOUT_S = 240
# The deadline is lis's own; the margin covers the kernel reaping what was killed.
GONE_TIMEOUT_S = STOP_DEADLINE_S + 10
SERVICES = """\
services:
  - LocalInferenceServiceName: stoppable
    ConnectorArn: arn:aws:greengrass:us-west-2::/connectors/ImageClassificationx86-64/versions/2
    model: {model}
    num_cpus: 0.25
"""


@dataclass
class Lis:
    process: subprocess.Popen[bytes]
    log: Path
    port: int
    answered: list[int] = field(default_factory=list)

    def printed(self, line: str) -> bool:
        if line in self.log.read_text(errors="replace"):
            return True
        assert self.process.poll() is None, f"lis up exited early:\n{self.tail()}"
        return False

    def stack(self) -> list[psutil.Process]:
        """``lis up`` and every process it started (Ray's GCS, raylet, workers, replicas)."""
        root = psutil.Process(self.process.pid)
        return [root, *root.children(recursive=True)]

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def lis(tiny_classifier_artifact: Path, tmp_path: Path) -> Iterator[Lis]:
    config = tmp_path / "services.yaml"
    config.write_text(SERVICES.format(model=tiny_classifier_artifact))
    port = _free_port()
    log = tmp_path / "lis-up.log"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("lis")), "up", str(config), "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    started = Lis(process, log, port)
    try:
        yield started
    finally:
        if psutil.pid_exists(process.pid) and process.poll() is None:
            for leftover in started.stack():
                leftover.kill()  # only after a failure: the test found it alive


def _post_until(lis: Lis, stop: threading.Event) -> None:
    image = cv2.imencode(".jpg", np.full((64, 64, 3), 120, np.uint8))[1].tobytes()
    while not stop.is_set():
        try:
            answer = requests.post(f"http://127.0.0.1:{lis.port}/inference/stoppable", data=image,
                                   headers={"Content-Type": "image/jpeg"}, timeout=30)
            lis.answered.append(answer.status_code)
        except requests.RequestException:
            return  # the stack is going away: what this test causes


def _stop_and_expect_nothing_left(lis: Lis, signum: signal.Signals) -> int:
    """Send ``signum``, wait for the whole stack to be gone; ``lis up``'s exit code."""
    stack = lis.stack()
    names = " ".join(p.name() for p in stack)
    assert "raylet" in names and "gcs_server" in names, names  # the stack is really there
    lis.process.send_signal(signum)
    gone, alive = psutil.wait_procs(stack, timeout=GONE_TIMEOUT_S)
    assert [p.pid for p in alive] == [], f"still running after {signum.name}:\n{lis.tail()}"
    with socket.socket() as probe:  # nothing holds the HTTP port either
        # As a restarted lis binds it: connections the stop closed may be in TIME_WAIT.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", lis.port))
    # psutil reaped ``lis up`` (its child), so its exit code is psutil's to tell.
    return next(p.returncode for p in gone if p.pid == lis.process.pid)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("in_flight", [False, True], ids=["idle", "requests in flight"])
def test_a_signal_while_serving_ends_the_whole_stack(lis: Lis, signum: signal.Signals,
                                                     in_flight: bool) -> None:
    wait_until(lambda: lis.printed("lis: serving on"), timeout_s=START_TIMEOUT_S,
               interval_s=0.5, message="lis up to serve")
    stop = threading.Event()
    senders = [threading.Thread(target=_post_until, args=(lis, stop)) for _ in range(3 * in_flight)]
    for sender in senders:
        sender.start()
    try:
        if in_flight:
            wait_until(lambda: 200 in lis.answered, timeout_s=60, message="a request answered")
        exit_code = _stop_and_expect_nothing_left(lis, signum)
    finally:
        stop.set()
        for sender in senders:
            sender.join()
    assert "lis: shutting down" in lis.tail()
    assert exit_code == 0, lis.tail()


@pytest.mark.slow
def test_a_signal_during_start_up_ends_the_whole_stack(lis: Lis) -> None:
    wait_until(lambda: lis.printed("lis: deploying"), timeout_s=START_TIMEOUT_S,
               interval_s=0.1, message="lis up to start deploying")
    _stop_and_expect_nothing_left(lis, signal.SIGTERM)


@pytest.mark.slow
def test_a_replica_on_a_warm_worker_keeps_its_thread_caps_and_the_stack_stops(lis: Lis) -> None:
    # lis up's own Ray starts its workers with a replica's thread environment,
    # and the replica asks for none of its own (cluster.ray_start): the caps
    # must still be in the replica's environment when its runtime loads.
    wait_until(lambda: lis.printed("lis: serving on"), timeout_s=START_TIMEOUT_S,
               interval_s=0.5, message="lis up to serve")
    [replica] = [p for p in lis.stack() if "ServeReplica:lis:stoppable" in p.name()
                 or "ServeReplica:lis:stoppable" in " ".join(p.cmdline())]
    environment = replica.environ()
    assert {name: environment.get(name) for name in ("OMP_NUM_THREADS", "TVM_NUM_THREADS",
                                                     "OMP_WAIT_POLICY", "TVM_BIND_THREADS")} \
        == {"OMP_NUM_THREADS": "1", "TVM_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
            "TVM_BIND_THREADS": "0"}
    assert "ray.serve" in environment.get("RAY_preload_python_modules", "")
    [raylet] = [p for p in lis.stack() if p.name() == "raylet"]
    raylet_environment = raylet.environ()
    assert {name: raylet_environment.get(name) for name in FAST_CONNECT_ENVIRONMENT} \
        == FAST_CONNECT_ENVIRONMENT
    assert _stop_and_expect_nothing_left(lis, signal.SIGINT) == 0


@pytest.mark.slow
def test_ray_dying_under_lis_ends_lis_up_with_status_1(lis: Lis) -> None:
    # On a small board the kernel's out-of-memory killer may take Ray's raylet:
    # then nothing serves, and lis up must end for systemd to restart it.
    wait_until(lambda: lis.printed("lis: serving on"), timeout_s=START_TIMEOUT_S,
               interval_s=0.5, message="lis up to serve")
    stack = lis.stack()
    [raylet] = [p for p in stack if p.name() == "raylet"]
    raylet.kill()
    gone, alive = psutil.wait_procs(stack, timeout=GONE_TIMEOUT_S)
    assert [p.pid for p in alive] == [], f"still running after the raylet died:\n{lis.tail()}"
    assert "lis: Ray's raylet (pid" in lis.tail() and "signal 9" in lis.tail(), lis.tail()
    assert next(p.returncode for p in gone if p.pid == lis.process.pid) == 1


@pytest.mark.slow
def test_lis_up_detached_returns_and_its_own_ray_keeps_serving(
        tiny_classifier_artifact: Path, tmp_path: Path) -> None:
    # It used to end the Ray it had just started as it returned, services and all.
    config = tmp_path / "services.yaml"
    config.write_text(SERVICES.format(model=tiny_classifier_artifact))
    port = _free_port()
    done = subprocess.run([str(Path(sys.executable).with_name("lis")), "up", str(config),
                           "--port", str(port), "--detach"], capture_output=True, text=True,
                          timeout=START_TIMEOUT_S, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    printed = done.stdout + done.stderr
    detached = re.search(r"lis: detached; its Ray \(127\.0\.0\.1:(\d+)\)", printed)
    assert done.returncode == 0 and detached, printed[-3000:]
    stack = _ray_of(f"127.0.0.1:{detached.group(1)}")
    try:
        image = cv2.imencode(".jpg", np.full((64, 64, 3), 120, np.uint8))[1].tobytes()
        answer = requests.post(f"http://127.0.0.1:{port}/inference/stoppable", data=image,
                               headers={"Content-Type": "image/jpeg"}, timeout=60)
        assert answer.status_code == 200, answer.text
    finally:
        for process in stack:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(stack, timeout=GONE_TIMEOUT_S)
    assert any(p.info["cmdline"] and "gcs_server" in p.info["cmdline"][0] for p in stack)


def _ray_of(gcs_address: str) -> list[psutil.Process]:
    """Every process of the Ray whose GCS listens on ``gcs_address`` (by its session)."""
    def cmdline(process: psutil.Process) -> str:
        return " ".join(process.info["cmdline"] or [])

    processes = list(psutil.process_iter(["cmdline"]))
    sessions = {found for p in processes if gcs_address in cmdline(p)
                for found in re.findall(r"session_\d{4}-[\d_-]+", cmdline(p))}
    assert len(sessions) == 1, sessions
    [session] = sessions
    ours = [p for p in processes if session in cmdline(p)]
    # Ray's agents rename themselves ("ray::DashboardAgent"): the raylet's children.
    return ours + [child for p in ours if p.info["cmdline"] and
                   p.info["cmdline"][0].endswith("raylet") for child in p.children()
                   if child not in ours]


# What `lis up` does from the moment it says it serves to its exec into the watcher,
# with a stop signal caught on the way by one of its other threads (Ray's, in lis
# up) and handled in this image, where what the handler did is lost in the exec;
# `sleep` stands for the Ray this process started (a child that outlives the exec).
_SIGNAL_BEFORE_EXEC = """\
import signal, subprocess, sys, threading
from serve_app.cli._watch import Stopper, become_watcher, record_signals

stopper = Stopper(serving=True)
signals_fd = record_signals()
ray_like = subprocess.Popen(["sleep", "600"])
print(ray_like.pid, flush=True)
other = threading.Thread(target=threading.Event().wait, daemon=True)
other.start()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
signal.pthread_kill(other.ident, signal.%s)
while not stopper.requested.wait(0.01):  # handled here first: in short waits, as the
    pass                                  # main thread runs Python's handlers between them
become_watcher("", own_ray=True, signals_fd=signals_fd)
"""


def _watcher_after(script: str, **popen: object) -> tuple[subprocess.Popen[bytes], int]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    watcher = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env,
                               **popen)  # type: ignore[call-overload]
    assert watcher.stdout is not None
    return watcher, int(watcher.stdout.readline())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_caught_just_before_the_exec_still_stops_the_stack(
        signum: signal.Signals) -> None:
    watcher, child = _watcher_after(_SIGNAL_BEFORE_EXEC % signum.name, stderr=subprocess.PIPE)
    try:
        out, err = watcher.communicate(timeout=GONE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        watcher.kill()
        os.kill(child, signal.SIGKILL)
        pytest.fail("the watcher never saw the stop signal lis up had caught before its exec")
    assert watcher.returncode == 0, err.decode()
    assert b"lis: shutting down" in out
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


def test_a_stop_whose_output_is_gone_still_ends_the_stack() -> None:
    # `lis up`'s terminal closed, or whatever read its output ended: printing the
    # shutdown fails, and used to end the watcher there, with its Ray left running.
    script = "\n".join(line for line in _SIGNAL_BEFORE_EXEC.splitlines()
                       if not line.startswith(("signal.pthread_kill", "while", "    pass")))
    watcher, child = _watcher_after(script, stderr=subprocess.DEVNULL)
    assert watcher.stdout is not None
    wait_until(lambda: _is_the_watcher(watcher.pid), timeout_s=60, message="the watcher to run")
    watcher.stdout.close()
    watcher.send_signal(signal.SIGINT)
    try:
        watcher.wait(timeout=GONE_TIMEOUT_S)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    gone, alive = psutil.wait_procs([psutil.Process(child)] if psutil.pid_exists(child) else [],
                                    timeout=GONE_TIMEOUT_S)
    for left in alive:
        left.kill()
    assert alive == [], "the Ray-like child outlived a stop whose output was gone"


def _is_the_watcher(pid: int) -> bool:
    """The process has become the watcher and unblocked its stop signals."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    blocked = int(next(line.split()[1] for line in status.splitlines()
                       if line.startswith("SigBlk:")), 16)
    return b"serve_app/cli/_watch.py" in cmdline and not blocked & (1 << (signal.SIGINT - 1))
