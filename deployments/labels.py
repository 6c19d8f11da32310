"""An artifact's class names (``labels.txt``): one reader for every runtime and tool.

Line i names class i, so a blank line in the middle is kept (as an empty name)
and never shifts the names after it; blank lines at the end are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vocabulary.errors import ArtifactError

__all__ = ["read_labels", "write_labels"]


def read_labels(path: Path) -> tuple[str, ...] | None:
    """Class names from a label file (one per line), or None if there is none."""
    if not path.is_file():
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ArtifactError(str(path), f"unreadable label file: {error}") from error
    while lines and not lines[-1].strip():
        lines.pop()
    return tuple(line.strip() for line in lines)


def write_labels(path: Path, labels: Sequence[str]) -> None:
    """Write ``labels`` so that ``read_labels`` reads them back unchanged."""
    if any("\n" in label for label in labels):
        raise ValueError("a label may not contain a newline")
    path.write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
