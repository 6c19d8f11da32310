"""Issue #17: property-based fuzzing of the decoders and of the ingress's request parsing.

Any bytes, any content type, any headers a client can send: the decoders give
an array or a 4xx ``LisError``, never another exception; the ingress never
answers 500, every refusal carries the error tree's JSON body, and the app
(and the service's replicas) are still there after each request.
"""

from __future__ import annotations

import string
import tempfile
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import quote

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from starlette.testclient import TestClient

from deployments.imaging import CLASSIFIER_PREPROCESSING, decode_image, prepare_image
from serve_app.ingress import ServiceInfo, build_http_app
from vocabulary.errors import LisError
from vocabulary.wire import InferenceResult

# No example database, and Hypothesis's caches outside the work tree: a test run
# leaves nothing behind (``print_blob`` still says how to replay a failure).
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "lis-hypothesis")
FUZZ = settings(max_examples=300, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SERVICE = "cls"
ALGORITHM = "image-classification"
MAX_BODY = 4096
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONTENT_TYPES = ["image/jpeg", "image/png", "IMAGE/PNG; charset=x", "image/gif",
                 "application/octet-stream", "text/plain", "", ";", "image/jpeg;;;"]


def _lis_error_names() -> set[str]:
    found, pending = set(), [LisError]
    while pending:
        cls = pending.pop()
        found.add(cls.__name__)
        pending += cls.__subclasses__()
    return found


# What the ingress's HTTPException handler names routing refusals (404, 405).
HTTP_PHRASE_NAMES = {status.phrase.replace(" ", "") for status in HTTPStatus}


def _encoded(extension: str, pixels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(extension, pixels)
    assert ok
    return data.tobytes()


@st.composite
def _mutated_images(draw: st.DrawFn) -> bytes:
    """A real small JPEG/PNG, then truncated, cut or with bytes overwritten."""
    height, width = draw(st.integers(1, 16)), draw(st.integers(1, 16))
    channels = draw(st.sampled_from([1, 3, 4]))
    seed = draw(st.integers(0, 2**32 - 1))
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), np.uint8)
    extension = draw(st.sampled_from([".jpg", ".png"])) if channels != 4 else ".png"
    data = bytearray(_encoded(extension, pixels))
    for _ in range(draw(st.integers(0, 4))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data)


BODIES = (st.binary(max_size=2 * MAX_BODY)
          | st.binary(max_size=512).map(lambda tail: JPEG_MAGIC + tail)
          | st.binary(max_size=512).map(lambda tail: PNG_MAGIC + tail)
          | _mutated_images())
