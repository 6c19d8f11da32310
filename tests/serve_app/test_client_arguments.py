"""The SDK's argument checks and error mapping, before and without any server."""

from __future__ import annotations

import importlib
import io
import socket

import pytest

import greengrass_machine_learning_sdk as ml
from vocabulary.errors import (
    AlgorithmMismatch,
    InferenceTimeout,
    InvalidImage,
    ServiceNotFound,
)

# serve_app.client (the function) shadows the module of the same name.
client_module = importlib.import_module("serve_app.client")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


GOOD = {"AlgoType": "image-classification", "ServiceName": "imageClassification",
        "ContentType": "image/jpeg", "Body": b"\xff\xd8\xff"}


def test_unknown_client_type_is_refused() -> None:
    with pytest.raises(Exception, match="bogus"):
        ml.client("bogus")


@pytest.mark.parametrize("missing", ["AlgoType", "ServiceName", "Body"])
def test_missing_required_argument_names_it(missing: str) -> None:
    kwargs = {k: v for k, v in GOOD.items() if k != missing}
    with pytest.raises(ValueError, match=missing):
        ml.client("inference").invoke_inference_service(**kwargs)


@pytest.mark.parametrize("name,value", [
    ("AlgoType", "-starts-with-dash"), ("ServiceName", "a"), ("ServiceName", "has space"),
    ("ServiceName", "x" * 64), ("AlgoType", 42),
])
def test_names_must_match_the_sdk_pattern(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=name):
        ml.client("inference").invoke_inference_service(**{**GOOD, name: value})


def test_body_must_be_bytes_or_a_file() -> None:
    with pytest.raises(ValueError, match="Body"):
        ml.client("inference").invoke_inference_service(**{**GOOD, "Body": "text"})


def test_unreachable_lis_is_a_dependency_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIS_TRANSPORT", "http")
    monkeypatch.setenv("LIS_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(ml.GreengrassDependencyException, match="not reachable"):
        ml.client("inference").invoke_inference_service(**{**GOOD, "Body": io.BytesIO(b"x")})


@pytest.mark.parametrize("error,expected", [
    (ServiceNotFound("x"), ml.GreengrassDependencyException),
    (AlgorithmMismatch("x", "object-detection", "image-classification"),
     ml.GreengrassDependencyException),
    (InvalidImage("corrupt"), ml.GreengrassInferenceException),
    (InferenceTimeout("x", 1), ml.GreengrassInferenceException),
])
def test_lis_errors_map_to_sdk_exceptions(error: Exception, expected: type) -> None:
    mapped = client_module._sdk_exception(error)  # type: ignore[arg-type]
    assert type(mapped) is expected and str(error) in str(mapped)


@pytest.mark.parametrize("kwargs,match", [
    ({"ModelInput": b"x", "ModelPrediction": [0.1]}, "ConfigId"),
    ({"ConfigId": "c1", "ModelInput": b"x", "ModelPrediction": "0.1"}, "ModelPrediction"),
    ({"ConfigId": "c1", "ModelInput": b"x", "ModelPrediction": [0.1], "Metadata": []},
     "Metadata"),
])
def test_feedback_publish_argument_checks(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ml.client("feedback").publish(**kwargs)


def test_body_reads_as_bytes_that_python2_era_code_can_split() -> None:
    import numpy as np

    data = ml.StreamingBody(b"[0.3,0.1,0.6]").read()
    assert isinstance(data, bytes) and data == b"[0.3,0.1,0.6]"
    assert data.decode("utf-8") == "[0.3,0.1,0.6]"  # the detection example's way
    inner = data[1:-1]  # the classification example's (Python 2) way
    count = len(inner.split(","))
    np.testing.assert_allclose(np.fromstring(inner, count=count, sep=","), [0.3, 0.1, 0.6])
    assert inner.split(b",")[0] == b"0.3" and data.startswith("[")
    body = ml.StreamingBody(b"abcdef")
    assert body.read(2) == b"ab" and body.read() == b"cdef"
