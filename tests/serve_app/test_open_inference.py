"""The Open Inference Protocol in-process: its codec and errors, in front of a fake router.

What the protocol's clients send and get (JSON and Triton's binary tensors,
the classification extension, each bad input's 400) without Ray; the same
routes against a real lis, with ``tritonclient``, are in
``test_open_inference_e2e.py``.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from deployments.imaging import CLASSIFIER_PREPROCESSING, prepare_image, tensor_batch

from serve_app.ingress import ServiceInfo, build_http_app
from vocabulary.tensors import RGB8_CONTENT_TYPE, TENSOR_CONTENT_TYPE
from vocabulary.wire import InferenceResult

TOKEN = "correct-horse-battery-staple"
CLASSIFIER = ServiceInfo(
    name="cls", algorithm="image-classification", connector_id="ImageClassifier",
    connector_arn="arn:aws:greengrass:us-west-2::/connectors/ImageClassificationx86-64/versions/2",
    platform="x86-64", timeout_s=10.0, max_request_bytes=4096)
DETECTOR = ServiceInfo(
    name="det", algorithm="object-detection", connector_id="ObjectDetector",
    connector_arn="arn:aws:greengrass:us-west-2::/connectors/ObjectDetectionx86-64/versions/1",
    platform="x86-64", timeout_s=5.0, max_request_bytes=4096)
ANSWERS = {
    "cls": InferenceResult("[0.125,0.625,0.25]", "application/json"),
    "det": InferenceResult('{"prediction":[[1.0,0.875,0.25,0.125,0.5,0.75],'
                           '[0.0,0.5,0.0,0.0,1.0,1.0]]}', "application/json"),
}
STATES = {
    "cls": {"state": "RUNNING", "version": "v-cls", "labels": ["circle", "square", "triangle"],
            "runtime": "mxnet", "input_shape": [1, 3, 4, 4]},
    "det": {"state": "RUNNING", "version": "v-det", "labels": ["cat", "dog"],
            "runtime": "dlr", "input_shape": [1, 3, 8, 8], "input_size": [8, 16]},
}
PNG = b"\x89PNG\r\n\x1a\n" + b"not decoded here"


@dataclass
class TensorRouter:
    services: dict[str, ServiceInfo] = field(
        default_factory=lambda: {info.name: info for info in (CLASSIFIER, DETECTOR)})
    states: dict[str, dict[str, Any]] = field(
        default_factory=lambda: json.loads(json.dumps(STATES)))
    calls: list[tuple[str, bytes, str | None]] = field(default_factory=list)

    async def infer(self, service: ServiceInfo, body: bytes, content_type: str | None,
                    algo_type: str | None, gone: Any = None) -> InferenceResult:
        self.calls.append((service.name, body, content_type))
        return ANSWERS[service.name]

    async def service_states(self) -> dict[str, dict[str, Any]]:
        return self.states


@pytest.fixture
def router() -> TensorRouter:
    return TensorRouter()


@pytest.fixture
def client(router: TensorRouter) -> Iterator[TestClient]:
    with TestClient(build_http_app(router)) as test_client:
        yield test_client


def _binary_request(header: dict[str, Any], *tensors: bytes) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(header).encode()
    return text + b"".join(tensors), {"Inference-Header-Content-Length": str(len(text)),
                                      "Content-Type": "application/octet-stream"}


def _bytes_element(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


def _split_answer(response: Any) -> tuple[dict[str, Any], bytes]:
    length = int(response.headers["inference-header-content-length"])
    return json.loads(response.content[:length]), response.content[length:]


# --- server and model metadata, health ------------------------------------------------

def test_server_metadata_names_the_extensions(client: TestClient) -> None:
    answer = client.get("/v2").json()
    assert answer["name"] == "lis" and answer["version"]
    assert answer["extensions"] == ["binary_tensor_data", "classification"]


def test_health_is_the_status_code(client: TestClient, router: TensorRouter) -> None:
    assert client.get("/v2/health/live").status_code == HTTPStatus.OK
    assert client.get("/v2/health/ready").status_code == HTTPStatus.OK
    assert client.get("/v2/models/cls/ready").status_code == HTTPStatus.OK
    assert client.get("/v2/models/cls/versions/v-cls/ready").status_code == HTTPStatus.OK
    router.states["det"] = {"state": "STARTING"}
    assert client.get("/v2/health/ready").status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert client.get("/v2/models/det/ready").status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert client.get("/v2/models/nope/ready").status_code == HTTPStatus.NOT_FOUND
    assert client.get("/v2/models/cls/versions/old/ready").status_code == HTTPStatus.NOT_FOUND


def test_model_metadata_comes_from_the_running_artifact(client: TestClient) -> None:
    assert client.get("/v2/models/cls").json() == {
        "name": "cls", "versions": ["v-cls"], "platform": "mxnet",
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [1, 3]}],
        "parameters": {"algorithm": "image-classification",
                       "labels": ["circle", "square", "triangle"],
                       "raw_pixels": {"datatype": "UINT8", "shape": [-1, -1, 3]},
                       "tensor": {"datatype": "FP32", "shape": [1, 3, 4, 4]}}}
    detector = client.get("/v2/models/det/versions/v-det").json()
    assert detector["platform"] == "dlr"
    assert detector["outputs"] == [
        {"name": "detections", "datatype": "FP32", "shape": [-1, 6]},
        {"name": "class_ids", "datatype": "FP32", "shape": [1, -1, 1]},
        {"name": "scores", "datatype": "FP32", "shape": [1, -1, 1]},
        {"name": "boxes", "datatype": "FP32", "shape": [1, -1, 4]}]
    missing = client.get("/v2/models/nope")
    assert missing.status_code == HTTPStatus.NOT_FOUND
    assert missing.json() == {"error": "no inference service named 'nope'"}


# --- inference ------------------------------------------------------------------------

def test_an_encoded_image_as_binary_bytes_gets_probabilities_as_json(
        client: TestClient, router: TensorRouter) -> None:
    body, headers = _binary_request(
        {"id": "42", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                 "parameters": {"binary_data_size": len(PNG) + 4}}]},
        _bytes_element(PNG))
    response = client.post("/v2/models/cls/infer", content=body, headers=headers)
    assert response.status_code == HTTPStatus.OK, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "model_name": "cls", "model_version": "v-cls", "id": "42",
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [1, 3],
                     "data": [0.125, 0.625, 0.25]}]}
    assert router.calls == [("cls", PNG, None)]  # the image itself, decoded by the replica


def test_a_base64_image_in_json_and_binary_outputs(client: TestClient,
                                                   router: TensorRouter) -> None:
    request = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                           "data": [base64.b64encode(PNG).decode()]}],
               "outputs": [{"name": "detections", "parameters": {"binary_data": True}}]}
    response = client.post("/v2/models/det/infer", json=request)
    assert response.status_code == HTTPStatus.OK, response.text
    header, raw = _split_answer(response)
    assert header["outputs"] == [{"name": "detections", "datatype": "FP32", "shape": [2, 6],
                                  "parameters": {"binary_data_size": 48}}]
    assert struct.unpack("<12f", raw) == (1.0, 0.875, 0.25, 0.125, 0.5, 0.75,
                                          0.0, 0.5, 0.0, 0.0, 1.0, 1.0)
    assert router.calls == [("det", PNG, None)]


def test_a_detectors_rows_as_the_models_three_tensors(client: TestClient) -> None:
    request = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                           "data": [base64.b64encode(PNG).decode()]}],
               "outputs": [{"name": "boxes"}, {"name": "scores"}, {"name": "class_ids"}]}
    outputs = client.post("/v2/models/det/infer", json=request).json()["outputs"]
    assert outputs == [  # the input is 8 wide and 16 high: boxes in its pixels
        {"name": "boxes", "datatype": "FP32", "shape": [1, 2, 4],
         "data": [2.0, 2.0, 4.0, 12.0, 0.0, 0.0, 8.0, 16.0]},
        {"name": "scores", "datatype": "FP32", "shape": [1, 2, 1], "data": [0.875, 0.5]},
        {"name": "class_ids", "datatype": "FP32", "shape": [1, 2, 1], "data": [1.0, 0.0]}]


def test_the_classification_extension_gives_top_k_with_labels(client: TestClient) -> None:
    request = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                           "data": [base64.b64encode(PNG).decode()]}],
               "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}]}
    answer = client.post("/v2/models/cls/infer", json=request).json()
    assert answer["outputs"] == [{"name": "probabilities", "datatype": "BYTES", "shape": [1, 2],
                                  "data": ["0.625000:1:square", "0.250000:2:triangle"]}]
    request["parameters"] = {"binary_data_output": True}
    header, raw = _split_answer(client.post("/v2/models/cls/infer", json=request))
    assert raw == _bytes_element(b"0.625000:1:square") + _bytes_element(b"0.250000:2:triangle")
    assert header["outputs"][0]["parameters"] == {"binary_data_size": len(raw)}


def test_raw_pixels_go_to_the_replica_as_rgb8(client: TestClient, router: TensorRouter) -> None:
    pixels = bytes(range(2 * 3 * 3))
    body, headers = _binary_request(
        {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [2, 3, 3],
                     "parameters": {"binary_data_size": len(pixels)}}]}, pixels)
    assert client.post("/v2/models/cls/infer", content=body, headers=headers).status_code == 200
    as_json = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 2, 3, 3],
                           "data": [[list(pixels[i:i + 9]) for i in (0, 9)]]}]}
    assert client.post("/v2/models/cls/infer", json=as_json).status_code == 200
    assert router.calls == [("cls", pixels, f"{RGB8_CONTENT_TYPE}; shape=2,3,3")] * 2


def test_a_tensor_goes_to_the_replica_as_the_models_input(client: TestClient,
                                                          router: TensorRouter) -> None:
    values = [float(i) / 8 for i in range(48)]
    request = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 4, 4],
                           "data": values}]}
    assert client.post("/v2/models/cls/versions/v-cls/infer", json=request).status_code == 200
    assert router.calls == [("cls", struct.pack("<48f", *values),
                             f"{TENSOR_CONTENT_TYPE}; shape=1,3,4,4")]


@pytest.mark.parametrize(("request_json", "message"), [
    ({"inputs": [{"name": "input0", "datatype": "BYTES", "shape": [1], "data": ["eA=="]}]},
     "invalid input name 'input0': expected 'image'"),
    ({"inputs": []}, "invalid inputs []: expected a list of one input, 'image'"),
    ({"inputs": [{"name": "image", "datatype": "INT64", "shape": [1], "data": [1]}]},
     "invalid input 'image' datatype 'INT64': expected BYTES (an encoded image), UINT8"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["eA==", "eA=="]}]},
     "invalid input 'image' BYTES shape [2]: expected [1]: one encoded image"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["not base64!"]}]},
     "expected the image, base64-encoded (in JSON)"),
    ({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [2, 2], "data": [0] * 4}]},
     "invalid input 'image' UINT8 shape [2, 2]: expected [H, W, 3] (RGB pixels)"),
    ({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 1, 3], "data": [0, 1, 256]}]},
     "invalid input 'image' data 'a value outside 0-255': expected integers 0-255"),
    ({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 2, 3], "data": [0] * 3}]},
     "invalid input 'image' data '3 values': expected 6 for shape [1, 2, 3]"),
    ({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 2, 2], "data": [0] * 12}]},
     "invalid input 'image' FP32 shape [1, 3, 2, 2]: expected the model's input shape "
     "[1, 3, 4, 4]"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}]},
     "invalid input 'image' 'no data'"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["eA=="]}],
      "outputs": [{"name": "logits"}]},
     "invalid output name 'logits': expected 'probabilities' (model 'cls')"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["eA=="]}],
      "outputs": [{"name": "probabilities", "parameters": {"classification": -2}}]},
     "invalid classification -2: expected a positive number of classes"),
])
def test_each_bad_input_is_a_400_naming_it(client: TestClient, router: TensorRouter,
                                           request_json: dict[str, Any], message: str) -> None:
    response = client.post("/v2/models/cls/infer", json=request_json)
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert message in response.json()["error"], response.json()
    assert router.calls == []


def test_binary_sizes_must_add_up(client: TestClient, router: TensorRouter) -> None:
    body, headers = _binary_request(
        {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                     "parameters": {"binary_data_size": 99}}]}, _bytes_element(PNG))
    response = client.post("/v2/models/cls/infer", content=body, headers=headers)
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "binary_data_size 99: expected the 28 bytes after the JSON header" \
        in response.json()["error"]
    headers["Inference-Header-Content-Length"] = "100000"
    response = client.post("/v2/models/cls/infer", content=body, headers=headers)
    assert "Inference-Header-Content-Length" in response.json()["error"]
    assert router.calls == []


def test_a_wrong_version_and_an_unknown_model_are_404(client: TestClient) -> None:
    request = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["eA=="]}]}
    for path in ("/v2/models/cls/versions/old/infer", "/v2/models/nope/infer"):
        response = client.post(path, json=request)
        assert response.status_code == HTTPStatus.NOT_FOUND
        assert set(response.json()) == {"error"}


def test_the_token_guards_the_protocol_but_liveness(router: TensorRouter) -> None:
    with TestClient(build_http_app(router, token=TOKEN)) as client:
        assert client.get("/v2/health/live").status_code == HTTPStatus.OK
        for path in ("/v2", "/v2/health/ready", "/v2/models/cls"):
            assert client.get(path).status_code == HTTPStatus.UNAUTHORIZED, path
        assert client.get("/v2/models/cls",
                          headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_metrics_count_protocol_requests_under_the_service(client: TestClient) -> None:
    request = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["eA=="]}]}
    assert client.post("/v2/models/det/infer", json=request).status_code == 200
    metrics = client.get("/metrics").text
    assert 'lis_requests_total{code="200",service="det"} 1.0' in metrics, metrics


# --- any request: an error of the tree, never a 500 ---------------------------------------

class ReplicaRouter(TensorRouter):
    """Checks each body as the replica does (decode, raw pixels, tensor) before answering."""

    async def infer(self, service: ServiceInfo, body: bytes, content_type: str | None,
                    algo_type: str | None, gone: Any = None) -> InferenceResult:
        if (content_type or "").startswith(TENSOR_CONTENT_TYPE):
            tensor_batch(body, content_type or "", (1, 3, 4, 4))
        else:
            prepare_image(body, content_type, CLASSIFIER_PREPROCESSING)
        return await super().infer(service, body, content_type, algo_type, gone)


_JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-300, 300),
                         st.floats(allow_nan=True), st.text(max_size=12))
_JSON = st.recursive(_JSON_LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=20)
_INPUT = st.fixed_dictionaries(
    {"name": st.one_of(st.just("image"), st.text(max_size=8)),
     "datatype": st.sampled_from(["BYTES", "UINT8", "FP32", "INT8", "fp32", ""]),
     "shape": st.one_of(st.lists(st.integers(-1, 5), max_size=5), _JSON)},
    optional={"data": _JSON, "parameters": st.one_of(
        st.fixed_dictionaries({"binary_data_size": st.integers(-5, 40)}), _JSON)})
_REQUEST = st.fixed_dictionaries(
    {"inputs": st.one_of(st.lists(_INPUT, max_size=2), _JSON)},
    optional={"outputs": st.one_of(st.lists(st.fixed_dictionaries(
        {"name": st.sampled_from(["probabilities", "detections", "x"])},
        optional={"parameters": _JSON}), max_size=2), _JSON),
        "parameters": _JSON, "id": _JSON})


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(request=st.one_of(_REQUEST, _JSON), tensors=st.binary(max_size=40),
       header_length=st.one_of(st.none(), st.integers(-3, 400).map(str),
                                     st.from_regex(r"[ -~]{0,4}", fullmatch=True)),
       model=st.sampled_from(["cls", "det", "cls/versions/v-cls", "nope"]))
def test_any_request_is_an_answer_or_an_error_never_a_500(
        request: Any, tensors: bytes, header_length: str | None, model: str) -> None:
    router = ReplicaRouter()
    text = json.dumps(request).encode()
    headers = {} if header_length is None else {"Inference-Header-Content-Length": header_length}
    with TestClient(build_http_app(router), raise_server_exceptions=False) as client:
        response = client.post(f"/v2/models/{model}/infer", content=text + tensors,
                               headers=headers)
        assert response.status_code < 500, (response.status_code, response.text)
        if response.status_code != HTTPStatus.OK:
            body = response.json()
            assert set(body) == {"error"} and isinstance(body["error"], str), body
        assert client.get("/v2/health/live").status_code == HTTPStatus.OK