# Past the service's limit (413), cheaply: a short pattern repeated.
OVERSIZED = st.binary(min_size=1, max_size=16).map(lambda unit: unit * (MAX_BODY // len(unit) + 1))
DECODER_CONTENT_TYPES = st.none() | st.sampled_from(CONTENT_TYPES) | st.text(max_size=40)

# What an HTTP client can put in a header: a token for the name, latin-1
# printable characters (no CR/LF, no other controls) for the value.
_TCHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
_VALUE_CHARS = st.characters(codec="latin-1", categories=["L", "M", "N", "P", "S", "Zs"],
                             exclude_characters="\r\n\x00\x7f")
HEADER_VALUES = st.text(_VALUE_CHARS, max_size=60)
# Framing headers the test client computes itself; sending others would not reach the app.
_FRAMING = {"content-length", "transfer-encoding", "host", "connection", "expect", "te",
            "upgrade", "trailer", "keep-alive"}
HEADER_NAMES = st.text(_TCHARS, min_size=1, max_size=20).filter(
    lambda name: name.lower() not in _FRAMING)


def _check_decoder_outcome(call: Any) -> None:
    try:
        result = call()
    except LisError as error:
        assert 400 <= int(error.status) < 500, (type(error).__name__, error.status, error)
        event(type(error).__name__)
        return
    event("decoded")
    assert isinstance(result, np.ndarray)


@FUZZ
@given(body=BODIES, content_type=DECODER_CONTENT_TYPES)
def test_decode_image_gives_an_array_or_a_4xx_lis_error(body: bytes,
                                                        content_type: str | None) -> None:
    _check_decoder_outcome(lambda: decode_image(body, content_type))


@FUZZ
@given(body=BODIES, content_type=DECODER_CONTENT_TYPES)
def test_prepare_image_gives_a_batch_or_a_4xx_lis_error(body: bytes,
                                                        content_type: str | None) -> None:
    _check_decoder_outcome(lambda: prepare_image(body, content_type, CLASSIFIER_PREPROCESSING))


# --- the ingress, in-process ---------------------------------------------------------


class DecodingRouter:
    """A ``Router`` whose one service decodes the body for real, as a replica would."""

    def __init__(self) -> None:
        self.services = {SERVICE: ServiceInfo(
            name=SERVICE, algorithm=ALGORITHM, connector_id="ImageClassifier",
            connector_arn="", platform="x86-64", timeout_s=5.0, max_request_bytes=MAX_BODY)}
        self.states = {SERVICE: {"state": "RUNNING", "replicas": 1}}
        self.unexpected: list[BaseException] = []

    async def infer(self, service: ServiceInfo, body: bytes, content_type: str | None,
                    algo_type: str | None, gone: Any = None) -> InferenceResult:
        try:
            batch = prepare_image(body, content_type, CLASSIFIER_PREPROCESSING)
        except LisError:
            raise
        except BaseException as error:  # a replica would die of this one
            self.unexpected.append(error)
            raise
        return InferenceResult(f"[{float(batch.mean())}]", "application/json")

    async def service_states(self) -> dict[str, dict[str, Any]]:
        return self.states

    async def publish_feedback(self, config_id: str, body: bytes, prediction: Any,
                               metadata: dict[str, str]) -> dict[str, Any]:
        return {"accepted": True, "key": "fuzz/sample.jpg"}


@pytest.fixture(scope="module")
def ingress() -> Iterator[tuple[TestClient, DecodingRouter]]:
    router = DecodingRouter()
    # One app for every example: it must survive all of them.
    with TestClient(build_http_app(router, token=None),
                    raise_server_exceptions=False) as client:
        yield client, router


def _assert_error_tree(response: Any) -> None:
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"type", "message"}, body
    assert isinstance(error["message"], str), body
    if response.status_code in (HTTPStatus.NOT_FOUND, HTTPStatus.METHOD_NOT_ALLOWED) \
            and error["type"] in HTTP_PHRASE_NAMES:
        return  # Starlette's routing refusal, in the same shape
    assert error["type"] in _lis_error_names(), body


def _assert_survives(client: TestClient, router: DecodingRouter) -> None:
    assert router.unexpected == []
    assert client.get("/healthz").status_code == HTTPStatus.OK
    ready = client.get("/readyz")
    assert ready.status_code == HTTPStatus.OK, ready.text
    services = client.get("/services").json()["services"]
    assert [(s["name"], s["replicas"], s["state"]) for s in services] == \
        [(SERVICE, 1, "RUNNING")]


@FUZZ
# The real service and header values are drawn more often than random ones, so
# that most requests get past routing to the decoder.
@given(service=st.one_of(st.just(SERVICE), st.just(SERVICE), st.just(SERVICE),
                         st.text(max_size=20)),
       body=st.one_of(BODIES, OVERSIZED),
       content_type=st.one_of(st.none(), st.sampled_from(CONTENT_TYPES),
                              st.sampled_from(CONTENT_TYPES), HEADER_VALUES),
       algo_type=st.one_of(st.none(), st.none(), st.just(ALGORITHM),
                           st.just("object-detection"), HEADER_VALUES),
       extra=st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=4))
def test_ingress_never_answers_500_and_refuses_in_the_error_tree(
        ingress: tuple[TestClient, DecodingRouter], service: str, body: bytes,
        content_type: str | None, algo_type: str | None, extra: dict[str, str]) -> None:
    client, router = ingress
    headers: list[tuple[bytes, bytes]] = [(name.encode("latin-1"), value.encode("latin-1"))
                                          for name, value in extra.items()]
    if content_type is not None:
        headers.append((b"Content-Type", content_type.encode("latin-1")))
    if algo_type is not None:
        headers.append((b"X-Algo-Type", algo_type.encode("latin-1")))
    response = client.post(f"/inference/{quote(service, safe='')}", content=body,
                           headers=headers)
    event(f"HTTP {response.status_code}")
    assert response.status_code != HTTPStatus.INTERNAL_SERVER_ERROR, response.text
    assert response.status_code < 500, response.text
    if response.status_code >= 300:
        _assert_error_tree(response)
    _assert_survives(client, router)
