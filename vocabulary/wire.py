"""What crosses between the ingress (or an in-cluster client) and a service replica.

Both sides import these from here, so a replica and an ingress of the same lis
always agree on the shape of an answer.

On the local path (``deployments.local_socket``) a message is one frame of a
fixed format, never a pickle: the other end of a socket is another process,
and nothing it sends is executed. A frame is an 8-byte prefix (the header's
length, then the body's, each a big-endian unsigned 32-bit integer), a JSON
object (UTF-8) and the body's raw bytes::

    request   {"service", "content_type", "algo_type", "timeout_s"}  + the request body
    answer    {"content_type", "stages_s"}                            + the result body
              {"error": {"type", "message"}}                          + no body
              {"refused": "<why>"}                                    + no body
              {"busy": "<why>"}                                       + no body

Each size is bounded (``MAX_HEADER_BYTES``, the body's limit given by the
reader), the header has exactly its keys with their types, and a frame that is
anything else is an ``InvalidArgument`` or ``PayloadTooLarge``, never run.
"""

from __future__ import annotations

import json
import math
import string
import struct
from dataclasses import dataclass
from typing import Any

from vocabulary.errors import InvalidArgument, LisError, PayloadTooLarge, from_wire

__all__ = [
    "FRAME_PREFIX",
    "Frame",
    "MAX_ANSWER_BYTES",
    "MAX_HEADER_BYTES",
    "METADATA_KEY",
    "WIRE_VERSION",
    "Answer",
    "Busy",
    "InferenceResult",
    "LocalRequest",
    "Refused",
    "StageTimes",
    "decode_answer",
    "decode_request",
    "encode_answer",
    "encode_request",
    "frame_sizes",
    "is_metadata_key",
]

# (stage, seconds) of a replica's steps for one request: prepare, wait, model.
StageTimes = tuple[tuple[str, float], ...]
# An encoded frame as two buffers, its prefix and header then its body: a
# request's image is sent as it is (``socket.sendmsg``), never copied into one.
Frame = tuple[bytes, bytes]

# The local path's frame format. Sockets of another version live in another
# folder (``deployments.local_socket``): an ingress and a replica of two lis
# versions never meet there, and go through Ray Serve instead.
WIRE_VERSION = 3
# (header bytes, body bytes) before each frame.
FRAME_PREFIX = struct.Struct("!II")
# A header holds a few names and numbers: anything near this is not one.
MAX_HEADER_BYTES = 64 * 1024
# The largest answer body the ingress reads: a connector's JSON output is kilobytes.
MAX_ANSWER_BYTES = 64 * 1024 * 1024

# ML Feedback metadata become S3 user metadata, one HTTP header each
# (``x-amz-meta-<key>``): a key that is not an HTTP token (RFC 7230 ``tchar``)
# makes every upload of its sample fail. The client and the feedback worker
# both check keys against it.
METADATA_KEY = "an HTTP token: letters, digits and !#$%&'*+-.^_`|~ (RFC 7230 tchar)"
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~" + string.digits + string.ascii_letters)

# One of each, made once: ``json.dumps``/``json.loads`` with options build a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a frame may carry")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)
_REQUEST_KEYS = frozenset({"service", "content_type", "algo_type", "timeout_s"})
_RESULT_KEYS = frozenset({"content_type", "stages_s"})


@dataclass(frozen=True)
class InferenceResult:
    """What a service returns: the connector's answer, and where the replica's time went."""

    body: str
    content_type: str
    # (stage, seconds) of the replica's steps, for the ingress's /metrics.
    stages_s: StageTimes = ()


@dataclass(frozen=True)
class LocalRequest:
    """One request the ingress sends a replica over its socket."""

    service: str
    content_type: str | None
    algo_type: str | None
    timeout_s: float  # what the ingress waits for the answer
    body: bytes


@dataclass(frozen=True)
class Refused:
    """The replica is stopping and did not start the request: the ingress sends it by Ray."""

    reason: str


@dataclass(frozen=True)
class Busy:
    """The replica already runs as many requests as it takes, from callers of any process.

    Nothing was started: the caller sends the request to another replica, or
    waits and asks again. Several processes on a node (the ingress, a user's
    driver or deployment) may call one replica; each counts only its own
    requests, so the replica, which sees them all, keeps the limit.
    """

    reason: str


Answer = InferenceResult | LisError | Refused | Busy


def is_metadata_key(key: str) -> bool:
    """Whether ``key`` may name ML Feedback metadata (see ``METADATA_KEY``)."""
    return bool(key) and all(char in _TOKEN_CHARS for char in key)


