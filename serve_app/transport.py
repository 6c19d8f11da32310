"""How a call from Python reaches lis: HTTP to its ingress, or from inside its Ray cluster.

Outside the Ray cluster that runs lis a call goes over HTTP to ``LIS_ENDPOINT``
(default ``http://127.0.0.1:8000``), with ``LIS_TOKEN`` as the bearer token when
set; an ``https://`` endpoint's certificate is always verified, against
``LIS_CA_FILE`` when set (a site's own CA), else against the system's CAs.
Inside the cluster a call goes to a replica on the caller's node over the
replica's local socket, as the ingress's do, else through a Ray Serve handle.
``LIS_TRANSPORT=http|handle`` forces one. Each transport raises lis's own errors
(``vocabulary.errors``); the SDK maps them to its exceptions.

This module imports no model runtime, no deployment and, until a call is made
by code that already joined Ray, no Ray; such a call then loads Ray Serve's
handles and the local path's socket code (``serve_app._same_node``), never a
model runtime.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import ssl
import sys
import threading
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from vocabulary.errors import LisError, ServiceNotFound, ServiceUnavailable, from_wire
from vocabulary.names import (
    CA_FILE_ENV,
    DEFAULT_ENDPOINT,
    ENDPOINT_ENV,
    FEEDBACK_DEPLOYMENT,
    TOKEN_ENV,
    TRANSPORT_ENV,
)

__all__ = [
    "DEFAULT_CALL_TIMEOUT_S",
    "LABELS_TIMEOUT_S",
    "HandleTransport",
    "HttpTransport",
    "Transport",
    "from_environment",
    "tls_context",
]

# The replica enforces each service's own timeout; this only bounds a call
# whose replica never answers at all.
DEFAULT_CALL_TIMEOUT_S = 120.0
# Asking a service for its labels (once per typed service object) waits this long.
LABELS_TIMEOUT_S = 30.0
# Worker threads for sync calls made on a running event loop: each blocks the
# loop that made it, so a few cover every loop thread of a process.
_SYNC_ON_LOOP_THREADS = 8
_T = TypeVar("_T")



class Transport(Protocol):
    def infer(self, algo_type: str, service: str, content_type: str | None,
              body: bytes, accept: str | None) -> tuple[bytes, str]: ...

    async def infer_async(self, algo_type: str, service: str, content_type: str | None,
                          body: bytes, accept: str | None) -> tuple[bytes, str]: ...

    def labels(self, service: str) -> tuple[str, ...] | None:
        """The service's class names (empty: its model has none; None: not known now)."""

    async def labels_async(self, service: str) -> tuple[str, ...] | None: ...

    def feedback(self, config_id: str, body: bytes, prediction: Any,
                 metadata: dict[str, str]) -> dict[str, Any]: ...


_workers: ThreadPoolExecutor | None = None
_workers_lock = threading.Lock()


