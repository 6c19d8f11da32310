"""Where a pipeline's images come from: a camera or stream, a watched folder, one image file.

Every source answers ``next_frame(stop, timeout_s)`` with its newest image not
yet handed out (or None when there is none yet), and is told by ``done`` when
the pipeline has finished with a frame. A source never queues: a camera's
reader thread keeps only the newest frame and counts the ones it replaced
(``skipped``); a folder hands its files out one at a time, oldest first.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vocabulary.errors import LisError
from vocabulary.pipeline_specs import (
    CameraSource,
    FolderSource,
    ImageSource,
    PipelineSpec,
    StreamSource,
)

__all__ = [
    "FOLDER_POLL_S",
    "REOPEN_MIN_S",
    "FolderWatch",
    "Frame",
    "ImageReread",
    "LatestFrame",
    "Source",
    "open_source",
]

log = logging.getLogger("ray.serve.lis")

# A folder is listed this often; a file is taken once two listings agree on its size
# and time, so a file still being written is not read half-way.
FOLDER_POLL_S = 0.2
REOPEN_MIN_S = 0.5
_JPEG_QUALITY = 90
_CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
# A video file that gives no frame rate is paced at this one.
_DEFAULT_FILE_FPS = 25.0


@dataclass(frozen=True)
class Frame:
    """One image to infer, with where and when it came from."""

    body: bytes
    content_type: str
    source: str
    index: int  # its number in the source, from 1
    time: dt.datetime  # when it was read (UTC)


class Source(Protocol):
    description: str
    read: int  # frames read from the camera, stream, folder or file
    skipped: int  # frames read and replaced by a newer one before the pipeline took them
    reopened: int  # times the stream was opened again after it failed
    problem: str | None  # what is wrong now (None: nothing)

    def start(self) -> None: ...

    def next_frame(self, stop: threading.Event, timeout_s: float) -> Frame | None: ...

    def done(self, frame: Frame, answered: bool) -> None: ...

    def close(self) -> None: ...


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# --- a camera or a stream: the newest frame only --------------------------------------


class LatestFrame:
    """A camera, stream or video file read by a thread of its own that keeps only the newest
    frame: the pipeline always infers what the camera sees now, never a queue of stale frames.

    A stream that cannot be opened or stops giving frames is opened again after
    0.5 s, then twice as long each time up to ``reopen_max_s``; the wait starts
    again from 0.5 s once frames come. A video file is read at its own frame rate
    and from its start again when it ends, as a camera would go on.
    """

    def __init__(self, target: int | str, description: str, reopen_max_s: float,
                 timeout_s: float | None = None) -> None:
        self.description = description
        self._target = target
        self._reopen_max_s = reopen_max_s
        self._timeout_s = timeout_s
        self._is_file = isinstance(target, str) and Path(target).is_file() \
            and not target.startswith("/dev/")
        self.read = self.skipped = self.reopened = 0
        self.problem: str | None = None
        self._latest: tuple[Any, int, dt.datetime] | None = None
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"reader {description}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def next_frame(self, stop: threading.Event, timeout_s: float) -> Frame | None:
        with self._changed:
            if self._latest is None:
                self._changed.wait(timeout_s)
            if self._latest is None or stop.is_set():
                return None
            image, index, read_at = self._latest
            self._latest = None
        return Frame(_jpeg(image), "image/jpeg", self.description, index, read_at)

    def done(self, frame: Frame, answered: bool) -> None:
        """Nothing to do: a camera's frame is gone once read."""

    def _run(self) -> None:
        wait_s = REOPEN_MIN_S
        while not self._stop.is_set():
            if self._read_until_it_fails():
                wait_s = REOPEN_MIN_S  # it gave frames: a new failure starts the backoff again
            if self._stop.wait(wait_s):
                return
            wait_s = min(2 * wait_s, self._reopen_max_s)
            self.reopened += 1

    def _read_until_it_fails(self) -> bool:
        """Read frames until the stream fails; whether it gave any."""
        import cv2

        capture = self._open(cv2)
        try:
            if not capture.isOpened():
                self.problem = f"cannot open {self.description}"
                log.warning("pipeline source: %s", self.problem)
                return False
            period_s = self._file_period(capture, cv2)
            gave = False
            started, count = time.monotonic(), 0
            while not self._stop.is_set():
                ok, image = capture.read()
                if not ok:
                    if not self._is_file:
                        self.problem = f"{self.description} gave no frame: reopening it"
                        log.warning("pipeline source: %s", self.problem)
                    return gave
                gave, self.problem = True, None
                self._keep(image)
                count += 1
                if period_s:  # a file: as fast as it would play, not as fast as it decodes
                    self._stop.wait(max(0.0, started + count * period_s - time.monotonic()))
            return gave
        finally:
            capture.release()

    def _open(self, cv2: Any) -> Any:
        if self._timeout_s is None or not isinstance(self._target, str) or self._is_file:
            return cv2.VideoCapture(self._target)
        # A network stream: FFmpeg waits for a silent server forever unless told not to,
        # and a stalled connection (a camera whose Wi-Fi went) is how streams mostly drop.
        timeout_ms = int(self._timeout_s * 1000)
        return cv2.VideoCapture(self._target, cv2.CAP_FFMPEG,
                                [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms,
                                 cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms])

    def _file_period(self, capture: Any, cv2: Any) -> float:
        if not self._is_file:
            return 0.0
        fps = capture.get(cv2.CAP_PROP_FPS) or _DEFAULT_FILE_FPS
        return 1.0 / fps

    def _keep(self, image: Any) -> None:
        with self._changed:
            self.read += 1
            if self._latest is not None:
                self.skipped += 1  # replaced before the pipeline took it
            self._latest = (image, self.read, _now())
            self._changed.notify()


