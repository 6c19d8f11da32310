"""Triton's own client (``tritonclient.http``) against a real lis: the Open Inference Protocol.

Each answer is checked against the same service's answer on the connector's
route for the same image: the protocol is another way in, not another model.
"""

from __future__ import annotations

import json
import urllib.request
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest

from deployments.inference import InferencePipeline, PipelineOptions

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

CLASSIFIER, DETECTOR = "imageClassification", "objectDetection"


def _jpeg(width: int = 640, height: int = 480, seed: int = 0) -> bytes:
    # As test_service_e2e's: the test SSD is built to detect something in it.
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    cv2.circle(image, (width // 2, height // 2), min(width, height) // 4, (0, 0, 255), -1)
    return cv2.imencode(".jpg", image)[1].tobytes()


def _connector(endpoint: str, service: str, body: bytes) -> object:
    request = urllib.request.Request(f"{endpoint}/inference/{service}", data=body,
                                     headers={"Content-Type": "image/jpeg"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def triton(running_lis) -> httpclient.InferenceServerClient:
    client = httpclient.InferenceServerClient(urlsplit(running_lis.endpoint).netloc,
                                              network_timeout=60.0)
    yield client
    client.close()


def _image_input(body: bytes) -> httpclient.InferInput:
    given = httpclient.InferInput("image", [1], "BYTES")
    given.set_data_from_numpy(np.array([body], dtype=np.object_), binary_data=True)
    return given


def test_health_and_metadata(triton: httpclient.InferenceServerClient) -> None:
    assert triton.is_server_live()
    assert set(triton.get_server_metadata()["extensions"]) >= {"binary_tensor_data",
                                                               "classification"}
    assert triton.is_model_ready(CLASSIFIER) and triton.is_model_ready(DETECTOR)
    classifier = triton.get_model_metadata(CLASSIFIER)
    assert classifier["platform"] == "mxnet"
    assert classifier["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [1]}]
    assert classifier["outputs"] == [{"name": "probabilities", "datatype": "FP32",
                                      "shape": [1, 3]}]
    [version] = classifier["versions"]
    assert triton.is_model_ready(CLASSIFIER, model_version=version)
    assert not triton.is_model_ready(CLASSIFIER, model_version="not-" + version)
    detector = triton.get_model_metadata(DETECTOR)
    assert detector["platform"] == "dlr"
    assert detector["parameters"]["tensor"] == {"datatype": "FP32", "shape": [1, 3, 512, 512]}


@pytest.mark.parametrize("binary", [True, False])
def test_a_jpeg_gets_the_connectors_probabilities(running_lis, binary: bool,
                                                  triton: httpclient.InferenceServerClient
                                                  ) -> None:
    jpeg = _jpeg(320, 240)
    result = triton.infer(CLASSIFIER, [_image_input(jpeg)], request_id="frame-7", outputs=[
        httpclient.InferRequestedOutput("probabilities", binary_data=binary)])
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (1, 3)
    expected = _connector(running_lis.endpoint, CLASSIFIER, jpeg)
    assert np.allclose(probabilities[0], expected, atol=1e-6)
    response = result.get_response()
    assert response["id"] == "frame-7" and response["model_name"] == CLASSIFIER


def test_the_classification_extension_names_the_top_classes(
        running_lis, triton: httpclient.InferenceServerClient) -> None:
    jpeg = _jpeg(320, 240)
    result = triton.infer(CLASSIFIER, [_image_input(jpeg)], outputs=[
        httpclient.InferRequestedOutput("probabilities", binary_data=True, class_count=2)])
    top = [item.decode() for item in result.as_numpy("probabilities").reshape(-1)]
    expected = np.asarray(_connector(running_lis.endpoint, CLASSIFIER, jpeg))
    best = np.argsort(-expected)[:2]
    assert [entry.split(":")[1:] for entry in top] == [[str(i), f"class{i}"] for i in best]
    assert np.allclose([float(entry.split(":")[0]) for entry in top], expected[best], atol=1e-6)


def test_detections_are_the_connectors_rows(running_lis,
                                            triton: httpclient.InferenceServerClient) -> None:
    jpeg = _jpeg()
    result = triton.infer(DETECTOR, [_image_input(jpeg)])
    rows = result.as_numpy("detections")
    expected = np.asarray(_connector(running_lis.endpoint, DETECTOR, jpeg)["prediction"])
    assert len(expected), "the test SSD is built to emit some rows"
    assert rows.shape == (len(expected), 6) and np.allclose(rows, expected, atol=1e-6)
    # The same rows as the model's own tensors, boxes in its 512x512 input's pixels.
    result = triton.infer(DETECTOR, [_image_input(jpeg)], outputs=[
        httpclient.InferRequestedOutput(name, binary_data=True)
        for name in ("class_ids", "scores", "boxes")])
    assert np.array_equal(result.as_numpy("class_ids")[0, :, 0], expected[:, 0])
    assert np.allclose(result.as_numpy("scores")[0, :, 0], expected[:, 1], atol=1e-6)
    assert np.allclose(result.as_numpy("boxes")[0], expected[:, 2:] * 512, atol=1e-3)


def test_raw_pixels_and_the_models_own_input_answer_as_the_image(
        running_lis, triton: httpclient.InferenceServerClient) -> None:
    image = np.random.default_rng(3).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    png = cv2.imencode(".png", image)[1].tobytes()  # lossless: the same pixels either way
    expected = _connector(running_lis.endpoint, CLASSIFIER, png)

    pixels = httpclient.InferInput("image", [240, 320, 3], "UINT8")
    pixels.set_data_from_numpy(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), binary_data=True)
    from_pixels = triton.infer(CLASSIFIER, [pixels]).as_numpy("probabilities")[0]
    assert np.allclose(from_pixels, expected, atol=1e-6)

    pipeline = InferencePipeline(running_lis.classifier,
                                 PipelineOptions(algorithm="image-classification"))
    batch = pipeline.prepare(png, "image/png")  # what the replica computes from the image
    tensor = httpclient.InferInput("image", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=True)
    from_tensor = triton.infer(CLASSIFIER, [tensor]).as_numpy("probabilities")[0]
    assert np.allclose(from_tensor, expected, atol=1e-5)


def test_errors_reach_the_client_with_their_message(
        triton: httpclient.InferenceServerClient) -> None:
    wrong = httpclient.InferInput("input0", [1], "BYTES")
    wrong.set_data_from_numpy(np.array([_jpeg()], dtype=np.object_), binary_data=True)
    with pytest.raises(InferenceServerException, match="invalid input name 'input0'"):
        triton.infer(CLASSIFIER, [wrong])
    with pytest.raises(InferenceServerException, match="invalid image"):
        triton.infer(CLASSIFIER, [_image_input(b"\xff\xd8\xff not really a jpeg")])
    with pytest.raises(InferenceServerException, match="no inference service named 'nope'"):
        triton.infer("nope", [_image_input(_jpeg())])
    # The service still answers after each.
    assert triton.infer(CLASSIFIER, [_image_input(_jpeg())]).as_numpy("probabilities").shape \
        == (1, 3)
