"""The ingress's bearer token: where it comes from, and when one is required."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket

from vocabulary.names import HTTP_TOKEN_FILE, TOKEN_ENV

__all__ = ["TOKEN_FILE", "http_token", "is_loopback"]

TOKEN_FILE = HTTP_TOKEN_FILE.expanduser()


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def http_token(host: str, token_env: str | None = None) -> str | None:
    """The ingress's bearer token: required whenever it listens beyond loopback.

    Taken from the variable the config's ``http.token_env`` names, else
    ``LIS_TOKEN``; otherwise generated once into ``~/.config/lis/http-token``
    (mode 0600) for clients to read.
    """
    token = os.environ.get(token_env or TOKEN_ENV)
    if token or is_loopback(host):
        return token or None
    if TOKEN_FILE.is_file():
        return TOKEN_FILE.read_text().strip()
    TOKEN_FILE.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    TOKEN_FILE.touch(mode=0o600)
    TOKEN_FILE.write_text(token + "\n")
    return token
