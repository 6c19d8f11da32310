"""What the emulated aarch64 suite's modules share (see conftest.py)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# qemu-user runs arm64 code about 50 times slower than the host: deadlines are generous,
# and every wait is for a condition, so a faster machine does not wait longer.
EMULATED_SLOWDOWN = 50
