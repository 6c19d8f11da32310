"""The Open Inference Protocol (KServe v2, REST) for lis's services: Triton and KServe clients.

Routes (see docs/http-api.md, "Open Inference Protocol"):

    GET  /v2                                          server name, version, extensions
    GET  /v2/health/live, /v2/health/ready            the status code is the answer
    GET  /v2/models/{m}[/versions/{v}]                the model's metadata
    GET  /v2/models/{m}[/versions/{v}]/ready          200 when the service runs
    POST /v2/models/{m}[/versions/{v}]/infer          one image in, the service's answer out

Each lis service is a model named as the service, whose version is the
service's model version. It takes one input, ``image``, in one of three forms:
the encoded image (``BYTES``, one element: JPEG or PNG, preprocessed by lis as
on the connector path), raw pixels (``UINT8 [H, W, 3]``, RGB) or the model's
own input (``FP32``, the metadata's shape, already preprocessed). A classifier
answers ``probabilities`` (``FP32 [1, classes]``; the classification extension
turns it into ``"<score>:<index>[:<label>]"`` strings), a detector answers
``detections`` (``FP32 [N, 6]``: the connector's rows, class id, score, then
the box as fractions of the image; also as the model's own three tensors,
``class_ids``, ``scores`` and ``boxes`` in the model input's pixels). Triton's
binary tensor extension is understood both ways.

A request goes through the same path, limits, token and metrics as the
connector's (the ``infer`` it is given); the answer is the connector's own,
re-expressed as tensors. Errors are lis's error tree, in this protocol's shape:
``{"error": "<message>"}`` with the error's own status.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from importlib import metadata
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vocabulary.errors import InvalidArgument, LisError, ServiceNotFound, ServiceUnavailable
from vocabulary.tensors import RGB8_CONTENT_TYPE, TENSOR_CONTENT_TYPE, array_content_type
from vocabulary.wire import InferenceResult

__all__ = [
    "DETECTIONS_OUTPUT",
    "DETECTOR_TENSORS",
    "EXTENSIONS",
    "HEADER_LENGTH",
    "INPUT_NAME",
    "PROBABILITIES_OUTPUT",
    "open_inference_routes",
]

INPUT_NAME = "image"
PROBABILITIES_OUTPUT = "probabilities"
DETECTIONS_OUTPUT = "detections"
# A detector's rows also as the model's own three tensors (GluonCV's outputs),
# boxes in the model input's pixels.
DETECTOR_TENSORS = ("class_ids", "scores", "boxes")
EXTENSIONS = ("binary_tensor_data", "classification")
# Triton's binary tensor extension: the JSON's length, the raw tensors after it.
HEADER_LENGTH = "inference-header-content-length"
# Room for the JSON header beside a body as large as the service takes.
_HEADER_ALLOWANCE = 64 * 1024
# Labels and versions come from the replicas' descriptions; asked at most this often.
_DESCRIPTION_TTL_S = 10.0
_DETECTION_COLUMNS = 6


class _Service(Protocol):
    name: str
    algorithm: str
    max_request_bytes: int


_Infer = Callable[[Any, bytes, str | None, Request], Awaitable[InferenceResult]]
_States = Callable[[], Awaitable[dict[str, dict[str, Any]]]]
_ReadBody = Callable[[Request, int], Awaitable[bytes]]


@dataclass(frozen=True)
class _Input:
    """The request's image, as the replica takes it: a body and its content type."""

    body: bytes
    content_type: str | None


@dataclass(frozen=True)
class _Requested:
    name: str
    binary: bool
    classification: int  # top k as strings; 0: the tensor itself


def _error(error: LisError) -> JSONResponse:
    """lis's errors in this protocol's shape; the status is the error's own."""
    return JSONResponse({"error": error.message}, status_code=int(error.status))


def _server_version() -> str:
    try:
        return metadata.version("lis")
    except metadata.PackageNotFoundError:
        return "unknown"


