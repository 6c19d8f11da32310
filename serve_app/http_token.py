"""The ingress's bearer token: where it comes from, and when one is required.

A token is required whenever the ingress listens beyond loopback. What
listens is judged from what a running Ray Serve actually bound
(``bound_http_host``) as well as from the host asked for: Ray Serve keeps the
HTTP options of its first start, so a later ``lis up`` or ``lis reload``
without the original ``--host`` would otherwise deploy a token-less ingress
behind proxies still listening on the LAN.

A token that is there but unusable (a blank variable; a token file that is
empty, short, or readable by other users) is a ``ConfigError``, never "no
token": authentication is never switched off by accident.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import socket
import stat
from pathlib import Path
from typing import NoReturn

from deployments.ray_internals import serve_details
from vocabulary.errors import ConfigError, ConfigIssue
from vocabulary.limits import MIN_HTTP_TOKEN_CHARS
from vocabulary.names import HTTP_TOKEN_FILE, TOKEN_ENV

__all__ = ["TOKEN_FILE", "bound_http_host", "http_token", "is_loopback"]

TOKEN_FILE = HTTP_TOKEN_FILE.expanduser()
_SOURCE = "the HTTP bearer token"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def bound_http_host() -> str | None:
    """The HTTP host the connected Ray's Serve was started with; None when Serve is not running.

    Ray Serve applies HTTP options only on its first start (later ones are
    ignored with a warning), so this, not a later ``--host``, is what its
    proxies listen on.
    """
    details = serve_details()
    if details is None:
        return None
    return (details.get("http_options") or {}).get("host")


def http_token(host: str, token_env: str | None = None, *,
               bound_host: str | None = None) -> str | None:
    """The ingress's bearer token: required whenever it listens beyond loopback.

    ``host`` is the address asked for, ``bound_host`` the one a running Ray
    Serve already listens on (``bound_http_host``): beyond loopback on either,
    a token is required. Taken from the variable the config's
    ``http.token_env`` names, else ``LIS_TOKEN``; otherwise read from, or
    generated once into, ``~/.config/lis/http-token`` (mode 0600) for clients
    to read. Raises ``ConfigError`` for a token that is set but unusable.
    """
    variable = token_env or TOKEN_ENV
    given = os.environ.get(variable)
    if given is not None:
        return _checked(given, f"${variable}", "set it to the token or unset it")
    if is_loopback(host) and (bound_host is None or is_loopback(bound_host)):
        return None
    if not os.path.lexists(TOKEN_FILE):
        _write_new_token(TOKEN_FILE)
    return _read_token_file(TOKEN_FILE)


def _checked(token: str, where: str, fix: str) -> str:
    token = token.strip()
    if not token:
        _refuse(where, f"is empty or blank: {fix}")
    if len(token) < MIN_HTTP_TOKEN_CHARS:
        _refuse(where, f"is {len(token)} characters long, under the {MIN_HTTP_TOKEN_CHARS} "
                       f"required: {fix}")
    return token


def _refuse(where: str, problem: str) -> NoReturn:
    raise ConfigError(_SOURCE, [ConfigIssue(where, None, problem)])


def _read_token_file(path: Path) -> str:
    where = str(path)
    fix = f"delete it to have lis make a new one, or write a token of at least " \
          f"{MIN_HTTP_TOKEN_CHARS} characters"
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            _refuse(where, "is not a regular file")
        if stat.S_IMODE(mode) & 0o077:
            _refuse(where, f"is readable by other users (mode {stat.S_IMODE(mode):o}): "
                           f"chmod 600 it")
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        _refuse(where, f"cannot be read: {error.strerror}")
    return _checked(text, where, fix)


def _write_new_token(path: Path) -> None:
    """A new token, written whole or not at all: to a private temporary file,
    flushed to disk, then linked into place (never over a token another lis made)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):  # another lis made one first: keep it
            os.link(temporary, path)
    finally:
        os.unlink(temporary)
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
