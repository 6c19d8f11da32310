"""A replica's access lines: queued by the request, written in batches, rotated."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

import deployments.access_log as access_module
from deployments.access_log import AccessLog

LINE = re.compile(r"^INFO \d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} lis_svc r1 -- \[svc\] access "
                  r"status=(\d+) latency_ms=([\d.]+) prepare_ms=1.0 bytes=(\d+)$")


def _lines(path: Path) -> list[re.Match]:
    found = [LINE.match(line) for line in path.read_text().splitlines()]
    assert all(found), path.read_text()
    return found  # type: ignore[return-value]


def test_lines_from_many_threads_are_all_written_once(tmp_path: Path) -> None:
    log = AccessLog(tmp_path / "serve" / "access_lis_svc_r1.log", "lis_svc", "r1", "svc")
    threads = [threading.Thread(target=lambda t=t: [log.write(200 + t, 1.25, "prepare_ms=1.0", i)
                                                    for i in range(250)]) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()  # a clean stop writes what is still queued
    found = _lines(log.path)
    assert len(found) == 1000
    assert sorted((int(m.group(1)), int(m.group(3))) for m in found) == \
        sorted((200 + t, i) for t in range(4) for i in range(250))
    assert {m.group(2) for m in found} == {"1.2"}  # one decimal, as before


def test_lines_reach_the_file_without_a_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    monkeypatch.setattr(access_module, "FLUSH_PERIOD_S", 0.05)
    log = AccessLog(tmp_path / "access.log", "lis_svc", "r1", "svc")
    log.write(504, 10001.0, "prepare_ms=1.0", 7)
    written = threading.Event()
    for _ in range(100):
        if log.path.read_text():
            written.set()
            break
        written.wait(0.05)
    assert written.is_set()
    assert _lines(log.path)[0].group(1) == "504"
    log.close()


def test_a_full_file_is_rotated_keeping_the_backups(tmp_path: Path) -> None:
    log = AccessLog(tmp_path / "access.log", "lis_svc", "r1", "svc", max_bytes=2000, backups=2)
    for batch in range(5):
        for i in range(30):  # about 3 kB a batch
            log.write(200, 1.0, "prepare_ms=1.0", batch * 100 + i)
        log.flush()
    log.close()
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == ["access.log", "access.log.1", "access.log.2"]
    newest_first = [int(m.group(3)) for name in kept for m in _lines(tmp_path / name)]
    # The current file is empty (just rotated); .1 holds the last batch, .2 the one before.
    assert newest_first == list(range(400, 430)) + list(range(300, 330))


def test_an_image_sent_as_the_other_format_is_counted_in_its_line(tmp_path: Path) -> None:
    log = AccessLog(tmp_path / "serve" / "access_lis_svc_r1.log", "lis_svc", "r1", "svc")
    log.write(200, 3.0, "prepare_ms=1.0", 10, mislabelled=True)
    log.write(200, 3.0, "prepare_ms=1.0", 11)
    log.close()
    lines = log.path.read_text().splitlines()
    assert [line.endswith("bytes=10 content_type_mismatch=1") for line in lines] == [True, False]
    assert lines[1].endswith("bytes=11")
