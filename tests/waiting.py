"""How a test waits: for a condition, polled until it holds or a deadline passes.

A test waits for what it needs (a request in flight, a line in a log, a
replica replaced), never for a fixed time: a fixed time is too short on a
busy 2-core box and wasted on every other. ``wait_until`` polls from plain
code and threads; ``wait_until_async`` from a coroutine, so that the event
loop's other tasks, which make the condition true, run while it waits.

The cluster scenarios (``tests/cluster/_scenarios/``) run as scripts, outside
pytest, and use it too: so nothing here imports pytest, and a deadline passed
is an ``AssertionError``, a test failure under pytest and a traceback in a script.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

__all__ = ["DEFAULT_INTERVAL_S", "WaitTimeout", "wait_for_line", "wait_until", "wait_until_async"]

T = TypeVar("T")

# Short, so a test goes on soon after its condition holds; a condition that is
# costly to ask (a Ray call, an HTTP request) is asked less often by its caller.
DEFAULT_INTERVAL_S = 0.05


class WaitTimeout(AssertionError):
    """The condition did not hold by the deadline; ``last`` is what it last gave or raised."""

    def __init__(self, message: str, timeout_s: float, last: object) -> None:
        super().__init__(f"waited {timeout_s:g} s for {message}; last seen: {last!r}")
        self.last = last


class _Poll(Generic[T]):
    """One wait: asks the condition, keeps its last answer, knows the deadline."""

    def __init__(self, condition: Callable[[], T], timeout_s: float, message: str,
                 retry_on: tuple[type[Exception], ...]) -> None:
        self._condition = condition
        self._timeout_s = timeout_s
        self._message = message
        self._retry_on = retry_on
        self._deadline = time.monotonic() + timeout_s
        self.last: T | Exception | None = None

    def holds(self) -> bool:
        try:
            value = self._condition()
        except self._retry_on as error:  # not there yet (no route, no replica, ...)
            self.last = error
            return False
        self.last = value
        return bool(value)

    def check_deadline(self) -> None:
        if time.monotonic() >= self._deadline:
            raise WaitTimeout(self._message, self._timeout_s, self.last)


def wait_until(condition: Callable[[], T], *, timeout_s: float, message: str,
               interval_s: float = DEFAULT_INTERVAL_S,
               retry_on: tuple[type[Exception], ...] = ()) -> T:
    """``condition()``'s first truthy value, asked every ``interval_s`` for up to ``timeout_s``.

    ``message`` says what is awaited, for the ``WaitTimeout`` (an
    ``AssertionError``) raised when the deadline passes, which also shows the
    last value or exception seen. An exception of ``retry_on`` raised by
    ``condition`` means "not yet"; any other propagates at once.
    """
    poll = _Poll(condition, timeout_s, message, retry_on)
    while not poll.holds():
        poll.check_deadline()
        time.sleep(interval_s)  # the polling interval: the awaited thing happens meanwhile
    return poll.last  # type: ignore[return-value]


async def wait_until_async(condition: Callable[[], T], *, timeout_s: float, message: str,
                           interval_s: float = DEFAULT_INTERVAL_S,
                           retry_on: tuple[type[Exception], ...] = ()) -> T:
    """``wait_until`` for a coroutine: the loop runs its other tasks between two asks.

    ``condition`` runs on the loop, so it may read the loop's own objects; it
    must not block (a blocking one goes to ``asyncio.to_thread(wait_until, ...)``).
    """
    poll = _Poll(condition, timeout_s, message, retry_on)
    while not poll.holds():
        poll.check_deadline()
        await asyncio.sleep(interval_s)  # the polling interval: other tasks run meanwhile
    return poll.last  # type: ignore[return-value]


def wait_for_line(process: subprocess.Popen[bytes], log: Path, line: str, *,
                  timeout_s: float, what: str) -> None:
    """Wait until ``process`` (``what``, e.g. "lis up") has written ``line`` to ``log``.

    Fails at once if the process exits first; either failure shows the log's tail.
    """
    def printed() -> bool:
        if line in log.read_text(errors="replace"):
            return True
        if process.poll() is not None:
            raise AssertionError(f"{what} exited with {process.returncode}")
        return False

    try:
        wait_until(printed, timeout_s=timeout_s, interval_s=0.5,
                   message=f"{what} to print {line!r}")
    except AssertionError as error:
        raise AssertionError(f"{error}:\n{log.read_text(errors='replace')[-3000:]}") from None