def _off_the_loop(call: Callable[[], _T]) -> _T:
    """``call()``, made from a worker thread when this thread runs an event loop.

    Ray Serve refuses a blocking handle call on a running loop, which the
    call would stall (``RuntimeError: Sync methods should not be called from
    within an asyncio event loop``). Lambda code calls the SDK
    synchronously, and pasted into an async deployment it should still work:
    the caller blocks until the answer comes, as over HTTP, and
    ``invoke_inference_service_async`` is the form that does not block.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return call()
    global _workers
    with _workers_lock:
        if _workers is None:
            _workers = ThreadPoolExecutor(_SYNC_ON_LOOP_THREADS, thread_name_prefix="lis-sdk")
    return _workers.submit(call).result()


class HttpTransport:
    """HTTP to a lis ingress; one kept-alive connection per thread."""

    def __init__(self, endpoint: str, token: str | None, ca_file: str | None = None) -> None:
        parsed = urllib.parse.urlsplit(endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"LIS_ENDPOINT {endpoint!r} is not an http(s) URL")
        if ca_file and parsed.scheme != "https":
            # The CA says the caller expects TLS: never send the token in clear instead.
            raise ValueError(f"{CA_FILE_ENV} is set but LIS_ENDPOINT {endpoint!r} is not "
                             "https://")
        self.endpoint = endpoint
        self._parsed = parsed
        self._token = token
        self._tls = tls_context(ca_file) if parsed.scheme == "https" else None
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            if self._tls is not None:
                connection = http.client.HTTPSConnection(
                    self._parsed.hostname, self._parsed.port, timeout=DEFAULT_CALL_TIMEOUT_S,
                    context=self._tls)
            else:
                connection = http.client.HTTPConnection(
                    self._parsed.hostname, self._parsed.port, timeout=DEFAULT_CALL_TIMEOUT_S)
            self._local.connection = connection
        return connection

    def _request(self, method: str, path: str, body: bytes | None,
                 headers: dict[str, str]) -> tuple[int, bytes, str]:
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        for attempt in (1, 2):  # a kept-alive connection the server closed: reconnect once
            connection = self._connection()
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                return response.status, response.read(), response.getheader("content-type", "")
            except ssl.SSLCertVerificationError as error:
                connection.close()
                self._local.connection = None
                raise ServiceUnavailable(path, _untrusted(self.endpoint, error)) from error
            except (ConnectionError, http.client.HTTPException, OSError) as error:
                connection.close()
                self._local.connection = None
                if attempt == 2 or isinstance(error, (ConnectionRefusedError, TimeoutError)):
                    raise ServiceUnavailable(
                        path, f"lis is not reachable at {self.endpoint}: {error}") from error
        raise AssertionError("unreachable")

    @staticmethod
    def _error(status: int, data: bytes) -> LisError:
        try:
            detail = json.loads(data)["error"]
            return from_wire(detail["type"], detail["message"])
        except (ValueError, KeyError, TypeError):
            return LisError(f"HTTP {status}: {data[:200]!r}")

    def infer(self, algo_type: str, service: str, content_type: str | None,
              body: bytes, accept: str | None) -> tuple[bytes, str]:
        headers = {"X-Algo-Type": algo_type}
        if content_type:
            headers["Content-Type"] = content_type
        if accept:
            headers["Accept"] = accept
        path = "/inference/" + urllib.parse.quote(service)
        status, data, response_type = self._request("POST", path, body, headers)
        if status != 200:
            raise self._error(status, data)
        return data, response_type

    async def infer_async(self, algo_type: str, service: str, content_type: str | None,
                          body: bytes, accept: str | None) -> tuple[bytes, str]:
        # http.client blocks: the call runs in a worker thread, with its own
        # kept-alive connection, and the loop runs on meanwhile.
        return await asyncio.to_thread(self.infer, algo_type, service, content_type, body,
                                       accept)

    def labels(self, service: str) -> tuple[str, ...] | None:
        status, data, _ = self._request("GET", "/services", None, {})
        if status != 200:
            raise self._error(status, data)
        for listed in json.loads(data)["services"]:
            if listed["name"] == service:
                # Listed without labels while the service is not RUNNING.
                labels = listed.get("labels")
                return None if labels is None else tuple(labels)
        raise ServiceNotFound(service)

    async def labels_async(self, service: str) -> tuple[str, ...] | None:
        return await asyncio.to_thread(self.labels, service)

    def feedback(self, config_id: str, body: bytes, prediction: Any,
                 metadata: dict[str, str]) -> dict[str, Any]:
        headers = {"X-Model-Prediction": json.dumps(prediction),
                   "X-Metadata": json.dumps(metadata),
                   "Content-Type": "application/octet-stream"}
        status, data, _ = self._request("POST", "/feedback/" + urllib.parse.quote(config_id),
                                        body, headers)
        if status != 200:
            raise self._error(status, data)
        return json.loads(data)


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Certificate and host name verified, always: the site's CA, else the system's."""
    if ca_file and not os.path.isfile(ca_file):
        raise ValueError(f"{CA_FILE_ENV} {ca_file!r} is not a file")
    return ssl.create_default_context(cafile=ca_file or None)


