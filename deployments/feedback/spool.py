"""The durable on-disk spool of accepted feedback samples.

A sample the pipeline accepts is on disk, fsync'd, before ``Spool.add``
returns; it leaves the spool (``Spool.remove``) only once it is uploaded and
its messages are acknowledged by the broker. A process that dies at any point
finds its samples again with ``Spool.records()`` when it reopens the folder.

Layout of the spool folder (one per node; a lock file keeps a second process
out)::

    <directory>/.lock
    <directory>/samples/<id>.bin    the model input, exactly as received
    <directory>/samples/<id>.json   config id, prediction, metadata, upload state
    <directory>/tmp/                files being written (cleared on open)
    <directory>/corrupt/            records that could not be read back (kept, never deleted)
    <directory>/set-aside/          samples the store refused for good (``set_aside``):
                                    <id>.bin, <id>.json and <id>.reason.json (why, after how
                                    many attempts); kept, never deleted, never replayed

A record exists when its ``.json`` exists: the ``.bin`` is written and made
durable first, the ``.json`` last, and removal goes in the opposite order. The
upload state (bucket, key, ETag) is written into the ``.json`` as soon as the
upload succeeds, so a record replayed after a crash between the upload and the
broker's acknowledgement is announced without being uploaded again. A crash
after the upload but before that state reached the disk re-uploads it on
replay, to the same key (the sample id is fixed at acceptance): the object is
overwritten with the same bytes, never duplicated.

The spool has a size cap: a sample that would pass it is refused with
``SpoolFull``; stored samples are never dropped to make room. A record counts
the uploads the store refused (``count_failure``), so a restart does not give
a sample the store will never take a fresh set of attempts.

Samples are camera frames: the folders are made 0700 and the files 0600, and a
spool folder owned by another user is refused. Recovery deletes only names lis
writes (a sample id, a staged file's suffix), so a spool pointed at a folder
that holds other files (``~``) cannot delete them.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import re
import stat
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any

from deployments.feedback.store import StoredObject
from vocabulary.errors import LisError, SpoolFull

__all__ = ["DEFAULT_LOCK_TIMEOUT_S", "SET_ASIDE_FOLDER", "Destination", "Spool", "SpoolFull",
           "SpoolRecord"]

DEFAULT_LOCK_TIMEOUT_S = 30.0
_FORMAT_VERSION = 1
SET_ASIDE_FOLDER = "set-aside"
_LOCK_POLL_S = 0.05
# The only names recovery deletes: a sample id (uuid4) and what _stage names a file.
_SAMPLE_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_STAGED_NAME = re.compile(_SAMPLE_ID.pattern + r"\.(bin|json|reason\.json)\.[0-9a-f]{32}")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Destination:
    """Where the sample was to go when it was accepted (its config may change later)."""

    bucket: str
    key: str
    content_type: str


@dataclass(frozen=True)
class SpoolRecord:
    """One accepted sample: what to upload, where it came from, how far it got."""

    sample_id: str
    config_id: str
    prediction: Any
    metadata: dict[str, Any]
    destination: Destination
    accepted_ns: int
    input_size: int
    upload: StoredObject | None = None
    failed_uploads: int = 0  # uploads the store refused for good (``store.permanent_failure``)

    def to_json(self) -> bytes:
        document = {"version": _FORMAT_VERSION, "sample_id": self.sample_id,
                    "config_id": self.config_id, "prediction": self.prediction,
                    "metadata": self.metadata, "destination": asdict(self.destination),
                    "accepted_ns": self.accepted_ns,
                    "input_size": self.input_size,
                    "upload": None if self.upload is None else self.upload.to_dict(),
                    "failed_uploads": self.failed_uploads}
        return json.dumps(document, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> SpoolRecord:
        document = json.loads(data)
        upload = document["upload"]
        return cls(sample_id=document["sample_id"], config_id=document["config_id"],
                   prediction=document["prediction"], metadata=document["metadata"],
                   destination=Destination(**document["destination"]),
                   accepted_ns=document["accepted_ns"], input_size=document["input_size"],
                   upload=None if upload is None else StoredObject.from_dict(upload),
                   failed_uploads=document.get("failed_uploads", 0))  # an older lis kept none


class Spool:
    """A folder of accepted samples with a size cap, owned by one process at a time."""

    def __init__(self, directory: Path, max_bytes: int, *,
                 lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
        self.directory = Path(directory).expanduser()
        self.max_bytes = max_bytes
        self._samples = self.directory / "samples"
        self._tmp = self.directory / "tmp"
        _private_folder(self.directory)
        for folder in (self._samples, self._tmp):
            _private_folder(folder)
        self._lock_file = _acquire_lock(self.directory / ".lock", lock_timeout_s)
        self._mutex = threading.Lock()
        self._found = self._recover()
        self._used = sum(self._size(record) for record in self._found)
        self._count = len(self._found)

    # --- reading ---------------------------------------------------------------

    def records(self) -> list[SpoolRecord]:
        """The records found when the spool was opened, oldest first (the replay)."""
        return list(self._found)

    def read_input(self, record: SpoolRecord) -> bytes:
        return self._input_path(record.sample_id).read_bytes()

    @property
    def used_bytes(self) -> int:
        with self._mutex:
            return self._used

    def __len__(self) -> int:
        with self._mutex:
            return self._count

    # --- writing ---------------------------------------------------------------

    def add(self, sample_id: str, config_id: str, model_input: bytes, prediction: Any,
            metadata: Mapping[str, Any], destination: Destination) -> SpoolRecord:
        """Store a sample durably and return its record; ``SpoolFull`` if it does not fit."""
        record = SpoolRecord(sample_id=sample_id, config_id=config_id, prediction=prediction,
                             metadata=dict(metadata), destination=destination,
                             accepted_ns=time.time_ns(), input_size=len(model_input))
        header = record.to_json()
        self._reserve(len(model_input) + len(header))
        staged: list[Path] = []
        try:
            staged.append(self._stage(self._input_path(record.sample_id), model_input))
            staged.append(self._stage(self._header_path(record.sample_id), header))
            # Both files are durable under tmp/; the input takes its name first, the
            # header last, and one directory sync makes both names durable. A crash
            # before that sync is a sample add() never accepted: whatever names
            # survive, recovery drops them (an input alone) or sets them aside (a
            # header whose input did not land).
            os.replace(staged[0], self._input_path(record.sample_id))
            os.replace(staged[1], self._header_path(record.sample_id))
            _fsync_dir(self._samples)
        except BaseException:
            for temporary in staged:
                temporary.unlink(missing_ok=True)
            self._discard(record.sample_id)
            self._release(len(model_input) + len(header))
            raise
        return record

    def mark_uploaded(self, record: SpoolRecord, stored: StoredObject) -> SpoolRecord:
        """Record durably that the sample's object is stored, so a replay skips the upload."""
        # No directory sync: if a crash loses this rename, the previous header
        # (durable, complete) comes back and the replay uploads the sample again,
        # to the same key: the same object, not a second one.
        return self._rewrite(record, replace(record, upload=stored))

    def count_failure(self, record: SpoolRecord) -> SpoolRecord:
        """Record durably one more upload the store refused for good."""
        return self._rewrite(record, replace(record, failed_uploads=record.failed_uploads + 1))

    def set_aside(self, record: SpoolRecord, reason: str) -> Path:
        """Move a sample out of the spool into ``set-aside/``, with ``reason``; that folder.

        The input goes first and the header last: a crash in between leaves a
        header without input, which the next open moves to ``corrupt/``; no byte
        of the sample is deleted either way.
        """
        aside = self.directory / SET_ASIDE_FOLDER
        _private_folder(aside)
        note = {"sample_id": record.sample_id, "reason": reason,
                "attempts": record.failed_uploads,
                "set_aside_at": dt.datetime.now(dt.timezone.utc).isoformat()}
        os.replace(self._stage(aside / f"{record.sample_id}.reason.json",
                               json.dumps(note).encode()),
                   aside / f"{record.sample_id}.reason.json")
        os.replace(self._input_path(record.sample_id), aside / f"{record.sample_id}.bin")
        _fsync_dir(aside)
        os.replace(self._header_path(record.sample_id), aside / f"{record.sample_id}.json")
        _fsync_dir(aside)
        _fsync_dir(self._samples)
        self._release(self._size(record))
        return aside

    def remove(self, record: SpoolRecord) -> None:
        """Forget a delivered sample (header first: a record without header does not exist)."""
        size = self._size(record)
        self._header_path(record.sample_id).unlink(missing_ok=True)
        _fsync_dir(self._samples)
        self._input_path(record.sample_id).unlink(missing_ok=True)
        self._release(size)

    def close(self) -> None:
        """Release the folder to another process; the records stay on disk."""
        if not self._lock_file.closed:
            self._lock_file.close()  # closing the descriptor drops the flock

    # --- internals -------------------------------------------------------------

    def _reserve(self, size: int) -> None:
        with self._mutex:
            if self._used + size > self.max_bytes:
                raise SpoolFull(size, self._used, self.max_bytes)
            self._used += size
            self._count += 1

    def _release(self, size: int) -> None:
        with self._mutex:
            self._used -= size
            self._count -= 1

    def _rewrite(self, record: SpoolRecord, updated: SpoolRecord) -> SpoolRecord:
        header = updated.to_json()
        os.replace(self._stage(self._header_path(record.sample_id), header),
                   self._header_path(record.sample_id))
        with self._mutex:
            self._used += len(header) - len(record.to_json())
        return updated

    def _size(self, record: SpoolRecord) -> int:
        return record.input_size + len(record.to_json())

    def _stage(self, final: Path, data: bytes) -> Path:
        """Write ``data`` durably to a new file under tmp/ that will become ``final``."""
        temporary = self._tmp / f"{final.name}.{uuid.uuid4().hex}"
        with _private_file(temporary) as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        return temporary

    def _discard(self, sample_id: str) -> None:
        self._header_path(sample_id).unlink(missing_ok=True)
        self._input_path(sample_id).unlink(missing_ok=True)

    def _recover(self) -> list[SpoolRecord]:
        for leftover in self._tmp.iterdir():
            if _STAGED_NAME.fullmatch(leftover.name) and leftover.is_file():
                leftover.unlink()  # never renamed into place: never accepted
        records = []
        for header in self._samples.glob("*.json"):
            record = self._read_record(header)
            if record is not None:
                records.append(record)
        known = {record.sample_id for record in records}
        for orphan in self._samples.glob("*.bin"):
            if orphan.stem not in known and _SAMPLE_ID.fullmatch(orphan.stem) \
                    and not self._header_path(orphan.stem).exists():
                orphan.unlink()  # its header never landed: add() had not returned
        records.sort(key=lambda record: record.accepted_ns)
        if records:
            logger.info("feedback spool %s: %d sample(s) to replay", self.directory, len(records))
        return records

    def _read_record(self, header: Path) -> SpoolRecord | None:
        try:
            record = SpoolRecord.from_json(header.read_bytes())
            if self._input_path(record.sample_id).stat().st_size != record.input_size:
                raise ValueError("model input size differs from the header")
            return record
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._quarantine(header, exc)
            return None

    def _quarantine(self, header: Path, reason: Exception) -> None:
        corrupt = self.directory / "corrupt"
        _private_folder(corrupt)
        for path in (header, header.with_suffix(".bin")):
            if path.exists():
                os.replace(path, corrupt / path.name)
        logger.error("feedback spool %s: moved unreadable record %s to %s: %s",
                     self.directory, header.stem, corrupt, reason)

    def _input_path(self, sample_id: str) -> Path:
        return self._samples / f"{sample_id}.bin"

    def _header_path(self, sample_id: str) -> Path:
        return self._samples / f"{sample_id}.json"


def _private_folder(folder: Path) -> None:
    """``folder`` made (0700) or checked: ours, a real folder, closed to others."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise LisError(f"feedback spool folder {folder} is not a folder owned by this user "
                       f"(uid {os.getuid()}); refusing to keep samples there")
    if info.st_mode & 0o077:
        folder.chmod(0o700)  # made by an older lis, or by hand


def _private_file(path: Path) -> IO[bytes]:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    return os.fdopen(descriptor, "wb")


def _acquire_lock(path: Path, timeout_s: float) -> Any:
    lock_file = open(path, "a+")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock_file
        except BlockingIOError:
            if time.monotonic() >= deadline:
                lock_file.close()
                raise LisError(f"feedback spool {path.parent} is held by another process "
                               f"(waited {timeout_s:g} s for {path})") from None
            time.sleep(_LOCK_POLL_S)


def _fsync_dir(directory: Path) -> None:
    # A rename or unlink is durable only once its directory is synced.
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
