"""The Greengrass ML SDK's client API, served by lis.

``client('inference').invoke_inference_service(...)`` and
``client('feedback').publish(...)`` behave as in
``greengrass_machine_learning_sdk`` 1.1.0: same argument checks
(``ValueError``), same return shape, same exceptions. Inside the Ray cluster
that runs lis a call goes through a Ray Serve handle; elsewhere over HTTP to
``LIS_ENDPOINT`` (default ``http://127.0.0.1:8000``), with ``LIS_TOKEN`` as the
bearer token when set. ``LIS_TRANSPORT=http|handle`` forces one. An
``https://`` endpoint's certificate is always verified: against ``LIS_CA_FILE``
when set (a site's own CA), else against the system's CAs.

``await client('inference').invoke_inference_service_async(...)`` is the same
call for code on an event loop (a Ray Serve deployment, an async actor): same
arguments, checks, answer and exceptions. The sync call also works on a running
loop: it makes the call from a worker thread and blocks its caller until the
answer comes, as the original SDK's blocking call did (see ``_off_the_loop``).

Beside the drop-in API, a typed one for composing lis in Python:
``ObjectDetector(name)`` and ``ImageClassifier(name)`` are called with
``infer(image, content_type)`` or awaited with ``infer_async(...)``, and answer
``Detections`` / ``Classification``: the parsed result with the model's labels,
and the connector's bytes. Their errors are lis's own (``vocabulary.errors``).

lis errors become SDK exceptions in ``_sdk_exception`` and nowhere else.
This module imports no model runtime and no deployment.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import os
import re
import ssl
import sys
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from vocabulary.connectors import SERVICE_NAME_PATTERN
from vocabulary.errors import (
    AlgorithmMismatch,
    InferenceFailed,
    InvalidArgument,
    LisError,
    ServiceNotFound,
    ServiceUnavailable,
    from_wire,
)
from vocabulary.names import (
    APP_NAME,
    CA_FILE_ENV,
    DEFAULT_ENDPOINT,
    ENDPOINT_ENV,
    FEEDBACK_DEPLOYMENT,
    TOKEN_ENV,
    TRANSPORT_ENV,
)
from vocabulary.wire import METADATA_KEY, is_metadata_key

__all__ = [
    "DEFAULT_CALL_TIMEOUT_S",
    "DEFAULT_ENDPOINT",
    "LABELS_TIMEOUT_S",
    "ClassProbability",
    "Classification",
    "DetectedObject",
    "Detections",
    "FeedbackClient",
    "GreengrassDependencyException",
    "GreengrassFeedbackException",
    "GreengrassInferenceException",
    "ImageClassifier",
    "InferenceClient",
    "ObjectDetector",
    "StreamingBody",
    "client",
]

# The replica enforces each service's own timeout; this only bounds a call
# whose replica never answers at all.
DEFAULT_CALL_TIMEOUT_S = 120.0
# Asking a service for its labels (once per typed service object) waits this long.
LABELS_TIMEOUT_S = 30.0
_NAME_PATTERN = re.compile(f"^{SERVICE_NAME_PATTERN}$")
# Worker threads for sync calls made on a running event loop: each blocks the
# loop that made it, so a few cover every loop thread of a process.
_SYNC_ON_LOOP_THREADS = 8
_T = TypeVar("_T")


class GreengrassInferenceException(Exception):
    """The inference service answered with an error (bad image, model failure, timeout)."""


class GreengrassDependencyException(Exception):
    """The inference service could not be reached or does not exist."""


class GreengrassFeedbackException(Exception):
    """The feedback service answered with an error or could not be reached."""


class _Py2Bytes(bytes):
    """Bytes that also take ``str`` arguments, as Python 2's ``str`` did.

    The Image Classification page's example was written for Python 2.7: it
    slices the body and calls ``.split(',')`` on it. On Python 3 a plain
    ``bytes`` raises ``TypeError`` there; this subclass keeps every bytes
    behaviour (``decode``, ``json.loads``, ``isinstance(x, bytes)``) and lets
    that code run unchanged.
    """

    def __getitem__(self, key: Any) -> Any:
        item = bytes.__getitem__(self, key)
        return _Py2Bytes(item) if isinstance(key, slice) else item

    @staticmethod
    def _b(value: Any) -> Any:
        return value.encode() if isinstance(value, str) else value

    def split(self, sep: Any = None, maxsplit: int = -1) -> list[bytes]:  # type: ignore[override]
        return [_Py2Bytes(p) for p in bytes.split(self, self._b(sep), maxsplit)]

    def strip(self, chars: Any = None) -> bytes:  # type: ignore[override]
        return _Py2Bytes(bytes.strip(self, self._b(chars)))

    def startswith(self, prefix: Any, *args: Any) -> bool:  # type: ignore[override]
        return bytes.startswith(self, self._b(prefix), *args)

    def endswith(self, suffix: Any, *args: Any) -> bool:  # type: ignore[override]
        return bytes.endswith(self, self._b(suffix), *args)


class StreamingBody:
    """A response body read like botocore's ``StreamingBody``."""

    def __init__(self, data: bytes) -> None:
        self._stream = io.BytesIO(data)

    def read(self, amt: int | None = None) -> bytes:
        return _Py2Bytes(self._stream.read(amt))

    def close(self) -> None:
        self._stream.close()

    def __iter__(self) -> Any:
        return iter(lambda: self._stream.read(64 * 1024), b"")


