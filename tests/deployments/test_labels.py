"""One reader of ``labels.txt`` for every runtime and tool: line i names class i."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.labels import read_labels, write_labels
from vocabulary.errors import ArtifactError


def test_a_blank_line_in_the_middle_keeps_the_classes_after_it_in_place(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("cat\n\ndog\n  bird \n\n\n", encoding="utf-8")
    assert read_labels(path) == ("cat", "", "dog", "bird")


def test_no_file_is_no_labels(tmp_path: Path) -> None:
    assert read_labels(tmp_path / "labels.txt") is None


def test_written_labels_read_back_unchanged(tmp_path: Path) -> None:
    labels = ("circle", "square", "", "triangle")
    write_labels(tmp_path / "labels.txt", labels)
    assert read_labels(tmp_path / "labels.txt") == labels


def test_a_label_with_a_newline_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="newline"):
        write_labels(tmp_path / "labels.txt", ["a\nb"])


def test_an_unreadable_label_file_is_an_artifact_error(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(ArtifactError, match="unreadable label file"):
        read_labels(path)