def _jpeg(image: Any) -> bytes:
    import cv2

    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    if not ok:
        raise LisError("could not encode a camera frame as JPEG")
    return encoded.tobytes()


# --- a watched folder: each file once -------------------------------------------------


class FolderWatch:
    """New images in a folder, each handed out once, oldest first, also across restarts.

    A file is known by its name, size and modification time; once inferred (or
    refused by the service as a bad image) it is written to the record file,
    fsync'd, then kept, moved or deleted. A file the service could not answer
    for (unavailable, timed out) stays and is tried again.
    """

    def __init__(self, spec: FolderSource, record_file: Path, description: str) -> None:
        self.description = description
        self._spec = spec
        self._record_file = record_file
        self.read = self.skipped = self.reopened = 0
        self.problem: str | None = None
        self._seen: set[str] = set()
        self._sizes: dict[str, tuple[int, int]] = {}  # name -> (size, mtime) at the last listing
        self._handed: set[str] = set()  # handed out and not yet done
        self._ready: list[str] = []  # stable files from the last listing, not yet handed out
        self._listed_at = 0.0

    def start(self) -> None:
        self._record_file.parent.mkdir(parents=True, exist_ok=True)
        if self._record_file.exists():
            self._seen = set(self._record_file.read_text(encoding="utf-8").splitlines())
        if self._spec.after == "move" and self._spec.move_to is not None:
            self._spec.move_to.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        """Nothing held open."""

    def next_frame(self, stop: threading.Event, timeout_s: float) -> Frame | None:
        deadline = time.monotonic() + timeout_s
        while not stop.is_set():
            if not self._ready:
                self._ready = self._list_ready()
            if self._ready:
                return self._frame(self._ready.pop(0))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            stop.wait(min(FOLDER_POLL_S, remaining))
        return None

    def done(self, frame: Frame, answered: bool) -> None:
        path = Path(frame.source)
        key = self._key_of(path.name)
        self._handed.discard(path.name)
        if not answered or key is None:
            return
        with open(self._record_file, "a", encoding="utf-8") as record:
            record.write(key + "\n")
            record.flush()
            os.fsync(record.fileno())
        self._seen.add(key)
        self._dispose(path)

    def _dispose(self, path: Path) -> None:
        try:
            if self._spec.after == "delete":
                path.unlink()
            elif self._spec.after == "move" and self._spec.move_to is not None:
                shutil.move(str(path), str(self._spec.move_to / path.name))
        except OSError as error:
            self.problem = f"could not {self._spec.after} {path}: {error}"
            log.warning("pipeline source: %s", self.problem)

    def _key_of(self, name: str) -> str | None:
        stamp = self._sizes.get(name)
        return None if stamp is None else f"{name}\t{stamp[0]}\t{stamp[1]}"

    def _list_ready(self) -> list[str]:
        """Names of the files ready to infer, oldest first (none if listed just now)."""
        if time.monotonic() - self._listed_at < FOLDER_POLL_S:
            return []
        self._listed_at = time.monotonic()
        try:
            listed = self._list()
        except OSError as error:
            self.problem = f"cannot list {self._spec.path}: {error}"
            return []
        self.problem = None
        ready = [(stamp[1], name) for name, stamp in listed.items()
                 if self._sizes.get(name) == stamp and name not in self._handed
                 and f"{name}\t{stamp[0]}\t{stamp[1]}" not in self._seen]
        self._sizes = listed
        return [name for _, name in sorted(ready)]

    def _list(self) -> dict[str, tuple[int, int]]:
        gone = FileNotFoundError(f"no such folder: {self._spec.path}")
        if not self._spec.path.is_dir():
            raise gone
        found = {}
        try:
            for pattern in self._spec.patterns:
                for path in self._spec.path.glob(pattern):
                    try:
                        status = path.stat()
                    except FileNotFoundError:
                        continue  # moved or deleted since it was listed
                    if path.is_file():
                        found[path.name] = (status.st_size, status.st_mtime_ns)
        except FileNotFoundError:
            raise gone from None  # the folder itself went away while it was listed
        return found

    def _frame(self, name: str) -> Frame | None:
        path = self._spec.path / name
        try:
            body = path.read_bytes()
        except OSError as error:
            self.problem = f"cannot read {path}: {error}"
            return None
        self.read += 1
        self._handed.add(name)
        content_type = _CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")
        return Frame(body, content_type, str(path), self.read, _now())