def frame_sizes(prefix: bytes, max_body_bytes: int) -> tuple[int, int]:
    """The (header, body) sizes a frame's prefix announces, each within its bound."""
    header_size, body_size = FRAME_PREFIX.unpack(prefix)
    if not 0 < header_size <= MAX_HEADER_BYTES:
        raise InvalidArgument("frame header size", header_size,
                              f"1 to {MAX_HEADER_BYTES} bytes")
    if body_size > max_body_bytes:
        raise PayloadTooLarge("frame body bytes", body_size, max_body_bytes)
    return header_size, body_size


def encode_request(request: LocalRequest) -> Frame:
    header = {"service": request.service, "content_type": request.content_type,
              "algo_type": request.algo_type, "timeout_s": request.timeout_s}
    return _frame(header, request.body)


def decode_request(header: bytes, body: bytes) -> LocalRequest:
    """The request a frame holds; ``InvalidArgument`` for anything else."""
    fields = _header(header, _REQUEST_KEYS)
    timeout_s = _number(fields["timeout_s"])
    if timeout_s is None or timeout_s <= 0:
        raise InvalidArgument("frame timeout_s", fields["timeout_s"],
                              "a positive number of seconds")
    return LocalRequest(service=_text(fields, "service"),
                        content_type=_optional_text(fields, "content_type"),
                        algo_type=_optional_text(fields, "algo_type"),
                        timeout_s=timeout_s, body=body)


def encode_answer(answer: Answer) -> Frame:
    if isinstance(answer, Refused):
        return _frame({"refused": answer.reason}, b"")
    if isinstance(answer, Busy):
        return _frame({"busy": answer.reason}, b"")
    if isinstance(answer, LisError):
        return _frame({"error": {"type": answer.type_name, "message": answer.message}}, b"")
    header = {"content_type": answer.content_type,
              "stages_s": [[stage, seconds] for stage, seconds in answer.stages_s]}
    return _frame(header, answer.body.encode())


def decode_answer(header: bytes, body: bytes) -> Answer:
    """The answer a frame holds (an error rebuilt as its class); ``InvalidArgument`` otherwise."""
    fields = _header(header, None)
    if fields.keys() == {"refused"}:
        return Refused(_text(fields, "refused"))
    if fields.keys() == {"busy"}:
        return Busy(_text(fields, "busy"))
    if fields.keys() == {"error"}:
        return _error(fields["error"])
    if fields.keys() != _RESULT_KEYS:
        raise InvalidArgument("frame header keys", sorted(fields), "an answer's keys")
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise InvalidArgument("frame body", body[:40], "UTF-8 text") from None
    return InferenceResult(text, _text(fields, "content_type"), _stages(fields["stages_s"]))


def _frame(header: dict[str, Any], body: bytes) -> Frame:
    data = _ENCODER.encode(header).encode()
    return FRAME_PREFIX.pack(len(data), len(body)) + data, body


def _header(data: bytes, keys: frozenset[str] | None) -> dict[str, Any]:
    try:
        fields = _DECODER.decode(data.decode())
    except (ValueError, RecursionError):  # not UTF-8, not JSON, NaN, nested too deep
        raise InvalidArgument("frame header", data[:40], "a JSON object") from None
    if not isinstance(fields, dict):
        raise InvalidArgument("frame header", fields, "a JSON object")
    if keys is not None and fields.keys() != keys:
        raise InvalidArgument("frame header keys", sorted(fields), ", ".join(sorted(keys)))
    return fields


def _error(value: Any) -> LisError:
    if not (isinstance(value, dict) and value.keys() == {"type", "message"}
            and all(isinstance(field, str) for field in value.values())):
        raise InvalidArgument("frame error", value, "{type, message}, both strings")
    return from_wire(value["type"], value["message"])


def _stages(value: Any) -> StageTimes:
    expected = "a list of [stage, seconds] pairs"
    if not isinstance(value, list):
        raise InvalidArgument("frame stages_s", value, expected)
    stages = []
    for pair in value:
        seconds = _number(pair[1]) if isinstance(pair, list) and len(pair) == 2 else None
        if seconds is None or not isinstance(pair[0], str):
            raise InvalidArgument("frame stages_s", value, expected)
        stages.append((pair[0], seconds))
    return tuple(stages)


def _text(fields: dict[str, Any], key: str) -> str:
    value = fields[key]
    if not isinstance(value, str):
        raise InvalidArgument(f"frame {key}", value, "a string")
    return value


def _optional_text(fields: dict[str, Any], key: str) -> str | None:
    return None if fields[key] is None else _text(fields, key)


def _number(value: Any) -> float | None:
    """``value`` as a finite float; None if it is not a number, or none a float holds."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        return None
    return number if math.isfinite(number) else None
