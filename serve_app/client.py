"""The Greengrass ML SDK's client API, served by lis.

``client('inference').invoke_inference_service(...)`` and
``client('feedback').publish(...)`` behave as in
``greengrass_machine_learning_sdk`` 1.1.0: same argument checks
(``ValueError``), same return shape, same exceptions. How a call travels (a Ray Serve handle
inside the cluster that runs lis, HTTP to ``LIS_ENDPOINT`` elsewhere) is
``serve_app.transport``'s.

``await client('inference').invoke_inference_service_async(...)`` is the same
call for code on an event loop (a Ray Serve deployment, an async actor): same
arguments, checks, answer and exceptions. The sync call also works on a running
loop: it makes the call from a worker thread and blocks its caller until the
answer comes, as the original SDK's blocking call did.

Beside the drop-in API, a typed one for composing lis in Python:
``ObjectDetector(name)`` and ``ImageClassifier(name)`` are called with
``infer(image, content_type)`` or awaited with ``infer_async(...)``, and answer
``Detections`` / ``Classification``: the parsed result with the model's labels,
and the connector's bytes. Their errors are lis's own (``vocabulary.errors``).

lis errors become SDK exceptions in ``_sdk_exception`` and nowhere else.
This module imports no model runtime and no deployment.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from serve_app.transport import (
    DEFAULT_CALL_TIMEOUT_S,
    LABELS_TIMEOUT_S,
    Transport,
    from_environment,
)
from vocabulary.connectors import SERVICE_NAME_PATTERN
from vocabulary.errors import (
    AlgorithmMismatch,
    InferenceFailed,
    InvalidArgument,
    LisError,
    ServiceNotFound,
    ServiceUnavailable,
)
from vocabulary.names import DEFAULT_ENDPOINT
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

_NAME_PATTERN = re.compile(f"^{SERVICE_NAME_PATTERN}$")


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


# --- the SDK's clients ----------------------------------------------------------------


class InferenceClient:
    """``client('inference')``."""

    def __init__(self, transport: Transport | None = None) -> None:
        self._transport = transport

    def invoke_inference_service(self, **kwargs: Any) -> dict[str, Any]:
        """The connector's answer: ``{"Body": StreamingBody, "ContentType": str}``.

        On a running event loop this blocks the loop until the answer comes;
        there, ``await invoke_inference_service_async(...)`` instead.
        """
        algo_type, service, body = _inference_arguments(kwargs)
        transport = self._transport or from_environment()
        try:
            data, content_type = transport.infer(algo_type, service, kwargs.get("ContentType"),
                                                 body, kwargs.get("Accept"))
        except LisError as error:
            raise _sdk_exception(error) from error
        return {"Body": StreamingBody(data), "ContentType": content_type}

    async def invoke_inference_service_async(self, **kwargs: Any) -> dict[str, Any]:
        """``invoke_inference_service`` awaited: same arguments, answer and exceptions."""
        algo_type, service, body = _inference_arguments(kwargs)
        transport = self._transport or from_environment()
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

    def __init__(self, transport: Transport | None = None) -> None:
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
        transport = self._transport or from_environment()
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
        transport = from_environment()
        data, _ = transport.infer(self.algorithm, self.name, content_type, body, None)
        if self._labels is None:
            self._labels = transport.labels(self.name)
        return self._answer(data)

    async def infer_async(self, image: bytes, content_type: str) -> _Answer:
        """``infer``, awaited."""
        body = _image_bytes(image, content_type)
        transport = from_environment()
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
