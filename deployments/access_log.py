"""A replica's access lines: one per request, written in batches beside Ray's logs.

Through Ray Serve's replica logger each line cost the request path a record,
two formattings and two file checks (Ray's rotating handler sizes each
record by formatting it), then a write and a flush of its own; sampled on
the 2-core reference box it was a quarter of the time the classifier
replica's request threads held the GIL. Here a request appends its figures
to a list, and a thread formats and writes what gathered every half second in
one write: a request's own thread formats nothing (on the local path it runs
right after a wake-up, when the code it touches is cold and costs several
times more). A replica killed outright loses at most its last half second of
lines (Ray Serve's own throughput mode buffers its request logs the same
way); one that stops cleanly writes them all.

File: ``<Ray's serve log folder>/access_<deployment>_<replica id>.log``, the
folder that holds the replica's own log; rotated at ``max_bytes`` with
``backups`` old files, like Ray's.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

__all__ = [
    "FLUSH_PERIOD_S",
    "AccessLog",
]

FLUSH_PERIOD_S = 0.5


class AccessLog:
    """Access lines of one replica, prefixed with its service's name."""

    def __init__(self, path: Path, component: str, replica: str, service: str,
                 *, max_bytes: int = 512 * 1024 * 1024, backups: int = 5) -> None:
        self.path = path
        self._prefix = f"{component} {replica} -- [{service}] access "
        self._max_bytes, self._backups = max_bytes, backups
        self._entries: list[tuple[float, int, float, object, int, bool]] = []
        # ``lis up --log-to-console``: Ray streams the replica's stderr to the console.
        self._echo = os.environ.get("RAY_SERVE_LOG_TO_STDERR") == "1"
        self._lock = threading.Lock()
        self._closed = threading.Event()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")
        self._writer = threading.Thread(target=self._write_periodically,
                                        name=f"{service}-access-log", daemon=True)
        self._writer.start()

    def write(self, status: int, latency_ms: float, stages: object, size: int, *,
              mislabelled: bool = False) -> None:
        """Queue the line of one request (never blocks on the disk, formats nothing).

        ``stages``: its ``str()`` is the line's stage times, taken when it is written.
        ``mislabelled``: the image was the other supported format than its
        Content-Type said (read as what it is); counted as ``content_type_mismatch=1``.
        """
        entry = (time.time(), status, latency_ms, stages, size, mislabelled)
        with self._lock:
            self._entries.append(entry)

    def _line(self, now: float, status: int, latency_ms: float, stages: object, size: int,
              mislabelled: bool) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        return (f"INFO {stamp},{int(now * 1000) % 1000:03d} {self._prefix}status={status} "
                f"latency_ms={latency_ms:.1f} {stages} bytes={size}"
                f"{' content_type_mismatch=1' if mislabelled else ''}\n")

    def close(self) -> None:
        """Write what is queued and stop the writer."""
        self._closed.set()
        self._writer.join(5)
        self.flush()
        self._file.close()

    def flush(self) -> None:
        with self._lock:
            entries, self._entries = self._entries, []
        if not entries or self._file.closed:
            return
        text = "".join(self._line(*entry) for entry in entries)
        self._file.write(text)
        self._file.flush()
        if self._echo:
            sys.stderr.write(text)
        if self._file.tell() >= self._max_bytes:
            self._rotate()

    def _write_periodically(self) -> None:
        while not self._closed.wait(FLUSH_PERIOD_S):
            self.flush()

    def _rotate(self) -> None:
        self._file.close()
        for index in range(self._backups - 1, 0, -1):
            older = Path(f"{self.path}.{index}")
            if older.exists():
                os.replace(older, f"{self.path}.{index + 1}")
        os.replace(self.path, f"{self.path}.1")
        self._file = self.path.open("a", encoding="utf-8")
