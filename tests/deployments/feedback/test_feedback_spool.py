"""The spool on its own: durable records, a size cap, recovery after a crash, one owner."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from deployments.feedback.spool import Destination, Spool
from deployments.feedback.store import StoredObject
from vocabulary.errors import LisError, SpoolFull

TO = Destination(bucket="bucket", key="prefix/id.jpg", content_type="image/jpeg")
ORPHAN_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def test_records_survive_reopening_oldest_first_with_their_upload_state(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10_000)
    first = spool.add("a", "cfg", b"first", [0.1, 0.9], {"k": "v"}, TO)
    second = spool.add("b", "cfg", b"second", {"prediction": []}, {}, TO)
    stored = StoredObject(bucket="bucket", key="prefix/a.jpg", url="s3://bucket/prefix/a.jpg",
                          etag='"x"')
    spool.mark_uploaded(first, stored)
    used = spool.used_bytes
    spool.close()

    reopened = Spool(tmp_path, max_bytes=10_000)
    records = reopened.records()
    assert [record.sample_id for record in records] == ["a", "b"]
    assert records[0].upload == stored and records[1].upload is None
    assert records[0].prediction == [0.1, 0.9] and records[0].metadata == {"k": "v"}
    assert reopened.read_input(records[1]) == b"second"
    assert reopened.used_bytes == used and len(reopened) == 2
    reopened.remove(records[0])
    reopened.remove(records[1])
    assert reopened.used_bytes == 0 and len(reopened) == 0
    assert second.destination == TO


def test_a_sample_past_the_cap_is_refused_and_nothing_stored_is_dropped(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1500)
    kept = spool.add("a", "cfg", bytes(1000), [1.0], {}, TO)
    with pytest.raises(SpoolFull, match="spool is full"):
        spool.add("b", "cfg", bytes(1000), [1.0], {}, TO)
    assert len(spool) == 1 and spool.read_input(kept) == bytes(1000)


def test_recovery_drops_half_written_samples_and_quarantines_unreadable_ones(
        tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10_000)
    spool.add("good", "cfg", b"ok", [1.0], {}, TO)
    spool.close()
    samples = tmp_path / "samples"
    orphan = samples / f"{ORPHAN_ID}.bin"  # a sample id lis makes (uuid4)
    orphan.write_bytes(b"header never written")  # add() had not returned
    (tmp_path / "tmp" / f"{ORPHAN_ID}.json.{'0' * 32}").write_bytes(b"{")  # as _stage names it
    (samples / "broken.json").write_bytes(b"{not json")
    (samples / "broken.bin").write_bytes(b"data")

    reopened = Spool(tmp_path, max_bytes=10_000)

    assert [record.sample_id for record in reopened.records()] == ["good"]
    assert not orphan.exists()
    assert list((tmp_path / "tmp").iterdir()) == []
    assert sorted(path.name for path in (tmp_path / "corrupt").iterdir()) == [
        "broken.bin", "broken.json"]


def test_recovery_deletes_only_names_lis_writes(tmp_path: Path) -> None:
    """Issue #17 (low): a spool pointed at a folder of other files (``~``) deleted every file
    in its ``tmp/`` and every ``samples/*.bin`` without a header on open (old code)."""
    for folder in ("tmp", "samples"):
        (tmp_path / folder).mkdir()
    (tmp_path / "tmp" / "thesis.txt").write_bytes(b"a user's file")
    (tmp_path / "samples" / "holiday.bin").write_bytes(b"a user's file")
    Spool(tmp_path, max_bytes=10_000).close()
    assert (tmp_path / "tmp" / "thesis.txt").exists()
    assert (tmp_path / "samples" / "holiday.bin").exists()


def test_samples_are_private_to_lis_user(tmp_path: Path) -> None:
    """Issue #17 (low): old code wrote samples (camera frames) 0644 in 0755 folders."""
    spool = Spool(tmp_path / "spool", max_bytes=10_000)
    spool.add("good", "cfg", b"frame", [1.0], {}, TO)
    for folder in ("", "samples", "tmp"):
        assert stat.S_IMODE((tmp_path / "spool" / folder).stat().st_mode) == 0o700
    for sample in (tmp_path / "spool" / "samples").iterdir():
        assert stat.S_IMODE(sample.stat().st_mode) == 0o600, sample


def test_one_process_owns_a_spool_folder(tmp_path: Path) -> None:
    owner = Spool(tmp_path, max_bytes=100)
    with pytest.raises(LisError, match="held by another process"):
        Spool(tmp_path, max_bytes=100, lock_timeout_s=0.1)
    owner.close()
    Spool(tmp_path, max_bytes=100, lock_timeout_s=0.1).close()


def test_the_local_store_keeps_samples_private(tmp_path: Path) -> None:
    """Issue #17 (low): old code wrote the local store's objects 0644 in 0755 folders."""
    from deployments.feedback.store import LocalFolderStore

    stored = LocalFolderStore(tmp_path / "store").put(
        "bucket", "prefix/id.jpg", b"frame", content_type="image/jpeg", metadata={})
    folder = tmp_path / "store" / "bucket" / "prefix"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert sorted(stat.S_IMODE(path.stat().st_mode) for path in folder.iterdir()) == [0o600] * 2
    assert stored.url.endswith("/bucket/prefix/id.jpg")
