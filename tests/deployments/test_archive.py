"""Safe extraction: what an untrusted model archive can and cannot do."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from deployments import archive
from deployments.archive import materialize, pack_folder
from vocabulary.errors import ArtifactError, UnsafeArchive


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zipped:
        for name, data in entries.items():
            zipped.writestr(name, data)
    return path


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "compiled.so").write_bytes(b"\x7fELF" + b"\0" * 60)
    (folder / "compiled.params").write_bytes(b"weights")
    (folder / "sub").mkdir()
    (folder / "sub" / "notes.txt").write_text("hello")
    return folder


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz", ".tar", ".zip"])
def test_each_format_extracts_to_the_same_files(tmp_path: Path, model_folder: Path,
                                                suffix: str) -> None:
    packed = pack_folder(model_folder, tmp_path / f"model{suffix}")
    result = materialize(packed, tmp_path / "cache")
    assert result.parent == tmp_path / "cache"
    assert (result / "compiled.params").read_bytes() == b"weights"
    assert (result / "sub" / "notes.txt").read_text() == "hello"


def test_a_folder_is_used_in_place(model_folder: Path, tmp_path: Path) -> None:
    assert materialize(model_folder, tmp_path / "cache") == model_folder.resolve()
    assert not (tmp_path / "cache").exists()


def test_single_top_level_folder_is_descended_into(tmp_path: Path) -> None:
    packed = _zip(tmp_path / "m.zip", {"model/a.params": b"1", "__MACOSX/._a": b"junk"})
    assert (materialize(packed, tmp_path / "cache") / "a.params").read_bytes() == b"1"


def test_second_materialize_does_no_work(tmp_path: Path, model_folder: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    packed = pack_folder(model_folder, tmp_path / "model.tar.gz")
    first = materialize(packed, tmp_path / "cache")
    marker = first / "compiled.params"
    marker.write_bytes(b"touched after extraction")

    def fail(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("extracted a second time")

    monkeypatch.setattr(archive, "extract_archive", fail)
    assert materialize(packed, tmp_path / "cache") == first
    assert marker.read_bytes() == b"touched after extraction"


def test_cache_folder_is_named_by_the_archive_hash(tmp_path: Path, model_folder: Path) -> None:
    packed = pack_folder(model_folder, tmp_path / "model.zip")
    result = materialize(packed, tmp_path / "cache")
    assert result.name == archive.archive_sha256(packed)
    copy = tmp_path / "renamed-copy.zip"
    copy.write_bytes(packed.read_bytes())
    assert materialize(copy, tmp_path / "cache") == result


def test_lis_cache_dir_sets_the_default_root(tmp_path: Path, model_folder: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIS_CACHE_DIR", str(tmp_path / "env-cache"))
    packed = pack_folder(model_folder, tmp_path / "model.tgz")
    assert materialize(packed).parent == tmp_path / "env-cache" / "artifacts"


def test_failed_extraction_leaves_nothing_behind(tmp_path: Path) -> None:
    packed = _tar(tmp_path / "bad.tar.gz", [_file("a.params"), _file("../evil")])
    with pytest.raises(UnsafeArchive):
        materialize(packed, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_loser_of_a_race_keeps_the_winners_folder(tmp_path: Path, model_folder: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    packed = pack_folder(model_folder, tmp_path / "model.tar.gz")
    cache = tmp_path / "cache"
    winner = cache / archive.archive_sha256(packed)
    real_extract = archive._extract_entries

    def another_process_finishes_first(*args: object) -> None:
        real_extract(*args)  # type: ignore[arg-type]
        winner.mkdir(parents=True)
        (winner / "compiled.params").write_bytes(b"weights")

    monkeypatch.setattr(archive, "_extract_entries", another_process_finishes_first)
    assert materialize(packed, cache) == winner
    assert [p.name for p in cache.iterdir()] == [winner.name]  # our partial copy is gone


def test_concurrent_extractors_agree(tmp_path: Path, model_folder: Path) -> None:
    (model_folder / "big.params").write_bytes(os.urandom(4 * 1024 * 1024))
    packed = pack_folder(model_folder, tmp_path / "model.tar.gz")
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(materialize(packed, tmp_path / "c")))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and len(results) == 4
    assert (results[0] / "big.params").read_bytes() == (model_folder / "big.params").read_bytes()
    assert [p.name for p in (tmp_path / "c").iterdir()] == [results[0].name]


# --- rejected archives: each with its reason ----------------------------------------

def _rejected(path: Path, cache: Path, **limits: int) -> str:
    with pytest.raises(UnsafeArchive) as caught:
        materialize(path, cache, **limits)
    return str(caught.value)


def test_zip_slip_entry_is_rejected(tmp_path: Path) -> None:
    packed = _zip(tmp_path / "slip.zip", {"ok.params": b"1", "../../outside.txt": b"2"})
    message = _rejected(packed, tmp_path / "cache")
    assert "'../../outside.txt'" in message and "escapes the destination" in message
    assert not (tmp_path / "outside.txt").exists()


def test_backslash_zip_slip_is_rejected(tmp_path: Path) -> None:
    packed = _zip(tmp_path / "slip.zip", {"..\\..\\outside.txt": b"2"})
    assert "escapes the destination" in _rejected(packed, tmp_path / "cache")


@pytest.mark.parametrize("name", ["/etc/evil.params", "C:/evil.params"])
def test_absolute_path_is_rejected(tmp_path: Path, name: str) -> None:
    packed = _tar(tmp_path / "abs.tar.gz", [_file(name)])
    message = _rejected(packed, tmp_path / "cache")
    assert repr(name) in message and "absolute path" in message


def test_symlink_pointing_out_is_rejected(tmp_path: Path) -> None:
    packed = _tar(tmp_path / "link.tar.gz",
                  [_special("compiled.so", tarfile.SYMTYPE, "../../../etc/passwd")])
    message = _rejected(packed, tmp_path / "cache")
    assert "'compiled.so' is a symbolic link to '../../../etc/passwd'" in message
    assert "outside the destination" in message


def test_symlink_inside_is_rejected_too(tmp_path: Path) -> None:
    packed = _tar(tmp_path / "link.tar.gz",
                  [_file("real.so"), _special("compiled.so", tarfile.SYMTYPE, "real.so")])
    message = _rejected(packed, tmp_path / "cache")
    assert "inside the archive" in message and "links are not allowed" in message


def test_hard_link_is_rejected(tmp_path: Path) -> None:
    packed = _tar(tmp_path / "hard.tar.gz", [_special("a.params", tarfile.LNKTYPE, "/etc/shadow")])
    message = _rejected(packed, tmp_path / "cache")
    assert "hard link to '/etc/shadow'" in message and "outside the destination" in message


def test_zip_symlink_is_rejected(tmp_path: Path) -> None:
    packed = tmp_path / "link.zip"
    with zipfile.ZipFile(packed, "w") as zipped:
        info = zipfile.ZipInfo("compiled.so")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zipped.writestr(info, "/usr/lib/libc.so.6")
    message = _rejected(packed, tmp_path / "cache")
    assert "symbolic link to '/usr/lib/libc.so.6'" in message


@pytest.mark.parametrize(("kind", "word"), [(tarfile.CHRTYPE, "character device"),
                                            (tarfile.BLKTYPE, "block device"),
                                            (tarfile.FIFOTYPE, "FIFO")])
def test_device_files_are_rejected(tmp_path: Path, kind: bytes, word: str) -> None:
    packed = _tar(tmp_path / "dev.tar.gz", [_special("null", kind)])
    assert f"'null' is a special file ({word})" in _rejected(packed, tmp_path / "cache")


def test_oversize_archive_is_rejected(tmp_path: Path) -> None:
    packed = _tar(tmp_path / "big.tar.gz", [_file("a.params", b"0" * 600),
                                            _file("b.params", b"0" * 600)])
    message = _rejected(packed, tmp_path / "cache", max_bytes=1000)
    assert "too large" in message and "'b.params'" in message and "1000 bytes" in message


def test_zip_bomb_is_stopped_while_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A header that under-reports its size must not get past the cap.
    packed = _zip(tmp_path / "bomb.zip", {"a.params": b"\0" * 5000})
    real_entry = archive._Entries._zip_entry

    def lying_entry(self: archive._Entries, *args: object) -> archive._Entry:
        entry = real_entry(self, *args)  # type: ignore[arg-type]
        return archive._Entry(entry.name, entry.parts, entry.is_dir, 1, entry.mode, entry.open)

    monkeypatch.setattr(archive._Entries, "_zip_entry", lying_entry)
    assert "too large" in _rejected(packed, tmp_path / "cache", max_bytes=1000)


def test_too_many_files_is_rejected(tmp_path: Path) -> None:
    packed = _zip(tmp_path / "many.zip", {f"f{i}.txt": b"" for i in range(6)})
    message = _rejected(packed, tmp_path / "cache", max_files=5)
    assert "too many entries" in message and "limit of 5" in message


def test_folders_count_against_the_entry_limit(tmp_path: Path) -> None:
    """Issue #17 (low): folder entries were not counted, so an archive of a million empty
    folders passed the file cap (old code: extracted, no error)."""
    folders = [(tarfile.TarInfo(f"d{i}"), None) for i in range(6)]
    for info, _ in folders:
        info.type = tarfile.DIRTYPE
    packed = _tar(tmp_path / "folders.tar.gz", folders)
    message = _rejected(packed, tmp_path / "cache", max_files=5)
    assert "too many entries" in message and "at entry 'd5'" in message


def test_default_limits_are_named_constants() -> None:
    assert archive.MAX_ARCHIVE_BYTES >= 1024**3
    assert archive.MAX_ARCHIVE_FILES >= 100


def test_corrupt_archive_is_an_artifact_error(tmp_path: Path) -> None:
    packed = tmp_path / "corrupt.tar.gz"
    packed.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ArtifactError, match="corrupt.tar.gz"):
        materialize(packed, tmp_path / "cache")


def test_file_where_a_folder_should_be_is_an_artifact_error(tmp_path: Path) -> None:
    packed = _zip(tmp_path / "clash.zip", {"a": b"file", "a/b.params": b"1"})
    with pytest.raises(ArtifactError, match="cannot extract 'a/b.params'"):
        materialize(packed, tmp_path / "cache")


def test_corrupt_entry_is_an_artifact_error(tmp_path: Path) -> None:
    packed = _zip(tmp_path / "crc.zip", {"a.params": b"A" * 1000})
    data = bytearray(packed.read_bytes())
    data[data.index(b"A" * 100)] = ord("B")  # stored uncompressed: the CRC no longer matches
    packed.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="'a.params' is corrupt"):
        materialize(packed, tmp_path / "cache")


def test_unknown_file_type_is_an_artifact_error(tmp_path: Path) -> None:
    (tmp_path / "model.rar").write_bytes(b"Rar!")
    with pytest.raises(ArtifactError, match="not a folder nor an archive"):
        materialize(tmp_path / "model.rar", tmp_path / "cache")
