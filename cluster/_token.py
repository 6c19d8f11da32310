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
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vocabulary.errors import ConfigError, ConfigIssue
from vocabulary.names import CLUSTER_TOKEN_FILE, LOCAL_RAY_TOKEN_FILE

__all__ = [
    "AUTH_MODE_ENV",
    "DEFAULT_TOKEN_FILE",
    "TOKEN_ENV",
    "TOKEN_PATH_ENV",
    "TokenSource",
    "cluster_auth_environment",
    "find_token",
    "local_ray_token",
    "write_new_token",
]

DEFAULT_TOKEN_FILE = CLUSTER_TOKEN_FILE.expanduser()
LOCAL_TOKEN_FILE = LOCAL_RAY_TOKEN_FILE.expanduser()
AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
# 256 bits, hex: the same shape `ray get-auth-token --generate` makes.
_TOKEN_BYTES = 32
# 128 bits of hex: shorter tokens can be guessed.
_MIN_TOKEN_CHARS = 32


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


def require(source: TokenSource, parameter: str | None = "--token-file",
            what: str = "cluster token") -> None:
    """Fail with every problem of an existing-token source (missing, empty, readable by others)."""
    if source.kind == "environment":
        return
    assert source.path is not None
    problem = _token_file_problem(source.path)
    if problem:
        raise ConfigError(what, [ConfigIssue(str(source.path), parameter, problem)])


def write_new_token(path: Path) -> None:
    """Create ``path`` with a fresh token, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Written whole under another name, then linked into place: a crash never
    # leaves an empty token file, and link() fails rather than overwrite a
    # token that workers already hold.
    fd, scratch = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:  # mkstemp: mode 0600
            handle.write(secrets.token_hex(_TOKEN_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
        os.link(scratch, path)
    finally:
        os.unlink(scratch)


def cluster_auth_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variables a driver (``lis up --address auto``) needs to talk to a lis cluster.

    Empty when no token is found: Ray then reports its own authentication error.
    """
    environ = os.environ if environ is None else environ
    source = find_token(None, environ)
    if source.exists:
        return source.environment()
    return {}


def local_ray_token() -> TokenSource:
    """The token of the Ray that ``lis up`` starts for this box: made once, 0600, checked.

    Ray >= 2.52 turns token authentication on for a ``ray.init()`` cluster
    with a token in ``~/.ray/auth_token``, created with the umask's mode
    (readable by every local user) and never checked. lis names its own file
    instead, makes it readable by its owner only, and refuses it when it is
    empty, short or readable by others. Every Ray ``lis up`` starts for this
    user shares it: a Ray reads the file again whenever it starts a worker,
    so a file rewritten per start would lock out a Ray still running.
    """
    if not LOCAL_TOKEN_FILE.exists():
        try:
            write_new_token(LOCAL_TOKEN_FILE)
        except FileExistsError:
            pass  # another lis up made it first: use that one
    source = TokenSource("file", LOCAL_TOKEN_FILE, "the local Ray's token file", True)
    require(source, None, "the local Ray's token")
    return source


def _file_source(path: Path, origin: str) -> TokenSource:
    return TokenSource("file", path, origin, path.is_file())


def _token_file_problem(path: Path) -> str | None:
    if not path.is_file():
        return ("no cluster token here: copy the head's token file to this path "
                "(or set RAY_AUTH_TOKEN)")
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        return f"readable by other users (mode {stat.S_IMODE(path.stat().st_mode):o}): chmod 600 it"
    token = path.read_text(encoding="utf-8", errors="replace").strip()
    if not token:
        return "the file is empty"
    if len(token) < _MIN_TOKEN_CHARS:
        return f"the token is {len(token)} characters: at least {_MIN_TOKEN_CHARS} are needed"
    return None
