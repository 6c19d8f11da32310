"""The emulated aarch64 smoke suite: collected only on aarch64.

``make test-aarch64`` runs it inside an arm64 Debian root under qemu-user
(``scripts/aarch64/test.sh``); on x86_64 ``make test`` collects nothing here.
It reads x86's answers from ``LIS_AARCH64_REFERENCE`` (written on the host by
``x86_reference.py``).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from emulated import EMULATED_SLOWDOWN, REPO

# Everything in this folder is for an aarch64 machine only.
collect_ignore_glob = [] if platform.machine() == "aarch64" else ["*"]


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    value = os.environ.get("LIS_AARCH64_REFERENCE")
    if not value:
        pytest.fail("LIS_AARCH64_REFERENCE is not set: run the suite with `make test-aarch64`")
    return REPO / value


@pytest.fixture(scope="session")
def reference(reference_dir: Path) -> dict[str, Any]:
    from x86_reference import REFERENCE_FILE

    return dict(json.loads((reference_dir / REFERENCE_FILE).read_text())["models"])


@pytest.fixture(scope="session")
def built_models() -> Path:
    """``lis models build`` as on a board: installs the committed aarch64 artifacts."""
    lis = Path(sys.executable).with_name("lis")
    result = subprocess.run([str(lis), "models", "build"], cwd=REPO, capture_output=True,
                            text=True, timeout=60 * EMULATED_SLOWDOWN)
    assert result.returncode == 0, result.stdout + result.stderr
    print(result.stdout)
    return REPO / "build" / "models"
