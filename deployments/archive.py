"""Safe, atomic, idempotent extraction of model archives.

A model reaches lis as a folder or as an archive (``.tar.gz``, ``.tgz``,
``.tar``, ``.zip``), the way Greengrass ML resources arrive from S3 or a
SageMaker job. ``materialize`` turns either into a folder.

An archive is untrusted input, so every entry is checked before a byte is
written:

- its name may not escape the destination (``../``, absolute paths, drive
  letters; backslashes count as separators, as Windows zip tools write them);
- links are refused, all of them (symbolic and hard, pointing inside or out):
  model artifacts never need one, and refusing them all is the only policy
  with no corner cases (a link to a folder inside, written through later);
- device files, FIFOs and other special entries are refused;
- the total size and the number of entries (files and folders) are capped
  (``MAX_ARCHIVE_BYTES``, ``MAX_ARCHIVE_FILES``; both can be overridden per call).
  Sizes are counted while writing, so an archive whose headers lie is still stopped.

Extraction happens in a temporary folder beside the destination, which is
renamed into place only when complete: the cache folder
``<cache_root>/<sha256 of the archive>/`` either does not exist or is whole.
A second call with the same archive finds it and does no work; two extractors
racing both finish, the loser discards its copy.

This module imports neither TVM nor MXNet: the serving path uses it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from vocabulary.errors import ArtifactError, UnsafeArchive
from vocabulary.limits import MAX_ARCHIVE_BYTES, MAX_ARCHIVE_FILES
from vocabulary.names import CACHE_DIR_ENV, DEFAULT_CACHE_DIR

__all__ = [
    "ARCHIVE_SUFFIXES",
    "archive_sha256",
    "artifact_version",
    "cache_dir",
    "default_cache_root",
    "extract_archive",
    "is_archive",
    "materialize",
    "model_digest",
    "pack_folder",
    "store_artifact",
]

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")

_CHUNK = 1024 * 1024
# Folders that zip tools add and that are no part of a model.
_IGNORED_TOP_LEVEL = frozenset({"__MACOSX"})


@dataclass(frozen=True)
class _Entry:
    """One archive member reduced to what extraction needs."""

    name: str            # the member's name as stored, for messages
    parts: tuple[str, ...]  # the checked relative path
    is_dir: bool
    size: int
    mode: int
    open: Callable[[], IO[bytes]]  # for regular files only


def is_archive(path: Path) -> bool:
    """True when ``path`` names an archive format that ``materialize`` extracts."""
    return Path(path).name.lower().endswith(ARCHIVE_SUFFIXES)


def cache_dir() -> Path:
    """lis's cache root: ``$LIS_CACHE_DIR`` if set, else ``~/.cache/lis``."""
    configured = os.environ.get(CACHE_DIR_ENV)
    return Path(configured).expanduser() if configured else DEFAULT_CACHE_DIR.expanduser()


def default_cache_root() -> Path:
    """Where extracted archives go: ``<cache root>/artifacts``."""
    return cache_dir() / "artifacts"


def archive_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_digest(source: Path) -> str:
    """The digest a service pins its model with (``model_sha256``), as 64 hex digits.

    A file (an archive, a single model file): its sha256, what ``sha256sum`` prints.
    A folder: the sha256 of what ``sha256sum`` prints for each regular file in
    it, one line each (``<hex>  <relative path>``), sorted by path bytes:

        (cd FOLDER && find . -type f -printf '%P\\0' | LC_ALL=C sort -z \\
             | xargs -0 sha256sum) | sha256sum

    A folder holding a symbolic link is refused: the digest could not cover
    what the link points at, which may change under it.
    """
    source = Path(source)
    if not source.is_dir():
        return archive_sha256(source)
    lines = [f"{archive_sha256(source / name)}  {name}\n".encode()
             for name in sorted(_folder_files(source), key=os.fsencode)]
    return hashlib.sha256(b"".join(lines)).hexdigest()


def _folder_files(folder: Path) -> Iterator[str]:
    """Relative POSIX paths of the regular files under ``folder``; links refused."""
    for root, folders, files in os.walk(folder):
        for name in folders + files:
            path = Path(root) / name
            if path.is_symlink():
                raise ArtifactError(str(folder), f"{path.relative_to(folder)} is a symbolic "
                                                 "link: a pinned model folder may hold none")
        for name in files:
            path = Path(root) / name
            if stat.S_ISREG(path.lstat().st_mode):
                yield path.relative_to(folder).as_posix()


def artifact_version(source: Path) -> str:
    """A short content hash of a model folder or archive: shows which model a replica runs.

    The deployer computes it too, from the same path, so that a new model at
    the same path is a new version of the service (see ``serve_app.app``).
    """
    source = Path(source)
    digest = hashlib.sha256()
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    for path in files:
        if path != source:
            digest.update(str(path.relative_to(source)).encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:12]