def _sdk_exception(error: LisError, *, feedback: bool = False) -> Exception:
    """The one mapping of lis errors to the SDK's exceptions."""
    if feedback:
        return GreengrassFeedbackException(error.message)
    # A wrong AlgoType for an existing name is a missing service: the original
    # SDK addressed a service by the pair (algorithm, name).
    if isinstance(error, (ServiceNotFound, AlgorithmMismatch, ServiceUnavailable)):
        return GreengrassDependencyException(error.message)
    return GreengrassInferenceException(error.message)


def _require(kwargs: dict[str, Any], name: str) -> Any:
    if name not in kwargs or kwargs[name] is None:
        raise ValueError(f"{name} is required")
    return kwargs[name]


def _check_name(kwargs: dict[str, Any], name: str) -> str:
    value = _require(kwargs, name)
    if not isinstance(value, str) or not _NAME_PATTERN.match(value):
        raise ValueError(f"{name} {value!r} does not match {_NAME_PATTERN.pattern}")
    return value


def _body_bytes(body: Any, name: str = "Body") -> bytes:
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if hasattr(body, "read"):
        data = body.read()
        if isinstance(data, (bytes, bytearray)):
            return bytes(data)
    raise ValueError(f"{name} must be bytes, a bytearray or a readable binary file object")


# --- transports -----------------------------------------------------------------------


class _Transport(Protocol):
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


class _HttpTransport:
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
        self._tls = _tls_context(ca_file) if parsed.scheme == "https" else None
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


