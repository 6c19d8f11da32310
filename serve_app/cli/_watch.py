"""What ``lis up`` becomes once its services are ready: a small process that waits for the stop.

``lis up`` needs Ray, Ray Serve and lis's configuration code to start the
stack, about 110 MB of a board's memory that waiting for Ctrl-C does not use.
So once the services are ready it replaces itself (``exec``, same process id,
so systemd and the shell still see the same ``lis up``) with this module,
which imports only the standard library and psutil until a signal comes.

Boards are power-cycled and their services restarted by systemd, so a stop
always stops: the first SIGINT or SIGTERM shuts Ray Serve down, then the
Ray this process started; a second one, or ``STOP_DEADLINE_S`` passing, kills
whatever of the stack is left (every process under this one) and exits.
And a stack that dies under it ends it too: when Ray's GCS or raylet (this
process's children, when it started that Ray) exits, killed by the kernel's
out-of-memory killer on a small board or by hand, nothing of lis serves any
more, so the watcher kills what is left and exits with status 1, for the
service manager to restart lis (``Restart=on-failure``).

A signal must not be lost on the way from ``lis up`` into the watcher. The
kernel hands a process-directed signal to any thread that does not block it,
Ray's threads included; CPython's C-level handler notes it there, and the
Python handler would run later on the main thread. A signal noted just before
the ``exec``, or handled just before it, is gone after it: the watcher would
wait for a stop that had already come (``tests/serve_app/test_stop.py``
shows it). So ``lis up`` has the C-level handler write each
signal's number into a pipe (``signal.set_wakeup_fd``, in any thread, at
once) whose read end the watcher inherits and reads before it waits.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import NoReturn, TextIO

import psutil

__all__ = ["STOP_DEADLINE_S", "Stopper", "become_watcher", "main", "record_signals"]

# From the first signal to the end of the whole stack, come what may: within
# the 30 s a board's service manager is promised, and well within systemd's 90.
STOP_DEADLINE_S = 25.0
# How long Ray's processes get to exit on SIGTERM once Ray Serve is down.
_RAY_EXIT_S = 5.0
# How often the main thread wakes to run a signal handler (see ``Stopper``).
_WAKE_S = 0.5
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
# Ray's processes without which nothing serves, by process name.
_RAY_CORE = {"gcs_server": "GCS", "raylet": "raylet"}


class Stopper:
    """SIGINT and SIGTERM, handled so that a stop always ends the stack in time.

    Python runs signal handlers on the main thread only, between bytecodes;
    the kernel may hand a process-directed signal to any of Ray's threads, and
    an untimed wait on the main thread is then never woken to run the handler
    (seen: ``lis up`` still serving minutes after a SIGINT). So the main
    thread waits in short steps. Ray Serve's controller can retry its graceful
    shutdown forever (seen: 20 minutes), so a watchdog thread started by the
    first signal ends everything at the deadline, and a second signal at once.
    """

    def __init__(self, *, serving: bool = False) -> None:
        self.requested = threading.Event()
        self.serving = serving  # False: a signal interrupts start-up where it is
        self._signals = 0
        self.install()

    def install(self) -> None:
        for signum in _STOP_SIGNALS:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.request(signal.Signals(signum))
        if not self.serving:
            raise KeyboardInterrupt

    def request(self, signum: signal.Signals) -> None:
        """A stop signal came: stop now, or at once if one came already."""
        self._signals += 1
        if self._signals > 1:
            kill_the_stack(f"a second {signum.name}")
        self.requested.set()
        threading.Thread(target=self._watchdog, name="lis-stop-watchdog", daemon=True).start()

    def _watchdog(self) -> None:
        threading.Event().wait(STOP_DEADLINE_S)  # a deadline: time passes on purpose
        kill_the_stack(f"the stop took over {STOP_DEADLINE_S:g} s")

    def wait(self) -> None:
        while not self.requested.wait(_WAKE_S):
            pass


def record_signals() -> int:
    """Have every signal with a Python handler noted in a pipe; its read end, inheritable.

    Called on the main thread before Ray starts any thread. The watcher that
    ``become_watcher`` starts reads the pipe (``--signals-fd``) before it waits.
    """
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)  # the C-level handler never waits on a full pipe
    os.set_inheritable(read_end, True)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    return read_end


def _recorded_stop(fd: int) -> signal.Signals | None:
    """The first stop signal noted in the pipe ``record_signals`` made, if any; closes it."""
    try:
        noted = os.read(fd, 4096)
    except BlockingIOError:
        noted = b""
    finally:
        os.close(fd)
    return next((signal.Signals(n) for n in noted if n in _STOP_SIGNALS), None)


def _say(line: str, stream: TextIO | None = None) -> None:
    """Print (to stderr by default); a stream that is gone (its terminal closed, its reader
    ended) must not stop the stop."""
    try:
        print(line, file=stream or sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def shut_down(address: str | None, *, own_ray: bool) -> None:
    """Ray Serve's applications down, then the Ray this process started (if it did).

    ``address`` is None (or empty) when the stop came before Ray was started or joined.
    """
    try:
        _say("lis: shutting down", sys.stdout)
        if address:
            import ray
            from ray import serve

            from cluster.ray_start import connect_ray

            connect_ray(address, joined=not own_ray)
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
    finally:
        if own_ray:
            _end_children(_RAY_EXIT_S)


def _end_children(grace_s: float) -> None:
    """SIGTERM every process under this one (its Ray), SIGKILL what outlives ``grace_s``."""
    children = _children()
    for child in children:
        _signal(child, signal.SIGTERM)
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        _signal(child, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=grace_s)


def kill_the_stack(reason: str) -> NoReturn:
    """SIGKILL every process this one started (Ray's included), then exit at once."""
    _say(f"lis: {reason}: killing what is left of the stack")
    children = _children()
    for child in children:
        _signal(child, signal.SIGKILL)
    psutil.wait_procs(children, timeout=5)
    os._exit(1)


def _children() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _signal(process: psutil.Process, signum: signal.Signals) -> None:
    try:
        process.send_signal(signum)
    except psutil.Error:
        pass  # already gone


def become_watcher(address: str, *, own_ray: bool, signals_fd: int) -> NoReturn:
    """Replace this process with ``main``: Ray and lis's serving code leave its memory.

    The stop signals are blocked first: the mask survives ``exec``, so a
    signal sent while the new program starts waits for its handler instead of
    killing it with the default action. One noted before (``record_signals``)
    waits in the pipe ``signals_fd``. ``os.execv`` does not return.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    # Run as a file, not `-m serve_app.cli._watch`: that would import the
    # serve_app package first, and with it the client (10 MB of a board's memory).
    argv = [sys.executable, str(Path(__file__).resolve()), "--address", address,
            "--signals-fd", str(signals_fd)]
    os.execv(sys.executable, argv + (["--own-ray"] if own_ray else []))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lis up", description=__doc__)
    parser.add_argument("--address", required=True, help="the Ray the services run on")
    parser.add_argument("--own-ray", action="store_true",
                        help="this process started that Ray: stop it too")
    parser.add_argument("--signals-fd", type=int,
                        help="a pipe holding the signals noted before the exec")
    args = parser.parse_args(argv)
    stopper = Stopper(serving=True)
    core = _ray_core_processes() if args.own_ray else {}
    came = _recorded_stop(args.signals_fd) if args.signals_fd is not None else None
    if came is not None:
        stopper.request(came)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # one sent during exec runs now
    while not stopper.requested.wait(_WAKE_S):
        ended = _ended(core)
        if ended:
            _say(f"lis: Ray's {ended} exited under lis: nothing serves any more; ending the "
                 "stack (exit status 1)")
            _end_children(_RAY_EXIT_S)
            return 1
    shut_down(args.address, own_ray=args.own_ray)
    return 0


def _ray_core_processes() -> dict[int, str]:
    """The GCS and raylet this process started (its children: ``lis up`` started them), by pid."""
    core = {}
    for child in _children_of_this():
        try:
            if child.name() in _RAY_CORE:
                core[child.pid] = _RAY_CORE[child.name()]
        except psutil.Error:
            continue
    return core


def _ended(core: dict[int, str]) -> str | None:
    """Which of ``core`` has exited (reaped here: they are this process's children), if any."""
    for pid, name in core.items():
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return f"{name} (pid {pid})"  # reaped already: gone all the same
        if done:
            how = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                   else f"status {os.WEXITSTATUS(status)}")
            return f"{name} (pid {pid}, {how})"
    return None


def _children_of_this() -> list[psutil.Process]:
    try:
        return psutil.Process().children()
    except psutil.Error:
        return []


if __name__ == "__main__":
    # Run as a file: Python put this file's folder first on the path, where the
    # stop's imports (cluster, Ray) expect the project's root.
    sys.path[0] = str(Path(__file__).resolve().parents[2])
    sys.exit(main())