def materialize(source: Path, cache_root: Path | None = None, *,
                max_bytes: int = MAX_ARCHIVE_BYTES, max_files: int = MAX_ARCHIVE_FILES) -> Path:
    """The folder holding a model: ``source`` itself, or its archive extracted.

    An archive is extracted once into ``<cache_root>/<sha256>/``; later calls
    return that folder without extracting again. When everything in the
    archive sits in one top-level folder (``model/...``), that folder is
    returned, so ``tar czf model.tar.gz model/`` works as well as a flat archive.
    """
    source = Path(source).expanduser()
    if source.is_dir():
        return source.resolve()
    if not source.is_file():
        raise ArtifactError(str(source), "no such file or folder")
    if not is_archive(source):
        raise ArtifactError(
            str(source), f"not a folder nor an archive ({', '.join(ARCHIVE_SUFFIXES)})")
    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    destination = root / archive_sha256(source)
    if not destination.is_dir():
        extract_archive(source, destination, max_bytes=max_bytes, max_files=max_files)
    return _content_root(destination)


def extract_archive(archive: Path, destination: Path, *, max_bytes: int = MAX_ARCHIVE_BYTES,
                    max_files: int = MAX_ARCHIVE_FILES) -> Path:
    """Extract ``archive`` safely and atomically into ``destination`` (which must not exist).

    If another process creates ``destination`` meanwhile, its copy is kept and
    ours is discarded: both describe the same archive.
    """
    archive, destination = Path(archive), Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".partial",
                                    dir=destination.parent))
    try:
        _extract_entries(archive, staging, max_bytes, max_files)
        staging.chmod(0o755)  # mkdtemp made it private; the model is not secret
        _publish(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination


def _publish(staging: Path, destination: Path) -> None:
    try:
        os.rename(staging, destination)
    except OSError:
        # rename onto an existing non-empty folder fails: a concurrent
        # extractor of the same archive finished first.
        if not destination.is_dir():
            raise


def _content_root(directory: Path) -> Path:
    children = [child for child in directory.iterdir() if child.name not in _IGNORED_TOP_LEVEL]
    if len(children) == 1 and children[0].is_dir():
        return children[0]
    return directory


def _extract_entries(archive: Path, staging: Path, max_bytes: int, max_files: int) -> None:
    files, written = 0, 0
    with _Entries(archive) as entries:
        for entry in entries:
            # Folders count too: a million empty folders cost inodes as files do.
            files += 1
            if files > max_files:
                raise UnsafeArchive(
                    str(archive), f"too many entries: more than the limit of {max_files} "
                                  f"(at entry {entry.name!r})")
            if entry.is_dir:
                _make_folder(archive, entry, staging)
                continue
            if written + entry.size > max_bytes:
                raise _oversize(archive, entry.name, max_bytes)
            written += _write_file(archive, entry, staging, max_bytes - written, max_bytes)


def _oversize(archive: Path, name: str, max_bytes: int) -> UnsafeArchive:
    return UnsafeArchive(
        str(archive), f"too large: entry {name!r} takes the extracted size over the limit "
                      f"of {max_bytes} bytes")


def _make_folder(archive: Path, entry: _Entry, staging: Path) -> None:
    try:
        staging.joinpath(*entry.parts).mkdir(parents=True, exist_ok=True)
    except OSError as error:  # e.g. a file of the same name came first
        raise ArtifactError(str(archive), f"cannot extract {entry.name!r}: {error.strerror}") \
            from error


def _write_file(archive: Path, entry: _Entry, staging: Path, budget: int, max_bytes: int) -> int:
    if not entry.parts:
        raise UnsafeArchive(str(archive), f"entry {entry.name!r} has no file name")
    target = staging.joinpath(*entry.parts)
    # O_NOFOLLOW: belt and braces, no link can exist in staging anyway.
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    written = 0
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(target, flags, _file_mode(entry.mode))
    except OSError as error:  # a folder of that name, or a file where a folder should be
        raise ArtifactError(str(archive), f"cannot extract {entry.name!r}: {error.strerror}") \
            from error
    try:
        with entry.open() as source, os.fdopen(descriptor, "wb") as out:
            for chunk in iter(lambda: source.read(_CHUNK), b""):
                written += len(chunk)
                if written > budget:
                    raise _oversize(archive, entry.name, max_bytes)
                out.write(chunk)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as error:
        raise ArtifactError(str(archive), f"entry {entry.name!r} is corrupt: {error}") from error
    return written


def _file_mode(mode: int) -> int:
    # Keep the owner's execute bit (harmless for .so), drop setuid and friends.
    return 0o755 if mode & 0o100 else 0o644


# --- reading entries, per format ----------------------------------------------

class _Entries:
    """Context manager yielding checked ``_Entry`` objects from one archive."""

    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self._handle: tarfile.TarFile | zipfile.ZipFile | None = None

    def __enter__(self) -> Iterator[_Entry]:
        name = self.archive.name.lower()
        try:
            if name.endswith(".zip"):
                self._handle = zipfile.ZipFile(self.archive)
                return self._zip_entries(self._handle)
            self._handle = tarfile.open(self.archive, "r:*")
            return self._tar_entries(self._handle)
        except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as error:
            raise ArtifactError(str(self.archive), f"cannot read archive: {error}") from error

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.close()

    def _tar_entries(self, tar: tarfile.TarFile) -> Iterator[_Entry]:
        try:
            for member in tar:
                yield self._tar_entry(tar, member)
        except (tarfile.TarError, OSError, EOFError) as error:
            raise ArtifactError(str(self.archive), f"corrupt archive: {error}") from error

    def _tar_entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> _Entry:
        parts = _safe_parts(self.archive, member.name)
        if member.issym() or member.islnk():
            kind = "symbolic link" if member.issym() else "hard link"
            # A hard link's target is relative to the archive root, a symlink's to its folder.
            base = member.name if member.issym() else "x"
            raise UnsafeArchive(str(self.archive),
                                _link_problem(member.name, kind, member.linkname, base))
        if not (member.isfile() or member.isdir()):
            raise UnsafeArchive(
                str(self.archive), f"entry {member.name!r} is a special file "
                                   f"({_tar_kind(member)}); only files and folders are allowed")
        return _Entry(member.name, parts, member.isdir(), member.size, member.mode,
                      lambda: tar.extractfile(member))  # type: ignore[arg-type,return-value]

    def _zip_entries(self, archive: zipfile.ZipFile) -> Iterator[_Entry]:
        for info in archive.infolist():
            yield self._zip_entry(archive, info)

    def _zip_entry(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> _Entry:
        parts = _safe_parts(self.archive, info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            target = archive.read(info).decode("utf-8", "replace")
            raise UnsafeArchive(str(self.archive),
                                _link_problem(info.filename, "symbolic link", target, info.filename))
        if mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise UnsafeArchive(
                str(self.archive), f"entry {info.filename!r} is a special file; "
                                   "only files and folders are allowed")
        return _Entry(info.filename, parts, info.is_dir(), info.file_size, mode,
                      lambda: archive.open(info))


def _safe_parts(archive: Path, name: str) -> tuple[str, ...]:
    """The entry's path as components, or ``UnsafeArchive`` if it could escape."""
    if "\x00" in name:
        raise UnsafeArchive(str(archive), f"entry {name!r} has a NUL byte in its name")
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        raise UnsafeArchive(str(archive), f"entry {name!r} has an absolute path")
    parts = tuple(part for part in PurePosixPath(posix).parts if part not in ("", "."))
    if ".." in parts:
        raise UnsafeArchive(
            str(archive), f"entry {name!r} escapes the destination folder (path with '..')")
    return parts


def _link_problem(name: str, kind: str, target: str, base: str) -> str:
    where = "outside the destination" if _escapes(base, target) else "inside the archive"
    return (f"entry {name!r} is a {kind} to {target!r} ({where}); "
            "links are not allowed in model archives")


def _escapes(name: str, target: str) -> bool:
    if target.startswith("/"):
        return True
    depth = 0
    for part in [*PurePosixPath(name).parent.parts, *PurePosixPath(target).parts]:
        depth += -1 if part == ".." else (0 if part in ("", ".") else 1)
        if depth < 0:
            return True
    return False


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.ischr():
        return "character device"
    if member.isblk():
        return "block device"
    if member.isfifo():
        return "FIFO"
    return "unsupported type"


# --- writing -------------------------------------------------------------------

def pack_folder(folder: Path, dest: Path) -> Path:
    """Write the files under ``folder`` into a flat ``.tar.gz``/``.tgz``/``.tar``/``.zip``."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    name = Path(dest).name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in files:
                archive.write(path, path.relative_to(folder).as_posix())
        return Path(dest)
    with tarfile.open(dest, "w" if name.endswith(".tar") else "w:gz") as archive:
        for path in files:
            archive.add(path, path.relative_to(folder).as_posix(), recursive=False)
    return Path(dest)


def store_artifact(folder: Path, dest: Path) -> Path:
    """Place a finished artifact ``folder`` at ``dest``: an archive if ``dest``
    names one, else a folder (replacing an existing one). Either way ``dest``
    appears complete or not at all: it is written beside and renamed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        # Under its final name inside scratch: gzip records the name it was written as.
        partial = scratch / dest.name
        if is_archive(dest):
            pack_folder(folder, partial)
        else:
            shutil.copytree(folder, partial)
            partial.chmod(0o755)
            if dest.is_dir():
                shutil.rmtree(dest)
        os.replace(partial, dest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return dest
