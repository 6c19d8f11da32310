"""``lis status``: the services and pipelines of a running lis, as ``GET /services`` and
``GET /pipelines`` report them."""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from http import HTTPStatus
from typing import Any

from serve_app.transport import tls_context
from vocabulary.errors import LisError, ServiceUnavailable, from_wire
from vocabulary.names import CA_FILE_ENV, DEFAULT_ENDPOINT, ENDPOINT_ENV, TOKEN_ENV


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", default=os.environ.get(ENDPOINT_ENV, DEFAULT_ENDPOINT),
                        help="lis HTTP endpoint (default: $LIS_ENDPOINT or %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the raw JSON")


def fetch_services(endpoint: str) -> list[dict[str, Any]]:
    return _get(endpoint, "/services")["services"]


def fetch_pipelines(endpoint: str) -> list[dict[str, Any]]:
    """The pipelines of a running lis; none from a lis older than pipelines (no such route)."""
    return _get(endpoint, "/pipelines", {"pipelines": []})["pipelines"]


def _get(endpoint: str, path: str, if_absent: dict[str, Any] | None = None) -> dict[str, Any]:
    request = urllib.request.Request(endpoint.rstrip("/") + path)
    token = os.environ.get(TOKEN_ENV)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    # An https:// endpoint's certificate is verified as the SDK does: LIS_CA_FILE, else system CAs.
    tls = tls_context(os.environ.get(CA_FILE_ENV) or None) \
        if endpoint.lower().startswith("https://") else None
    try:
        with urllib.request.urlopen(request, timeout=10, context=tls) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        if error.code == HTTPStatus.NOT_FOUND and if_absent is not None:
            return if_absent
        raise _answered_error(error) from error
    except (urllib.error.URLError, OSError) as error:
        raise ServiceUnavailable("lis", f"cannot reach {endpoint}: {error}") from error


def _answered_error(error: urllib.error.HTTPError) -> LisError:
    """The lis error the ingress answered with (401 without the right LIS_TOKEN)."""
    try:
        found = json.loads(error.read())["error"]
        return from_wire(found["type"], found["message"])
    except (ValueError, KeyError, TypeError):
        return ServiceUnavailable("lis", f"{error.url} answered {error.code} {error.reason}")


def run(args: argparse.Namespace) -> int:
    services = fetch_services(args.endpoint)
    pipelines = fetch_pipelines(args.endpoint)
    if args.json:
        print(json.dumps({"services": services, "pipelines": pipelines}, indent=2))
        return 0
    print(f"{'SERVICE':24} {'ALGORITHM':22} {'PLATFORM':12} {'STATE':10} {'REPLICAS':9} VERSION")
    for service in services:
        running = service.get("replicas", {}).get("RUNNING", 0)
        # Serving while its replicas are being replaced (a new model rolling out).
        state = "UPDATING" if service.get("updating") and service.get("state") == "RUNNING" \
            else service.get("state", "?")
        print(f"{service['name']:24} {service['algorithm']:22} {service['platform']:12} "
              f"{state:10} {running:<9} {service.get('version', '-')}")
        if service.get("state") != "RUNNING" and service.get("message"):
            print(f"    why: {service['message']}")
    if pipelines:
        _print_pipelines(pipelines)
    return 0


def _print_pipelines(pipelines: list[dict[str, Any]]) -> None:
    print(f"\n{'PIPELINE':24} {'SERVICE':22} {'STATE':15} {'READ':>7} {'INFERRED':>8} "
          f"{'SKIPPED':>7} {'PUBLISHED':>9} {'DROPPED':>7}")
    for p in pipelines:
        print(f"{p['name']:24} {p.get('service', '-'):22} {p.get('state', '?'):15} "
              f"{p.get('frames_read', 0):>7} {p.get('frames_inferred', 0):>8} "
              f"{p.get('frames_skipped', 0):>7} {p.get('published', 0):>9} "
              f"{p.get('dropped', 0):>7}")
        if p.get("last_error"):
            print(f"    last error: {p['last_error']}")