# --- one image, re-read every interval ------------------------------------------------


class ImageReread:
    """One image file read again for each inference (Greengrass v2's ImageDirectory +
    ImageName): replace the file and the next result is for the new picture."""

    def __init__(self, spec: ImageSource) -> None:
        self.description = str(spec.path)
        self._path = spec.path
        self.read = self.skipped = self.reopened = 0
        self.problem: str | None = None

    def start(self) -> None:
        """Nothing to open: the file is read for each frame."""

    def close(self) -> None:
        """Nothing held open."""

    def next_frame(self, stop: threading.Event, timeout_s: float) -> Frame | None:
        try:
            body = self._path.read_bytes()
        except OSError as error:
            self.problem = f"cannot read the image {self._path}: {error}"
            stop.wait(timeout_s)
            return None
        self.problem = None
        self.read += 1
        content_type = _CONTENT_TYPES.get(self._path.suffix.lower(), "application/octet-stream")
        return Frame(body, content_type, self.description, self.read, _now())

    def done(self, frame: Frame, answered: bool) -> None:
        """Nothing to do: the file stays for the next read."""


def open_source(spec: PipelineSpec) -> Source:
    """The source ``spec`` names, not yet started."""
    source = spec.source
    if isinstance(source, CameraSource):
        return LatestFrame(source.device, f"camera:{source.device}", source.reopen_max_s)
    if isinstance(source, StreamSource):
        return LatestFrame(source.url, source.url, source.reopen_max_s, source.timeout_s)
    if isinstance(source, FolderSource):
        assert spec.record_file is not None
        return FolderWatch(source, spec.record_file, str(source.path))
    assert isinstance(source, ImageSource)
    return ImageReread(source)
