"""lis end to end on a real Ray Serve instance: HTTP, handles, the SDK, failures."""

from __future__ import annotations

import io
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
from PIL import Image
from scrape import sample_value
from _replicas import local_requests
from waiting import wait_until

import greengrass_machine_learning_sdk as ml

pytestmark = pytest.mark.slow


def _jpeg(width: int = 320, height: int = 240, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    cv2.circle(image, (width // 2, height // 2), min(width, height) // 4, (0, 0, 255), -1)
    return cv2.imencode(".jpg", image)[1].tobytes()


def _png(array: np.ndarray) -> bytes:
    return cv2.imencode(".png", array)[1].tobytes()


def _pil(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def _huge_png_header() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"\x00") + \
        chunk(b"IEND", b"")


def _post(endpoint: str, service: str, body: bytes, content_type: str = "image/jpeg",
          **headers: str) -> requests.Response:
    return requests.post(f"{endpoint}/inference/{service}", data=body,
                         headers={"Content-Type": content_type, **headers}, timeout=60)


def _error(response: requests.Response) -> dict:
    return response.json()["error"]


# --- the two algorithms, three ways ---------------------------------------------------


def _access_lines(service: str) -> list[re.Match]:
    import ray

    pattern = re.compile(rf"\[{service}\] access status=(\d+) latency_ms=([\d.]+) "
                         r"prepare_ms=([\d.]+) wait_ms=([\d.]+) model_ms=([\d.]+) bytes=(\d+)$")
    folder = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    lines = []
    for log in folder.glob(f"access_*_{service}_*.log"):
        lines += [m for m in map(pattern.search, log.read_text().splitlines()) if m]
    return lines


def test_each_request_leaves_one_access_line_with_its_stages(running_lis) -> None:
    body = _jpeg(331, 217, seed=11)
    assert _post(running_lis.endpoint, "imageClassification", body).status_code == 200
    assert _post(running_lis.endpoint, "imageClassification", b"\xff\xd8\xff" + b"\0" * 97
                 ).status_code == 400

    def line_of(size: int) -> re.Match | None:
        return next((m for m in _access_lines("imageClassification")
                     if int(m.group(6)) == size), None)

    served = wait_until(lambda: line_of(len(body)), timeout_s=30,
                        message="the access line of the request")
    status, latency, prepare, _, model, _ = served.groups()
    assert status == "200"
    assert 0 < float(prepare) and 0 < float(model)
    assert float(prepare) + float(model) <= float(latency) + 0.2  # rounding of each figure
    refused = wait_until(lambda: line_of(100), timeout_s=30,
                         message="the access line of the bad request")
    assert refused.group(1) == "400" and float(refused.group(5)) == 0  # never reached the model


def test_http_classification_answers_the_connector_format(running_lis) -> None:
    response = _post(running_lis.endpoint, "imageClassification", _jpeg())
    assert response.status_code == 200, response.text
    text = response.text
    assert text.startswith("[") and text.endswith("]")
    probabilities = np.fromstring(text[1:-1], count=len(text[1:-1].split(",")), sep=",")
    assert probabilities.shape == (3,)
    assert abs(probabilities.sum() - 1) < 1e-4 and (probabilities >= 0).all()


def test_http_detection_answers_the_connector_format(running_lis) -> None:
    response = _post(running_lis.endpoint, "objectDetection", _jpeg(640, 480))
    assert response.status_code == 200, response.text
    prediction = eval(response.text)["prediction"]  # noqa: S307 - as the seed example does
    assert prediction == response.json()["prediction"]
    assert prediction, "the test SSD is built to emit some rows"
    scores = [row[1] for row in prediction]
    assert scores == sorted(scores, reverse=True)
    for class_id, score, *box in prediction:
        assert isinstance(class_id, int) and class_id >= 0
        assert all(0.0 <= v <= 1.0 for v in box) and box[0] <= box[2] and box[1] <= box[3]


def test_seed_usage_examples_run_unchanged(http_endpoint: str, tmp_path: Path) -> None:
    image = tmp_path / "test.jpg"
    image.write_bytes(_jpeg())
    # The classification seed example's body, as published (file read + parsing).
    with open(image, "rb") as f:
        content = f.read()
    client = ml.client("inference")
    resp = client.invoke_inference_service(
        AlgoType="image-classification", ServiceName="imageClassification",
        ContentType="image/jpeg", Body=content)
    predictions = resp["Body"].read()
    predictions = predictions[1:-1]
    count = len(predictions.split(b","))
    predictions_arr = np.fromstring(predictions, count=count, sep=",")
    assert predictions_arr.shape == (3,)
    # The detection seed example's body (bytearray input, eval of the decoded text).
    with open(image, "rb") as f:
        content = bytearray(f.read())
    resp = client.invoke_inference_service(
        AlgoType="object-detection", ServiceName="objectDetection",
        ContentType="image/jpeg", Body=content)
    predictions_str = resp["Body"].read().decode("utf-8")
    predictions = eval(predictions_str)  # noqa: S307
    assert isinstance(predictions["prediction"], list)
    assert resp["ContentType"].startswith("application/json")


def test_client_over_a_handle_inside_the_cluster(running_lis, monkeypatch) -> None:
    import ray

    assert ray.is_initialized()
    monkeypatch.delenv("LIS_TRANSPORT", raising=False)
    monkeypatch.setenv("LIS_ENDPOINT", "http://127.0.0.1:9")  # would fail if HTTP were used
    over_handle = ml.client("inference").invoke_inference_service(
        AlgoType="image-classification", ServiceName="imageClassification",
        ContentType="image/jpeg", Body=_jpeg())["Body"].read().decode()
    over_http = _post(running_lis.endpoint, "imageClassification", _jpeg()).text
    assert over_handle == over_http
    with pytest.raises(ml.GreengrassDependencyException):
        ml.client("inference").invoke_inference_service(
            AlgoType="image-classification", ServiceName="noSuchService", Body=_jpeg())
    with pytest.raises(ml.GreengrassInferenceException, match="invalid image"):
        ml.client("inference").invoke_inference_service(
            AlgoType="object-detection", ServiceName="objectDetection",
            ContentType="image/jpeg", Body=b"not an image")


def test_http_and_in_cluster_python_calls_take_the_local_socket(running_lis,
                                                                monkeypatch) -> None:
    # One box: every replica shares the ingress's node (serve_app/_local.py), and
    # this test's process is a Ray driver on it (serve_app/_same_node.py).
    before = local_requests("imageClassification")
    over_http = _post(running_lis.endpoint, "imageClassification", _jpeg())
    assert over_http.status_code == 200
    assert local_requests("imageClassification") == before + 1
    monkeypatch.delenv("LIS_TRANSPORT", raising=False)
    in_cluster = ml.client("inference").invoke_inference_service(
        AlgoType="image-classification", ServiceName="imageClassification",
        ContentType="image/jpeg", Body=_jpeg())["Body"].read().decode()
    assert in_cluster == over_http.text
    assert local_requests("imageClassification") == before + 2


SEED_EXAMPLES = Path(__file__).parent / "seed_examples"
# Only makes the examples' logging.info lines visible; the examples themselves are verbatim.
LOGGING_ON = "import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout)\n"


def _run_seed_example(name: str, image: Path, endpoint: str, seconds: float,
                      fix: tuple[str, str] | None = None) -> str:
    """Run a seed page's Lambda code (it re-schedules itself forever) for a few seconds."""
    source = (SEED_EXAMPLES / name).read_text().replace("/test_img/test.jpg", str(image))
    if fix:
        assert fix[0] in source
        source = source.replace(*fix)
    env = {**os.environ, "LIS_ENDPOINT": endpoint, "LIS_TRANSPORT": "http"}
    process = subprocess.Popen([sys.executable, "-c", LOGGING_ON + source], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        return process.communicate(timeout=seconds)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()[0]


def test_seed_pages_usage_examples_run_against_lis(running_lis, tmp_path: Path) -> None:
    image = tmp_path / "test.jpg"
    image.write_bytes(_jpeg())
    # Image classification: verbatim; it infers once a second until stopped.
    out = _run_seed_example("image_classification.py", image, running_lis.endpoint, 4)
    assert out.count("predictions: b'[") >= 2, out
    assert "exception" not in out, out
    # Object detection, verbatim: the published code reads `predictions_str` before
    # assigning it, so after a successful call it stops on that NameError ...
    out = _run_seed_example("object_detection.py", image, running_lis.endpoint, 30)
    assert "resp: {'Body': <" in out and "NameError: name 'predictions_str'" in out, out
    # ... and with that one name fixed it runs as intended.
    out = _run_seed_example("object_detection.py", image, running_lis.endpoint, 4,
                            fix=("predictions = resp['Body']", "predictions_str = resp['Body']"))
    assert 'predictions: {"prediction": [[' in out and "Error" not in out, out


# --- routing errors ---------------------------------------------------------------


def test_unknown_service_is_404_and_a_dependency_exception(http_endpoint: str) -> None:
    response = _post(http_endpoint, "noSuchService", _jpeg())
    assert response.status_code == 404
    assert _error(response)["type"] == "ServiceNotFound"
    assert "noSuchService" in _error(response)["message"]
    with pytest.raises(ml.GreengrassDependencyException, match="noSuchService"):
        ml.client("inference").invoke_inference_service(
            AlgoType="image-classification", ServiceName="noSuchService",
            ContentType="image/jpeg", Body=_jpeg())


def test_algorithm_mismatch_is_409_and_a_dependency_exception(http_endpoint: str) -> None:
    response = _post(http_endpoint, "imageClassification", _jpeg(),
                     **{"X-Algo-Type": "object-detection"})
    assert response.status_code == 409
    assert "object-detection" in _error(response)["message"]
    with pytest.raises(ml.GreengrassDependencyException, match="image-classification"):
        ml.client("inference").invoke_inference_service(
            AlgoType="object-detection", ServiceName="imageClassification",
            ContentType="image/jpeg", Body=_jpeg())


def _metric(endpoint: str, series: str) -> float:
    """The value of ``series`` (``name{label="value"}``) in ``/metrics`` (0 if absent)."""
    response = requests.get(f"{endpoint}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return sample_value(response.text, series)


def test_metrics_count_each_answer_by_service_and_status(http_endpoint: str) -> None:
    ok = 'lis_requests_total{service="imageClassification",code="200"}'
    mismatch = 'lis_requests_total{service="imageClassification",code="409"}'
    unknown = 'lis_requests_total{service="(unknown)",code="404"}'
    latencies = 'lis_request_duration_seconds_count{service="imageClassification"}'
    slowest = 'lis_request_duration_seconds_bucket{service="imageClassification",le="+Inf"}'
    before = {name: _metric(http_endpoint, name) for name in (ok, mismatch, unknown, latencies)}
    for _ in range(3):
        assert _post(http_endpoint, "imageClassification", _jpeg()).status_code == 200
    assert _post(http_endpoint, "imageClassification", _jpeg(),
                 **{"X-Algo-Type": "object-detection"}).status_code == 409
    assert _post(http_endpoint, "madeUpName", _jpeg()).status_code == 404
    after = {name: _metric(http_endpoint, name) for name in before}
    assert after[ok] - before[ok] == 3
    assert after[mismatch] - before[mismatch] == 1
    assert after[unknown] - before[unknown] == 1  # a made-up name gets no label of its own
    assert after[latencies] - before[latencies] == 4
    assert _metric(http_endpoint, slowest) == after[latencies]
    assert _metric(http_endpoint, 'lis_requests_total{service="madeUpName",code="404"}') == 0
    assert _metric(http_endpoint, 'lis_requests_in_flight{service="imageClassification"}') == 0


def test_metrics_time_the_replica_steps_of_each_answer(http_endpoint: str) -> None:
    steps = {stage: (f'lis_replica_stage_seconds_count{{service="imageClassification",'
                     f'stage="{stage}"}}', f'lis_replica_stage_seconds_sum{{service='
                     f'"imageClassification",stage="{stage}"}}')
             for stage in ("prepare", "wait", "model")}
    whole = 'lis_request_duration_seconds_sum{service="imageClassification"}'
    before = {line: _metric(http_endpoint, line)
              for pair in steps.values() for line in pair} | {whole: _metric(http_endpoint, whole)}
    for _ in range(2):
        assert _post(http_endpoint, "imageClassification", _jpeg()).status_code == 200
    # An error answer has no replica steps to report.
    assert _post(http_endpoint, "imageClassification", b"not an image").status_code == 400
    after = {line: _metric(http_endpoint, line) for line in before}
    spent = {stage: after[total] - before[total] for stage, (_, total) in steps.items()}
    assert {stage: after[count] - before[count] for stage, (count, _) in steps.items()} == \
        dict.fromkeys(steps, 2)
    assert spent["prepare"] > 0 and spent["model"] > 0
    # The replica's steps are part of each request's whole time at the ingress.
    assert sum(spent.values()) < after[whole] - before[whole]


# --- bad input never hurts the service ---------------------------------------------

_JPEG = _jpeg()
_RGB = np.full((60, 80, 3), 90, np.uint8)
BAD_INPUTS = {
    "empty body": (b"", "image/jpeg", 400, "empty"),
    "random bytes": (np.random.default_rng(1).bytes(4096), "image/jpeg", 400, "neither"),
    "truncated JPEG": (_JPEG[: len(_JPEG) // 3], "image/jpeg", 400, "truncated"),
    "GIF": (_pil(Image.new("RGB", (16, 16)), "GIF"), "image/gif", 415, "image/gif"),
    "BMP": (cv2.imencode(".bmp", _RGB)[1].tobytes(), "image/png", 415, "BMP"),
    "WebP": (cv2.imencode(".webp", _RGB)[1].tobytes(), "image/jpeg", 415, "WebP"),
    "30000x30000 PNG header": (_huge_png_header(), "image/png", 413, "30000x30000"),
    "body over the size limit": (b"\xff\xd8\xff" + b"\0" * 2_100_000, "image/jpeg", 413,
                                 "2000000"),
}
GOOD_ODD_INPUTS = {
    "16-bit PNG": (_png(np.full((40, 40, 3), 50000, np.uint16)), "image/png"),
    "alpha PNG": (_png(np.zeros((40, 40, 4), np.uint8)), "image/png"),
    "grayscale PNG": (_png(np.full((40, 40), 128, np.uint8)), "image/png"),
    "CMYK JPEG": (_pil(Image.new("RGB", (40, 40), (10, 200, 30)).convert("CMYK"), "JPEG"),
                  "image/jpeg"),
    # The seed pages' code always says image/jpeg: the other supported format is read as itself.
    "PNG labelled as JPEG": (_png(_RGB), "image/jpeg"),
}


# Only imageClassification is configured with a 2 MB body limit.
BAD_INPUT_CASES = [(service, case) for service in ("imageClassification", "objectDetection")
                   for case in BAD_INPUTS
                   if not (case == "body over the size limit" and service == "objectDetection")]


@pytest.mark.parametrize("service,case", BAD_INPUT_CASES)
def test_bad_input_gets_its_status_then_a_valid_request_succeeds(
        running_lis, service: str, case: str) -> None:
    body, content_type, status, reason = BAD_INPUTS[case]
    response = _post(running_lis.endpoint, service, body, content_type)
    assert response.status_code == status, response.text
    assert reason in _error(response)["message"]
    assert _post(running_lis.endpoint, service, _jpeg()).status_code == 200


@pytest.mark.parametrize("case", GOOD_ODD_INPUTS)
def test_unusual_but_valid_images_are_converted(running_lis, case: str) -> None:
    body, content_type = GOOD_ODD_INPUTS[case]
    assert _post(running_lis.endpoint, "objectDetection", body, content_type).status_code == 200


# --- listing and health --------------------------------------------------------------


def test_services_health_and_readiness(running_lis) -> None:
    assert requests.get(f"{running_lis.endpoint}/healthz", timeout=10).json() == \
        {"status": "ok"}
    ready = requests.get(f"{running_lis.endpoint}/readyz", timeout=30)
    assert ready.status_code == 200, ready.text
    services = {s["name"]: s for s in
                requests.get(f"{running_lis.endpoint}/services", timeout=30).json()["services"]}
    assert set(services) == {"imageClassification", "objectDetection", "slowClassifier",
                             "hungryClassifier", "busyClassifier", "scalingClassifier",
                             "feedbackClassifier"}
    detector = services["objectDetection"]
    assert detector["algorithm"] == "object-detection"
    assert detector["connector_arn"].endswith("/ObjectDetectionx86-64/versions/1")
    assert detector["platform"] == "x86-64"  # the connector's, not what runs the model
    assert detector["runtime"] == "dlr" and services["imageClassification"]["runtime"] == "mxnet"
    assert detector["input_shape"] == [1, 3, 512, 512]
    assert detector["state"] == "RUNNING" and detector["replicas"]["RUNNING"] == 1
    assert len(detector["version"]) == 12


# --- timeouts and memory limits ------------------------------------------------------


def test_timeout_is_504_and_the_service_keeps_serving(http_endpoint: str) -> None:
    response = _post(http_endpoint, "slowClassifier", _jpeg())
    assert response.status_code == 504, response.text
    assert _error(response)["type"] == "InferenceTimeout"
    assert "1 s" in _error(response)["message"]
    with pytest.raises(ml.GreengrassInferenceException, match="did not answer"):
        ml.client("inference").invoke_inference_service(
            AlgoType="image-classification", ServiceName="slowClassifier",
            ContentType="image/jpeg", Body=_jpeg())
    assert _post(http_endpoint, "imageClassification", _jpeg()).status_code == 200
    services = requests.get(f"{http_endpoint}/services", timeout=30).json()["services"]
    assert {s["name"]: s["state"] for s in services}["slowClassifier"] == "RUNNING"


def _replica_of(service: str) -> str:
    from ray import serve

    handle = serve.get_deployment_handle(service, app_name="lis")
    return handle.describe.remote().result(timeout_s=30)["replica"]


def test_memory_limit_replaces_the_replica_and_spares_the_others(http_endpoint: str) -> None:
    before = _replica_of("hungryClassifier")
    response = _post(http_endpoint, "hungryClassifier", _jpeg())
    assert response.status_code == 500
    error = _error(response)
    assert error["type"] == "MemoryLimitExceeded"
    assert "LocalInferenceServiceMemoryLimitKB 1000 KB" in error["message"]
    assert _post(http_endpoint, "imageClassification", _jpeg()).status_code == 200
    # No replica answers while it is being replaced: a failed ask means "not yet".
    wait_until(lambda: _replica_of("hungryClassifier") != before, timeout_s=90, interval_s=1,
               retry_on=(Exception,), message="the replica over its memory limit replaced")
    assert _post(http_endpoint, "objectDetection", _jpeg()).status_code == 200


def test_overload_is_503_and_the_accepted_requests_complete(http_endpoint: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda _: _post(http_endpoint, "busyClassifier", _jpeg()),
                                  range(12)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 503}, statuses
    refused = [r for r in responses if r.status_code == 503]
    assert all(_error(r)["type"] == "ServiceUnavailable" and "overloaded" in
               _error(r)["message"] for r in refused)
    # The SDK's calls leave 12 Python threads of this process one at a time, so
    # they arrive spread out; twice as many keep the replica's 5 slots and the
    # 1 queue place full (12 were once all answered, in a full-suite run).
    with pytest.raises(ml.GreengrassDependencyException, match="overloaded"):
        with ThreadPoolExecutor(24) as pool:
            list(pool.map(lambda _: ml.client("inference").invoke_inference_service(
                AlgoType="image-classification", ServiceName="busyClassifier",
                ContentType="image/jpeg", Body=_jpeg()), range(24)))
    assert _post(http_endpoint, "busyClassifier", _jpeg()).status_code == 200


def _running_replicas(endpoint: str, service: str) -> int:
    listing = requests.get(f"{endpoint}/services", timeout=30).json()["services"]
    return {s["name"]: s for s in listing}[service]["replicas"].get("RUNNING", 0)


def _wait_for_replicas(endpoint: str, service: str, count: int, timeout_s: float,
                       why: str) -> None:
    wait_until(lambda: _running_replicas(endpoint, service) == count, timeout_s=timeout_s,
               interval_s=1, message=f"{count} running replica(s) of {service}: {why}")


def test_local_requests_scale_a_service_up_and_idleness_down(http_endpoint: str) -> None:
    # On one box every HTTP request takes the local path, which Ray Serve's own
    # request counts never see: the replicas report them for the autoscaler.
    import threading

    assert _running_replicas(http_endpoint, "scalingClassifier") == 1
    stop = threading.Event()
    answers: list[int] = []

    def keep_busy() -> None:
        while not stop.is_set():
            answers.append(_post(http_endpoint, "scalingClassifier", _jpeg()).status_code)

    callers = [threading.Thread(target=keep_busy, daemon=True) for _ in range(4)]
    for caller in callers:
        caller.start()
    try:
        # Ray Serve's replicas push their load every 10 s; a replica starts in seconds.
        _wait_for_replicas(http_endpoint, "scalingClassifier", 2, 120,
                           "4 callers at a target of 1 request per replica add one")
    finally:
        stop.set()
        for caller in callers:
            caller.join(60)
    assert set(answers) == {200}
    # Idle: the load averaged over Ray's 30 s look-back falls, then 5 s of delay.
    _wait_for_replicas(http_endpoint, "scalingClassifier", 1, 150,
                       "the idle service gives its second one back")
    assert _post(http_endpoint, "scalingClassifier", _jpeg()).status_code == 200


def test_cli_status_and_invoke_with_drawing(http_endpoint: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from serve_app.cli import main

    assert main(["status", "--endpoint", http_endpoint]) == 0
    listing = capsys.readouterr().out
    assert "objectDetection" in listing and "RUNNING" in listing

    image = tmp_path / "frame.jpg"
    image.write_bytes(_jpeg(640, 480))
    drawn = tmp_path / "drawn.png"
    assert main(["invoke", "objectDetection", str(image), "--endpoint", http_endpoint,
                 "--draw", str(drawn)]) == 0
    printed = capsys.readouterr().out
    assert eval(printed.splitlines()[0])["prediction"]  # noqa: S307
    original = cv2.imdecode(np.frombuffer(image.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    picture = cv2.imread(str(drawn))
    assert picture.shape == original.shape
    assert np.abs(picture.astype(int) - original.astype(int)).max() > 100  # boxes drawn

    assert main(["invoke", "imageClassification", str(image), "--endpoint", http_endpoint]) == 0
    assert capsys.readouterr().out.startswith("[")