def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Certificate and host name verified, always: the site's CA, else the system's."""
    if ca_file and not os.path.isfile(ca_file):
        raise ValueError(f"{CA_FILE_ENV} {ca_file!r} is not a file")
    return ssl.create_default_context(cafile=ca_file or None)


def _untrusted(endpoint: str, error: ssl.SSLCertVerificationError) -> str:
    reason = error.verify_message or str(error)
    return (f"the TLS certificate of {endpoint} was refused ({reason}): set {CA_FILE_ENV} to "
            "the CA that signed it, and call lis by a name the certificate lists")


class _HandleTransport:
    """Ray Serve handles, for code running inside the cluster that runs lis."""

    def infer(self, algo_type: str, service: str, content_type: str | None,
              body: bytes, accept: str | None) -> tuple[bytes, str]:
        from serve_app._handles import call_service_sync

        def call() -> tuple[bytes, str]:
            result = call_service_sync(_deployment_handle(service), service, body,
                                       content_type, algo_type, DEFAULT_CALL_TIMEOUT_S)
            return result.body.encode(), result.content_type

        return _off_the_loop(call)

    async def infer_async(self, algo_type: str, service: str, content_type: str | None,
                          body: bytes, accept: str | None) -> tuple[bytes, str]:
        from serve_app._handles import call_service

        # Ray caches a handle once found; only the first lookup of a name asks
        # Serve's controller, briefly blocking the loop.
        result = await call_service(_deployment_handle(service), service, body, content_type,
                                    algo_type, DEFAULT_CALL_TIMEOUT_S)
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
    from ray import serve

    try:
        return serve.get_deployment_handle(name, app_name=APP_NAME)
    except Exception as error:  # noqa: BLE001 - Ray raises several types for "no such"
        raise ServiceNotFound(name) from error


def _inside_lis_cluster() -> bool:
    # Only if the caller already joined Ray: the client never starts a cluster.
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def _transport() -> _Transport:
    mode = os.environ.get(TRANSPORT_ENV, "auto")
    if mode == "handle" or (mode == "auto" and _inside_lis_cluster()):
        return _HandleTransport()
    return _HttpTransport(os.environ.get(ENDPOINT_ENV, DEFAULT_ENDPOINT),
                          os.environ.get(TOKEN_ENV) or None,
                          os.environ.get(CA_FILE_ENV) or None)


# --- the SDK's clients ----------------------------------------------------------------


class InferenceClient:
    """``client('inference')``."""

    def __init__(self, transport: _Transport | None = None) -> None:
        self._transport = transport

    def invoke_inference_service(self, **kwargs: Any) -> dict[str, Any]:
        """The connector's answer: ``{"Body": StreamingBody, "ContentType": str}``.

        On a running event loop this blocks the loop until the answer comes;
        there, ``await invoke_inference_service_async(...)`` instead.
        """
        algo_type, service, body = _inference_arguments(kwargs)
        transport = self._transport or _transport()
        try:
            data, content_type = transport.infer(algo_type, service, kwargs.get("ContentType"),
                                                 body, kwargs.get("Accept"))
        except LisError as error:
            raise _sdk_exception(error) from error
        return {"Body": StreamingBody(data), "ContentType": content_type}

    async def invoke_inference_service_async(self, **kwargs: Any) -> dict[str, Any]:
        """``invoke_inference_service`` awaited: same arguments, answer and exceptions."""
        algo_type, service, body = _inference_arguments(kwargs)
        transport = self._transport or _transport()
        try:
            data, content_type = await transport.infer_async(
                algo_type, service, kwargs.get("ContentType"), body, kwargs.get("Accept"))
        except LisError as error:
            raise _sdk_exception(error) from error
        return {"Body": StreamingBody(data), "ContentType": content_type}


def _inference_arguments(kwargs: dict[str, Any]) -> tuple[str, str, bytes]:
    """(AlgoType, ServiceName, Body) checked as the original SDK does (``ValueError``)."""
    algo_type = _check_name(kwargs, "AlgoType")
    service = _check_name(kwargs, "ServiceName")
    return algo_type, service, _body_bytes(_require(kwargs, "Body"))


class FeedbackClient:
    """``client('feedback')``."""

    def __init__(self, transport: _Transport | None = None) -> None:
        self._transport = transport

    def publish(self, **kwargs: Any) -> None:
        config_id = _check_name(kwargs, "ConfigId")
        body = _body_bytes(_require(kwargs, "ModelInput"), "ModelInput")
        prediction = _require(kwargs, "ModelPrediction")
        if not isinstance(prediction, (list, dict)):
            raise ValueError("ModelPrediction must be a list (classification) "
                             "or a dict (detection)")
        metadata = kwargs.get("Metadata", {})
        if not isinstance(metadata, dict):
            raise ValueError("Metadata must be a dict")
        for key in metadata:
            if not is_metadata_key(str(key)):
                raise ValueError(f"Metadata key {str(key)!r} is not {METADATA_KEY}")
        transport = self._transport or _transport()
        try:
            status = transport.feedback(config_id, body, prediction,
                                        {str(k): str(v) for k, v in metadata.items()})
        except LisError as error:
            raise _sdk_exception(error, feedback=True) from error
        if status.get("response", {}).get("status") == "fail":
            raise GreengrassFeedbackException(status["response"].get("error_message", "failed"))


def client(client_type: str) -> InferenceClient | FeedbackClient:
    """``client('inference')`` or ``client('feedback')``, as the original SDK."""
    if client_type == "inference":
        return InferenceClient()
    if client_type == "feedback":
        return FeedbackClient()
    raise Exception(f"Client type {client_type} is not recognized.")  # noqa: TRY002 - as the SDK


# --- the typed API, for composing lis in Python ---------------------------------------


@dataclass(frozen=True)
class ClassProbability:
    """One class of an image classifier's answer."""

    class_id: int
    label: str | None  # the model's name for the class; None when it has no labels
    probability: float


@dataclass(frozen=True)
class Classification:
    """An image classifier's answer: each class's probability, and the connector's bytes."""

    classes: tuple[ClassProbability, ...]  # in class id order
    raw: bytes  # ``[p0,p1,...]``, byte for byte what the connector answers

    @property
    def top(self) -> ClassProbability:
        """The most probable class."""
        return max(self.classes, key=lambda c: c.probability)