def _untrusted(endpoint: str, error: ssl.SSLCertVerificationError) -> str:
    reason = error.verify_message or str(error)
    return (f"the TLS certificate of {endpoint} was refused ({reason}): set {CA_FILE_ENV} to "
            "the CA that signed it, and call lis by a name the certificate lists")


class HandleTransport:
    """For code running inside the cluster that runs lis: its replicas' sockets, else handles.

    A service whose running replicas are all on this process's node is
    called over their local sockets, as the ingress calls it
    (``serve_app._same_node``); any other, and any request no local replica
    took, through its Ray Serve handle. The answer is the same either way.
    """

    def infer(self, algo_type: str, service: str, content_type: str | None,
              body: bytes, accept: str | None) -> tuple[bytes, str]:
        from serve_app._handles import call_service_sync
        from serve_app._same_node import call_sync

        def call() -> tuple[bytes, str]:
            result = call_sync(service, body, content_type, algo_type)
            if result is None:
                result = call_service_sync(_deployment_handle(service), service, body,
                                           content_type, algo_type, DEFAULT_CALL_TIMEOUT_S)
            return result.body.encode(), result.content_type

        return _off_the_loop(call)

    async def infer_async(self, algo_type: str, service: str, content_type: str | None,
                          body: bytes, accept: str | None) -> tuple[bytes, str]:
        from serve_app._handles import call_service
        from serve_app._same_node import call

        result = await call(service, body, content_type, algo_type)
        if result is None:
            # Ray caches a handle once found; only the first lookup of a name asks
            # Serve's controller, briefly blocking the loop.
            result = await call_service(_deployment_handle(service), service, body,
                                        content_type, algo_type, DEFAULT_CALL_TIMEOUT_S)
        return result.body.encode(), result.content_type

    def labels(self, service: str) -> tuple[str, ...] | None:
        from serve_app._handles import describe_service_sync

        return _off_the_loop(lambda: tuple(describe_service_sync(
            _deployment_handle(service), service, LABELS_TIMEOUT_S)["labels"]))

    async def labels_async(self, service: str) -> tuple[str, ...] | None:
        from serve_app._handles import describe_service

        found = await describe_service(_deployment_handle(service), service, LABELS_TIMEOUT_S)
        return tuple(found["labels"])

    def feedback(self, config_id: str, body: bytes, prediction: Any,
                 metadata: dict[str, str]) -> dict[str, Any]:
        return _off_the_loop(lambda: _deployment_handle(FEEDBACK_DEPLOYMENT).publish.remote(
            config_id, body, prediction, metadata).result(timeout_s=DEFAULT_CALL_TIMEOUT_S))


def _deployment_handle(name: str) -> Any:
    from serve_app._handles import deployment_handle

    return deployment_handle(name)


def _inside_lis_cluster() -> bool:
    # Only if the caller already joined Ray: the client never starts a cluster.
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


_http_transports: dict[tuple[str, str | None, str | None], HttpTransport] = {}
_http_transports_lock = threading.Lock()


def from_environment() -> Transport:
    """The transport the environment asks for now.

    HTTP transports are kept, one per endpoint, token and CA: each SDK call
    (a camera's Lambda code makes one every frame) then reuses its thread's
    kept-alive connection instead of opening a new TCP (and TLS) connection.
    """
    mode = os.environ.get(TRANSPORT_ENV, "auto")
    if mode == "handle" or (mode == "auto" and _inside_lis_cluster()):
        return HandleTransport()
    key = (os.environ.get(ENDPOINT_ENV, DEFAULT_ENDPOINT), os.environ.get(TOKEN_ENV) or None,
           os.environ.get(CA_FILE_ENV) or None)
    with _http_transports_lock:
        transport = _http_transports.get(key)
        if transport is None:
            transport = _http_transports[key] = HttpTransport(*key)
        return transport
