"""The spool on its own: durable records, a size cap, recovery after a crash, one owner."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.feedback.spool import Destination, Spool
from deployments.feedback.store import StoredObject
from vocabulary.errors import LisError, SpoolFull

TO = Destination(bucket="bucket", key="prefix/id.jpg", content_type="image/jpeg")


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
    (samples / "orphan.bin").write_bytes(b"header never written")  # add() had not returned
    (tmp_path / "tmp" / "partial.json.123").write_bytes(b"{")
    (samples / "broken.json").write_bytes(b"{not json")
    (samples / "broken.bin").write_bytes(b"data")

    reopened = Spool(tmp_path, max_bytes=10_000)

    assert [record.sample_id for record in reopened.records()] == ["good"]
    assert not (samples / "orphan.bin").exists()
    assert list((tmp_path / "tmp").iterdir()) == []
    assert sorted(path.name for path in (tmp_path / "corrupt").iterdir()) == [
        "broken.bin", "broken.json"]


def test_one_process_owns_a_spool_folder(tmp_path: Path) -> None:
    owner = Spool(tmp_path, max_bytes=100)
    with pytest.raises(LisError, match="held by another process"):
        Spool(tmp_path, max_bytes=100, lock_timeout_s=0.1)
    owner.close()
    Spool(tmp_path, max_bytes=100, lock_timeout_s=0.1).close()
