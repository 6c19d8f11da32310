"""Issue #17, door 3: an unusable token switched authentication off silently.

On the code before this change, ``http_token`` returned whatever the token
file or the variable held: an empty file (left by a crash or a full disk
between its two writes, ``touch`` then ``write_text``) gave ``""``, which
``build_http_app`` takes as "no token", so a lis on the LAN served open; a
group-readable file was used as is; ``LIS_TOKEN=" "`` was taken as a token of
one space and ``LIS_TOKEN=""`` as none at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from serve_app import http_token as token_module
from serve_app.http_token import http_token
from vocabulary.errors import ConfigError

GOOD = "a-token-long-enough-to-keep"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def token_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("LIS_TOKEN", raising=False)
    path = tmp_path / "lis" / "http-token"
    monkeypatch.setattr(token_module, "TOKEN_FILE", path)
    return path


def _write(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


@pytest.mark.parametrize(("text", "mode", "problem"), [
    ("", 0o600, "is empty or blank"),
    ("\n  \n", 0o600, "is empty or blank"),
    ("short\n", 0o600, "is 5 characters long, under the 16 required"),
    (GOOD + "\n", 0o640, "is readable by other users (mode 640): chmod 600 it"),
    (GOOD + "\n", 0o604, "is readable by other users (mode 604): chmod 600 it"),
], ids=["empty", "blank", "short", "group-readable", "world-readable"])
def test_an_unusable_token_file_is_refused_naming_it(token_file: Path, text: str, mode: int,
                                                     problem: str) -> None:
    """Old code: returned "" (empty, blank: the ingress then served open), "short", or the
    readable token, without a word."""
    _write(token_file, text, mode)
    with pytest.raises(ConfigError) as refused:
        http_token("0.0.0.0")
    assert f"{token_file}: {problem}" in refused.value.message


def test_a_good_token_file_is_used(token_file: Path) -> None:
    _write(token_file, GOOD + "\n")
    assert http_token("0.0.0.0") == GOOD


@pytest.mark.parametrize("value", ["", " ", "\t\n"], ids=["empty", "space", "whitespace"])
@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
@pytest.mark.parametrize("variable", ["LIS_TOKEN", "SITE_TOKEN"])
def test_a_blank_token_variable_is_an_error_never_no_token(
        token_file: Path, monkeypatch: pytest.MonkeyPatch, value: str, host: str,
        variable: str) -> None:
    """Old code: " " came back as the token; "" as None on loopback, and beyond loopback the
    variable was passed over for the token file."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as refused:
        http_token(host, None if variable == "LIS_TOKEN" else variable)
    assert f"${variable}: is empty or blank" in refused.value.message


def test_a_short_token_variable_is_refused(token_file: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIS_TOKEN", "secret")
    with pytest.raises(ConfigError, match=r"\$LIS_TOKEN: is 6 characters long"):
        http_token("0.0.0.0")


_FULL_DISK = """
import resource, signal, sys
from pathlib import Path
from serve_app import http_token as token_module
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))  # a full disk
token_module.TOKEN_FILE = Path(sys.argv[1])
try:
    token_module.http_token("0.0.0.0")
except OSError as error:
    print("write failed:", error)
"""


def test_a_token_write_that_fails_midway_leaves_no_file_to_serve_open(token_file: Path) -> None:
    """Old code: the file was created empty, then the write failed; the next ``lis up`` read
    the empty file and returned "" (no token: served open on 0.0.0.0)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("LIS_TOKEN", None)
    crashed = subprocess.run([sys.executable, "-c", _FULL_DISK, str(token_file)], env=env,
                             capture_output=True, text=True, timeout=120, cwd=REPO)
    assert "write failed" in crashed.stdout, crashed.stderr
    assert list(token_file.parent.iterdir()) == []  # no half-written token, no temporary
    made = http_token("0.0.0.0")  # the next start
    assert made is not None and len(made) >= 32
    assert token_file.read_text().strip() == made
    assert (token_file.stat().st_mode & 0o777) == 0o600
