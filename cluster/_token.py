"""The cluster token: where it lives, how it is made, how Ray is pointed at it.

Ray (>= 2.52) checks one shared token on every control-plane RPC when
``RAY_AUTH_MODE=token``. It reads the token from ``RAY_AUTH_TOKEN`` (the value
itself), else from the file named by ``RAY_AUTH_TOKEN_PATH``, else from
``~/.ray/auth_token``. lis always names the file explicitly, so Ray's default
path (which ``ray.init()`` may fill with a token of its own) never decides
which cluster a node trusts, and the token never appears on a command line.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vocabulary.errors import ConfigError, ConfigIssue
from vocabulary.names import CLUSTER_TOKEN_FILE

__all__ = [
    "AUTH_MODE_ENV",
    "DEFAULT_TOKEN_FILE",
    "TOKEN_ENV",
    "TOKEN_PATH_ENV",
    "TokenSource",
    "cluster_auth_environment",
    "find_token",
    "write_new_token",
]

DEFAULT_TOKEN_FILE = CLUSTER_TOKEN_FILE.expanduser()
AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
# 256 bits, hex: the same shape `ray get-auth-token --generate` makes.
_TOKEN_BYTES = 32


@dataclass(frozen=True)
class TokenSource:
    """Where a node's token comes from, and whether it still has to be made."""

    kind: Literal["file", "environment"]
    path: Path | None  # the token file; None when the token is in RAY_AUTH_TOKEN
    origin: str  # how it was chosen, for the decision line
    exists: bool

    def environment(self) -> dict[str, str]:
        """What Ray's processes need to use this token (never the token itself)."""
        env = {AUTH_MODE_ENV: "token"}
        if self.path is not None:
            env[TOKEN_PATH_ENV] = str(self.path)
        return env


def find_token(token_file: Path | None, environ: Mapping[str, str]) -> TokenSource:
    """Pick the token in lis's order of precedence.

    ``--token-file``, then ``RAY_AUTH_TOKEN``, then ``RAY_AUTH_TOKEN_PATH``,
    then ``~/.config/lis/cluster-token``. The result may not exist yet: a
    head makes it, a worker refuses to start (see ``require``).
    """
    if token_file is not None:
        return _file_source(token_file.expanduser(), "--token-file")
    if environ.get(TOKEN_ENV, "").strip():
        return TokenSource("environment", None, f"the {TOKEN_ENV} environment variable", True)
    if environ.get(TOKEN_PATH_ENV):
        return _file_source(Path(environ[TOKEN_PATH_ENV]).expanduser(), TOKEN_PATH_ENV)
    return _file_source(DEFAULT_TOKEN_FILE, "the default token file")


def require(source: TokenSource, parameter: str = "--token-file") -> None:
    """Fail with every problem of an existing-token source (missing, empty, readable by others)."""
    if source.kind == "environment":
        return
    assert source.path is not None
    problem = _token_file_problem(source.path)
    if problem:
        raise ConfigError("cluster token", [ConfigIssue(str(source.path), parameter, problem)])


def write_new_token(path: Path) -> None:
    """Create ``path`` with a fresh token, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # O_EXCL: never overwrite a token that workers already hold.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(_TOKEN_BYTES))


def cluster_auth_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variables a driver (``lis up --address auto``) needs to talk to a lis cluster.

    Empty when no token is found: Ray then reports its own authentication error.
    """
    environ = os.environ if environ is None else environ
    source = find_token(None, environ)
    if source.exists:
        return source.environment()
    return {}


def _file_source(path: Path, origin: str) -> TokenSource:
    return TokenSource("file", path, origin, path.is_file())


def _token_file_problem(path: Path) -> str | None:
    if not path.is_file():
        return ("no cluster token here: copy the head's token file to this path "
                "(or set RAY_AUTH_TOKEN)")
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        return f"readable by other users (mode {stat.S_IMODE(path.stat().st_mode):o}): chmod 600 it"
    if not path.read_text(encoding="utf-8", errors="replace").strip():
        return "the file is empty"
    return None