@dataclass(frozen=True)
class DetectedObject:
    """One row of an object detector's answer."""

    class_id: int
    label: str | None  # the model's name for the class; None when it has no labels
    score: float
    # (xmin, ymin, xmax, ymax) as fractions of the image's width and height, in [0, 1].
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class Detections:
    """An object detector's answer: the objects found, and the connector's bytes."""

    objects: tuple[DetectedObject, ...]  # highest score first
    raw: bytes  # ``{"prediction": [[class_id, score, xmin, ymin, xmax, ymax], ...]}``


_Answer = TypeVar("_Answer", Classification, Detections)


class _Service(Generic[_Answer]):
    """One lis service called from Python, by whichever transport the SDK would take.

    Errors are lis's own (``vocabulary.errors``): ``ServiceNotFound``,
    ``AlgorithmMismatch`` (the service runs the other algorithm),
    ``InvalidImage``, ``InferenceTimeout``, ``ServiceUnavailable``... The
    model's labels are asked once, after the first answer, and kept.
    """

    algorithm: ClassVar[str]

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not _NAME_PATTERN.match(name):
            raise InvalidArgument("service name", name,
                                  f"a name matching {_NAME_PATTERN.pattern}")
        self.name = name
        self._labels: tuple[str, ...] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Sent to a task, an actor or a deployment as its name alone: the
        # labels are asked again there, by the transport that process takes.
        return (type(self), (self.name,))

    def infer(self, image: bytes, content_type: str) -> _Answer:
        """The service's answer to one image (``content_type`` ``image/jpeg`` or ``image/png``).

        On a running event loop this blocks the loop; there, ``await infer_async``.
        """
        body = _image_bytes(image, content_type)
        transport = _transport()
        data, _ = transport.infer(self.algorithm, self.name, content_type, body, None)
        if self._labels is None:
            self._labels = transport.labels(self.name)
        return self._answer(data)

    async def infer_async(self, image: bytes, content_type: str) -> _Answer:
        """``infer``, awaited."""
        body = _image_bytes(image, content_type)
        transport = _transport()
        data, _ = await transport.infer_async(self.algorithm, self.name, content_type, body,
                                              None)
        if self._labels is None:
            self._labels = await transport.labels_async(self.name)
        return self._answer(data)

    def _answer(self, data: bytes) -> _Answer:
        try:
            return self._parse(data, self._labels or ())
        except (ValueError, KeyError, TypeError) as error:
            # The connector's format is lis's own promise: not meeting it is lis's failure.
            raise InferenceFailed(self.name, f"answered {data[:80]!r}, not the "
                                             f"{self.algorithm} format: {error}") from error

    def _parse(self, data: bytes, labels: Sequence[str]) -> _Answer:
        raise NotImplementedError


class ImageClassifier(_Service[Classification]):
    """An image classification service: ``ImageClassifier('imageClassification')``."""

    algorithm = "image-classification"

    def _parse(self, data: bytes, labels: Sequence[str]) -> Classification:
        probabilities = json.loads(data)
        return Classification(tuple(
            ClassProbability(class_id, _label(labels, class_id), float(probability))
            for class_id, probability in enumerate(probabilities)), bytes(data))


class ObjectDetector(_Service[Detections]):
    """An object detection service: ``ObjectDetector('objectDetection')``."""

    algorithm = "object-detection"

    def _parse(self, data: bytes, labels: Sequence[str]) -> Detections:
        objects = []
        for class_id, score, xmin, ymin, xmax, ymax in json.loads(data)["prediction"]:
            objects.append(DetectedObject(
                int(class_id), _label(labels, int(class_id)), float(score),
                (float(xmin), float(ymin), float(xmax), float(ymax))))
        return Detections(tuple(objects), bytes(data))


def _label(labels: Sequence[str], class_id: int) -> str | None:
    return labels[class_id] if 0 <= class_id < len(labels) else None


def _image_bytes(image: Any, content_type: Any) -> bytes:
    if not isinstance(image, (bytes, bytearray, memoryview)):
        raise InvalidArgument("image", type(image).__name__, "bytes, a bytearray or a memoryview")
    if not isinstance(content_type, str):
        raise InvalidArgument("content_type", content_type, "a string such as 'image/jpeg'")
    return bytes(image)