def open_inference_routes(services: Mapping[str, _Service], infer: _Infer, states: _States,
                          read_body: _ReadBody) -> list[Route]:
    """The protocol's routes over ``services``; ``infer`` answers one request as the connector."""
    described: dict[str, tuple[float, dict[str, Any]]] = {}

    def service(request: Request) -> _Service:
        name = request.path_params["model"]
        if name not in services:
            raise ServiceNotFound(name)
        return services[name]

    async def description(name: str, *, fresh: bool = False) -> dict[str, Any]:
        """The running service's version, labels, platform and input shape ({} if not running)."""
        cached = described.get(name)
        if cached is None or fresh or time.monotonic() - cached[0] > _DESCRIPTION_TTL_S:
            found = (await states()).get(name, {})
            running = found if found.get("state") == "RUNNING" else {}
            cached = (time.monotonic(), running)
            described[name] = cached
        return cached[1]

    async def checked(request: Request, *, fresh: bool = False) -> tuple[_Service, dict]:
        """The service, its description, and the path's version checked against it."""
        found = service(request)
        about = await description(found.name, fresh=fresh)
        asked = request.path_params.get("version")
        if asked is not None and asked != about.get("version"):
            if not about and not fresh:
                about = await description(found.name, fresh=True)
            if asked != about.get("version"):
                raise ServiceNotFound(f"{found.name} version {asked}")
        return found, about

    async def server_metadata(_: Request) -> Response:
        return JSONResponse({"name": "lis", "version": _server_version(),
                             "extensions": list(EXTENSIONS)})

    async def live(_: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(_: Request) -> Response:
        running = await states()
        is_ready = all(running.get(name, {}).get("state") == "RUNNING" for name in services)
        return JSONResponse({"ready": is_ready}, status_code=HTTPStatus.OK if is_ready
                            else HTTPStatus.SERVICE_UNAVAILABLE)

    async def model_ready(request: Request) -> Response:
        try:
            _, about = await checked(request, fresh=True)
        except LisError as error:
            return _error(error)
        if not about:
            return JSONResponse({"ready": False}, status_code=HTTPStatus.SERVICE_UNAVAILABLE)
        return JSONResponse({"ready": True})

    async def model_metadata(request: Request) -> Response:
        try:
            found, about = await checked(request, fresh=True)
            if not about:
                raise ServiceUnavailable(found.name, "it is not running: no metadata yet")
        except LisError as error:
            return _error(error)
        return JSONResponse(_metadata(found, about))

    async def model_infer(request: Request) -> Response:
        try:
            found, about = await checked(request)
            body = await read_body(request, found.max_request_bytes + _HEADER_ALLOWANCE)
            header, tensors = _split(body, request.headers.get(HEADER_LENGTH))
            image = _image_input(header, tensors, about)
            wanted = _requested_outputs(header, found)
            if not about and any(output.classification or output.name == "boxes"
                                 for output in wanted):
                about = await description(found.name, fresh=True)
            if not about.get("input_size") and any(o.name == "boxes" for o in wanted):
                raise ServiceUnavailable(found.name, "its model's input size is not known yet")
            result = await infer(found, image.body, image.content_type, request)
            outputs = _outputs(found, result, wanted, about)
        except LisError as error:
            return _error(error)
        answer: dict[str, Any] = {"model_name": found.name, "id": str(header.get("id", "")),
                                  "outputs": [output for output, _ in outputs]}
        if about.get("version"):
            answer["model_version"] = about["version"]
        return _response(answer, [raw for _, raw in outputs if raw is not None])

    model = "/v2/models/{model}"
    version = model + "/versions/{version}"
    return [
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        *[route for path in (model, version) for route in (
            Route(path, model_metadata, methods=["GET"]),
            Route(path + "/ready", model_ready, methods=["GET"]),
            Route(path + "/infer", model_infer, methods=["POST"]),
        )],
    ]


# --- metadata ------------------------------------------------------------------------

def _metadata(service: _Service, about: Mapping[str, Any]) -> dict[str, Any]:
    shape = list(about.get("input_shape") or [1, 3, -1, -1])
    labels = about.get("labels") or ()
    if service.algorithm == "image-classification":
        outputs = [{"name": PROBABILITIES_OUTPUT, "datatype": "FP32",
                    "shape": [1, len(labels) or -1]}]
    else:
        outputs = [{"name": DETECTIONS_OUTPUT, "datatype": "FP32",
                    "shape": [-1, _DETECTION_COLUMNS]},
                   *[{"name": name, "datatype": "FP32", "shape": [1, -1, width]}
                     for name, width in zip(DETECTOR_TENSORS, (1, 1, 4))]]
    return {
        "name": service.name,
        "versions": [about["version"]],
        "platform": about.get("runtime") or "unknown",
        # The encoded image; UINT8 [H, W, 3] pixels and the FP32 input below are
        # accepted under the same name (docs/http-api.md).
        "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [1]}],
        "outputs": outputs,
        "parameters": {"algorithm": service.algorithm, "labels": list(labels),
                       "raw_pixels": {"datatype": "UINT8", "shape": [-1, -1, 3]},
                       "tensor": {"datatype": "FP32", "shape": shape}},
    }


# --- the request -----------------------------------------------------------------------

def _split(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """(the JSON header, the binary tensors after it)."""
    if header_length is None:
        json_part, tensors = body, b""
    else:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            raise InvalidArgument("Inference-Header-Content-Length", header_length,
                                  f"the JSON header's byte length, at most {len(body)}")
        json_part, tensors = body[:int(header_length)], body[int(header_length):]
    try:
        header = json.loads(json_part)
    except (UnicodeDecodeError, ValueError) as error:
        raise InvalidArgument("request", f"{json_part[:40]!r}", f"a JSON object ({error})") \
            from error
    if not isinstance(header, dict):
        raise InvalidArgument("request", type(header).__name__, "a JSON object")
    return header, tensors


def _image_input(header: Mapping[str, Any], tensors: bytes,
                 about: Mapping[str, Any]) -> _Input:
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidArgument("inputs", inputs, f"a list of one input, {INPUT_NAME!r}")
    given = inputs[0]
    name, datatype, shape = given.get("name"), given.get("datatype"), given.get("shape")
    if name != INPUT_NAME:
        raise InvalidArgument("input name", name, f"{INPUT_NAME!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InvalidArgument(f"input {INPUT_NAME!r} shape", shape, "a list of sizes")
    raw = _input_bytes(given, tensors)
    if datatype == "BYTES":
        return _Input(_encoded_image(shape, given, raw), None)
    if datatype == "UINT8":
        pixels = tuple(shape[1:] if len(shape) == 4 and shape[0] == 1 else shape)
        if len(pixels) != 3 or pixels[2] != 3:
            raise InvalidArgument(f"input {INPUT_NAME!r} UINT8 shape", shape,
                                  "[H, W, 3] (RGB pixels)")
        data = raw if raw is not None else _json_numbers(given, shape, uint8=True)
        return _Input(_sized(data, pixels, 1, "UINT8"),
                      array_content_type(RGB8_CONTENT_TYPE, pixels))
    if datatype == "FP32":
        expected = about.get("input_shape")
        if expected is not None and list(shape) != list(expected):
            raise InvalidArgument(f"input {INPUT_NAME!r} FP32 shape", shape,
                                  f"the model's input shape {list(expected)}")
        data = raw if raw is not None else _json_numbers(given, shape, uint8=False)
        return _Input(_sized(data, tuple(shape), 4, "FP32"),
                      array_content_type(TENSOR_CONTENT_TYPE, tuple(shape)))
    raise InvalidArgument(f"input {INPUT_NAME!r} datatype", datatype,
                          "BYTES (an encoded image), UINT8 (RGB pixels) or FP32 (the model's "
                          "input)")


def _input_bytes(given: Mapping[str, Any], tensors: bytes) -> bytes | None:
    """The input's binary data (Triton's extension), or None when it comes as JSON ``data``."""
    parameters = given.get("parameters") or {}
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is None:
        if tensors:
            raise InvalidArgument("binary data", f"{len(tensors)} bytes",
                                  "none without binary_data_size on the input")
        if "data" not in given:
            raise InvalidArgument(f"input {INPUT_NAME!r}", "no data",
                                  "'data', or 'binary_data_size' and the bytes after the JSON")
        return None
    if not isinstance(size, int) or size != len(tensors):
        raise InvalidArgument(f"input {INPUT_NAME!r} binary_data_size", size,
                              f"the {len(tensors)} bytes after the JSON header")
    return tensors


def _encoded_image(shape: Sequence[int], given: Mapping[str, Any], raw: bytes | None) -> bytes:
    if shape not in ([1], [1, 1]):
        raise InvalidArgument(f"input {INPUT_NAME!r} BYTES shape", list(shape),
                              "[1]: one encoded image")
    if raw is not None:
        # One BYTES element: its length (4 bytes, little-endian), then its bytes.
        if len(raw) < 4 or struct.unpack_from("<I", raw)[0] != len(raw) - 4:
            raise InvalidArgument(f"input {INPUT_NAME!r} BYTES data", f"{len(raw)} bytes",
                                  "one element: a 4-byte little-endian length, then the image")
        return raw[4:]
    data = _flat(given.get("data"))
    if len(data) != 1 or not isinstance(data[0], str):
        raise InvalidArgument(f"input {INPUT_NAME!r} BYTES data", given.get("data"),
                              "one string: the image, base64-encoded")
    try:
        return base64.b64decode(data[0], validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidArgument(f"input {INPUT_NAME!r} BYTES data", data[0],
                              "the image, base64-encoded (in JSON)") from error


def _json_numbers(given: Mapping[str, Any], shape: Sequence[int], *, uint8: bool) -> bytes:
    """JSON ``data`` as the tensor's bytes: 0-255 integers, or little-endian float32s."""
    values = _flat(given.get("data"))
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidArgument(f"input {INPUT_NAME!r} data", f"{len(values)} values",
                              f"{count} for shape {list(shape)}")
    if uint8:
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255
                   for v in values):
            raise InvalidArgument(f"input {INPUT_NAME!r} data", "a value outside 0-255",
                                  "integers 0-255")
        return bytes(values)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise InvalidArgument(f"input {INPUT_NAME!r} data", "a value that is not a number",
                              "numbers")
    return struct.pack(f"<{count}f", *values)


def _flat(data: Any) -> list[Any]:
    """The protocol's data, nested row-major or flat, as one flat list."""
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    for item in data:
        flat.extend(_flat(item) if isinstance(item, list) else [item])
    return flat


def _sized(data: bytes, shape: tuple[int, ...], item_bytes: int, datatype: str) -> bytes:
    count = item_bytes * math.prod(shape)
    if len(data) != count:
        raise InvalidArgument(f"input {INPUT_NAME!r} {datatype} data", f"{len(data)} bytes",
                              f"{count} bytes for shape {list(shape)}")
    return data


def _requested_outputs(header: Mapping[str, Any], service: _Service) -> list[_Requested]:
    names = (PROBABILITIES_OUTPUT,) if service.algorithm == "image-classification" \
        else (DETECTIONS_OUTPUT, *DETECTOR_TENSORS)
    name = names[0]
    parameters = header.get("parameters") or {}
    binary_default = bool(isinstance(parameters, dict) and parameters.get("binary_data_output"))
    asked = header.get("outputs")
    if asked is None:
        return [_Requested(name, binary_default, 0)]
    known = " or ".join(repr(n) for n in names)
    if not isinstance(asked, list) or not asked:
        raise InvalidArgument("outputs", asked, f"a list of requested outputs ({known})")
    wanted = []
    for output in asked:
        if not isinstance(output, dict) or output.get("name") not in names:
            shown = output.get("name") if isinstance(output, dict) else output
            raise InvalidArgument("output name", shown, f"{known} (model {service.name!r})")
        options = output.get("parameters") or {}
        binary = bool(options.get("binary_data", binary_default))
        if not isinstance(options, dict):
            raise InvalidArgument("output parameters", options, "a JSON object")
        top = options.get("classification", 0)
        if top and name != PROBABILITIES_OUTPUT:
            raise InvalidArgument("classification", top, "only on a classifier's output")
        if not isinstance(top, int) or isinstance(top, bool) or top < 0:
            raise InvalidArgument("classification", top, "a positive number of classes")
        wanted.append(_Requested(output["name"], binary, top))
    return wanted


# --- the answer --------------------------------------------------------------------------

def _outputs(service: _Service, result: InferenceResult, wanted: Sequence[_Requested],
             about: Mapping[str, Any]) -> list[tuple[dict[str, Any], bytes | None]]:
    answer = json.loads(result.body)
    labels = about.get("labels") or ()
    if service.algorithm == "image-classification":
        values = [float(p) for p in answer]
        return [_output(output, values, [1, len(values)], labels) for output in wanted]
    rows = [[float(v) for v in row] for row in answer["prediction"]]
    tensors = {DETECTIONS_OUTPUT: ([v for row in rows for v in row],
                                   [len(rows), _DETECTION_COLUMNS]),
               **_detector_tensors(rows, about.get("input_size"))}
    return [_output(output, *tensors[output.name], labels) for output in wanted]


def _detector_tensors(rows: list[list[float]], input_size: Sequence[int] | None
                      ) -> dict[str, tuple[list[float], list[int]]]:
    """The rows as the model's own outputs: ids, scores, boxes in its input's pixels."""
    width, height = input_size or (0, 0)  # boxes are only asked for with a known size
    return {
        "class_ids": ([row[0] for row in rows], [1, len(rows), 1]),
        "scores": ([row[1] for row in rows], [1, len(rows), 1]),
        "boxes": ([value * scale for row in rows
                   for value, scale in zip(row[2:], (width, height, width, height))],
                  [1, len(rows), 4]),
    }


def _output(output: _Requested, values: list[float], shape: list[int],
            labels: Sequence[str]) -> tuple[dict[str, Any], bytes | None]:
    if output.classification:
        top = sorted(range(len(values)), key=lambda i: -values[i])[:output.classification]
        strings = [f"{values[i]:f}:{i}" + (f":{labels[i]}" if i < len(labels) else "")
                   for i in top]
        described = {"name": output.name, "datatype": "BYTES", "shape": [1, len(strings)]}
        if not output.binary:
            return {**described, "data": strings}, None
        raw = b"".join(struct.pack("<I", len(s.encode())) + s.encode() for s in strings)
        return {**described, "parameters": {"binary_data_size": len(raw)}}, raw
    described = {"name": output.name, "datatype": "FP32", "shape": shape}
    if not output.binary:
        return {**described, "data": values}, None
    raw = struct.pack(f"<{len(values)}f", *values)
    return {**described, "parameters": {"binary_data_size": len(raw)}}, raw


def _response(answer: dict[str, Any], tensors: list[bytes]) -> Response:
    text = json.dumps(answer, separators=(",", ":")).encode()
    if not tensors:
        return Response(text, media_type="application/json")
    return Response(text + b"".join(tensors), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(text))})
