"""The compiler's child processes: TVM runs in a process of its own, and its
progress (``STAGE`` lines) is relayed with the seconds since the start.

TVM in a child keeps the parent free of TVM's runtime (which crashed a
process that also loaded DLR) and of its memory once the build is done.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["Clock", "Progress", "run_child"]

Progress = Callable[[str], None]
# A long TVM pass prints nothing for minutes; say it is still working.
_HEARTBEAT_SECONDS = 15.0


class Clock:
    """Prints progress lines prefixed with the seconds since the start."""

    def __init__(self, started: float, say: Progress) -> None:
        self.started = started
        self._say = say

    def say(self, text: str) -> None:
        self._say(f"[{time.monotonic() - self.started:6.1f}s] {text}")


def _child_env() -> dict[str, str]:
    env = dict(os.environ, TOPHUB_LOCATION="NONE")
    # The children import lis from wherever this process did.
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def run_child(module: str, arguments: list[str], log: Path, clock: Clock) -> int:
    """Run ``python -m module``, relaying its STAGE lines; everything goes to ``log``."""
    lines: queue.Queue[str | None] = queue.Queue()
    with open(log, "a", encoding="utf-8") as log_file:
        log_file.write(f"$ {sys.executable} -m {module} {' '.join(arguments)}\n")
        log_file.flush()
        child = subprocess.Popen([sys.executable, "-m", module, *arguments],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env=_child_env(), errors="replace")
        reader = threading.Thread(target=_pump, args=(child, log_file, lines), daemon=True)
        reader.start()
        _relay(lines, clock)
        reader.join()
        return child.wait()


def _pump(child: subprocess.Popen[str], log_file: object, lines: queue.Queue[str | None]) -> None:
    assert child.stdout is not None
    for line in child.stdout:
        log_file.write(line)  # type: ignore[attr-defined]
        log_file.flush()  # type: ignore[attr-defined]
        if line.startswith("STAGE "):
            lines.put(line[6:].rstrip())
    lines.put(None)


def _relay(lines: queue.Queue[str | None], clock: Clock) -> None:
    while True:
        try:
            line = lines.get(timeout=_HEARTBEAT_SECONDS)
        except queue.Empty:
            clock.say("  ... still working")
            continue
        if line is None:
            return
        clock.say(line)
