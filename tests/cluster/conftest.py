"""Captured device files and an environment free of any real cluster token.

``fixtures/<device>/`` holds what those boards expose under ``/`` (the
device tree, ``/etc/nv_tegra_release``, ``/proc/cpuinfo``, ``/proc/meminfo``)
plus ``uname-m``, the architecture the kernel reports.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster import _token

FIXTURES = Path(__file__).parent / "fixtures"
RAY_TOKEN_VARIABLES = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_USE_TLS")


@dataclass(frozen=True)
class CapturedDevice:
    name: str
    root: Path
    machine: str

    def cli_args(self) -> list[str]:
        return ["--device-root", str(self.root), "--machine", self.machine]


def _captured(name: str, root: Path | None = None) -> CapturedDevice:
    root = root or FIXTURES / name
    return CapturedDevice(name, root, (FIXTURES / name / "uname-m").read_text().strip())


@pytest.fixture
def device() -> Callable[[str], CapturedDevice]:
    """A captured device by name (a folder of ``fixtures/``), read-only."""
    return _captured


@pytest.fixture
def copy_device(tmp_path: Path) -> Callable[[str], CapturedDevice]:
    """A writable copy of a captured device, to remove or change files."""
    def make(name: str) -> CapturedDevice:
        root = tmp_path / "devices" / name
        shutil.copytree(FIXTURES / name, root)
        return _captured(name, root)
    return make


@pytest.fixture(autouse=True)
def no_real_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No test reads or writes the user's token, or inherits Ray's auth variables."""
    for name in RAY_TOKEN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    default = tmp_path / "home" / ".config" / "lis" / "cluster-token"
    monkeypatch.setattr(_token, "DEFAULT_TOKEN_FILE", default)
    yield default


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    """A worker's copy of the head's token, mode 0600."""
    path = tmp_path / "cluster-token"
    _token.write_new_token(path)
    return path
