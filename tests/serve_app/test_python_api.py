"""lis from Python on a real Ray Serve: the awaitable SDK call and the typed API.

A user's async deployment and a sync one, deployed beside lis as an application
of their own, call lis through the drop-in SDK (sync and async forms) and the
typed API (``ObjectDetector``, ``ImageClassifier``), and get what HTTP answers;
so do a driver, a Ray task and an actor. Errors map as the docs say.
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _composer
import cv2
import numpy as np
import pytest
import requests
from _composer import COMPOSER_APP, Raised, SdkAnswer
from _replicas import local_requests, replica_view
from waiting import wait_until

import greengrass_machine_learning_sdk as ml
from greengrass_machine_learning_sdk.feedback import GreengrassFeedbackException
from serve_app.client import (
    Classification,
    Detections,
    ImageClassifier,
    ObjectDetector,
)
from vocabulary.errors import (
    AlgorithmMismatch,
    InvalidArgument,
    InvalidImage,
    ServiceNotFound,
)

pytestmark = pytest.mark.slow

DETECTION = ("object-detection", "objectDetection")
CLASSIFICATION = ("image-classification", "imageClassification")


def _jpeg(width: int = 320, height: int = 240, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    cv2.circle(image, (width // 2, height // 2), min(width, height) // 4, (0, 0, 255), -1)
    return cv2.imencode(".jpg", image)[1].tobytes()


FRAME = _jpeg(640, 480, seed=3)


def _over_http(endpoint: str, service: str, body: bytes = FRAME) -> requests.Response:
    response = requests.post(f"{endpoint}/inference/{service}", data=body,
                             headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert response.status_code == 200, response.text
    return response


def _labels(endpoint: str, service: str) -> list[str]:
    listing = requests.get(f"{endpoint}/services", timeout=30).json()["services"]
    return next(s["labels"] for s in listing if s["name"] == service)


@pytest.fixture
def handle_transport(running_lis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIS_TRANSPORT", raising=False)
    monkeypatch.setenv("LIS_ENDPOINT", "http://127.0.0.1:9")  # would fail if HTTP were used


@pytest.fixture(params=["handle", "http"])
def transport(request: pytest.FixtureRequest, running_lis, monkeypatch: pytest.MonkeyPatch
              ) -> str:
    """Each test runs over both of the SDK's transports."""
    if request.param == "handle":
        request.getfixturevalue("handle_transport")
    else:
        request.getfixturevalue("http_endpoint")
    return request.param


@pytest.fixture(scope="module")
def watchers(running_lis) -> Iterator[dict[str, Any]]:
    """The user's two deployments, running beside lis as the application ``composer``."""
    import ray.cloudpickle
    from ray import serve

    ray.cloudpickle.register_pickle_by_value(_composer)
    serve.run(_composer.AsyncWatcher.bind(), name=COMPOSER_APP, route_prefix=None)
    async_handle = serve.get_deployment_handle("AsyncWatcher", app_name=COMPOSER_APP)
    serve.run(_composer.SyncWatcher.bind(), name=COMPOSER_APP + "-sync", route_prefix=None)
    sync_handle = serve.get_deployment_handle("SyncWatcher", app_name=COMPOSER_APP + "-sync")
    try:
        yield {"async": async_handle, "sync": sync_handle}
    finally:
        serve.delete(COMPOSER_APP)
        serve.delete(COMPOSER_APP + "-sync")


def _ask(watchers: dict[str, Any], deployment: str, way: str, algo_type: str, service: str,
         image: bytes = FRAME) -> Any:
    return watchers[deployment].call.remote(way, algo_type, service, image).result(
        timeout_s=120)


# --- the drop-in SDK's awaitable form, from a driver -----------------------------------


def test_awaited_sdk_call_answers_what_http_does(running_lis, transport: str) -> None:
    response = asyncio.run(ml.client("inference").invoke_inference_service_async(
        AlgoType=DETECTION[0], ServiceName=DETECTION[1], ContentType="image/jpeg",
        Body=bytearray(FRAME)))
    over_http = _over_http(running_lis.endpoint, DETECTION[1])
    assert response["Body"].read() == over_http.content
    assert response["ContentType"] == over_http.headers["content-type"]


@pytest.mark.parametrize("missing", ["AlgoType", "ServiceName", "Body"])
def test_awaited_sdk_call_checks_its_arguments_as_the_sync_one(missing: str) -> None:
    kwargs = {"AlgoType": DETECTION[0], "ServiceName": DETECTION[1], "Body": FRAME}
    del kwargs[missing]
    call = ml.client("inference").invoke_inference_service_async(**kwargs)
    with pytest.raises(ValueError, match=missing):
        asyncio.run(call)


def test_awaited_sdk_errors_are_the_sdk_exceptions(running_lis, transport: str) -> None:
    client = ml.client("inference")
    with pytest.raises(ml.GreengrassDependencyException, match="noSuchService"):
        asyncio.run(client.invoke_inference_service_async(
            AlgoType=DETECTION[0], ServiceName="noSuchService", Body=FRAME))
    with pytest.raises(ml.GreengrassDependencyException, match="runs 'object-detection'"):
        asyncio.run(client.invoke_inference_service_async(
            AlgoType=CLASSIFICATION[0], ServiceName=DETECTION[1], Body=FRAME))
    with pytest.raises(ml.GreengrassInferenceException, match="invalid image"):
        asyncio.run(client.invoke_inference_service_async(
            AlgoType=DETECTION[0], ServiceName=DETECTION[1], ContentType="image/jpeg",
            Body=b"not an image"))


def test_sync_sdk_call_on_a_running_loop_works(running_lis, transport: str) -> None:
    # Ray Serve refuses a blocking handle call on a loop; the SDK makes it off the loop.
    async def lambda_code_in_a_coroutine() -> bytes:
        return ml.client("inference").invoke_inference_service(
            AlgoType=CLASSIFICATION[0], ServiceName=CLASSIFICATION[1],
            ContentType="image/jpeg", Body=FRAME)["Body"].read()

    assert asyncio.run(lambda_code_in_a_coroutine()) == \
        _over_http(running_lis.endpoint, CLASSIFICATION[1]).content


def test_sync_feedback_publish_on_a_running_loop_gets_the_feedback_error(
        running_lis, handle_transport: None) -> None:
    async def lambda_code_in_a_coroutine() -> None:
        ml.client("feedback").publish(ConfigId="no-such-config", ModelInput=FRAME,
                                      ModelPrediction=[1.0])

    with pytest.raises(GreengrassFeedbackException, match="no-such-config"):
        asyncio.run(lambda_code_in_a_coroutine())


# --- the typed API, from a driver -------------------------------------------------------


def test_typed_detector_parses_the_connector_answer(running_lis, transport: str) -> None:
    found = ObjectDetector(DETECTION[1]).infer(FRAME, "image/jpeg")
    over_http = _over_http(running_lis.endpoint, DETECTION[1])
    assert isinstance(found, Detections)
    assert found.raw == over_http.content
    rows = over_http.json()["prediction"]
    assert rows, "the test SSD is built to emit some rows"
    labels = _labels(running_lis.endpoint, DETECTION[1])
    assert [[o.class_id, o.score, *o.box] for o in found.objects] == rows
    assert [o.label for o in found.objects] == [labels[row[0]] for row in rows]


def test_typed_classifier_parses_the_connector_answer(running_lis, transport: str) -> None:
    found = asyncio.run(ImageClassifier(CLASSIFICATION[1]).infer_async(FRAME, "image/jpeg"))
    over_http = _over_http(running_lis.endpoint, CLASSIFICATION[1])
    assert isinstance(found, Classification)
    assert found.raw == over_http.content
    probabilities = [c.probability for c in found.classes]
    assert probabilities == over_http.json()
    assert [c.label for c in found.classes] == ["class0", "class1", "class2"]
    assert found.top.probability == max(probabilities)


def test_typed_errors_come_from_the_one_tree(running_lis, transport: str) -> None:
    with pytest.raises(ServiceNotFound, match="noSuchService"):
        ObjectDetector("noSuchService").infer(FRAME, "image/jpeg")
    with pytest.raises(AlgorithmMismatch, match="runs 'image-classification'"):
        asyncio.run(ObjectDetector(CLASSIFICATION[1]).infer_async(FRAME, "image/jpeg"))
    with pytest.raises(InvalidImage):
        ImageClassifier(CLASSIFICATION[1]).infer(b"not an image", "image/jpeg")


def test_typed_arguments_are_checked_before_any_call() -> None:
    with pytest.raises(InvalidArgument, match="service name 'has space'"):
        ObjectDetector("has space")
    with pytest.raises(InvalidArgument, match="image 'str'"):
        ObjectDetector(DETECTION[1]).infer("frame.jpg", "image/jpeg")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="content_type None"):
        ObjectDetector(DETECTION[1]).infer(FRAME, None)  # type: ignore[arg-type]


def test_typed_service_works_in_a_task_and_an_actor(running_lis, handle_transport: None
                                                    ) -> None:
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(_composer)
    detector = ObjectDetector(DETECTION[1])
    expected = _over_http(running_lis.endpoint, DETECTION[1]).content
    assert ray.get(_composer.detect_in_a_task.remote(detector, FRAME), timeout=120).raw == \
        expected
    actor = _composer.DetectingActor.remote()
    try:
        assert ray.get(actor.detect.remote(detector, FRAME), timeout=120).raw == expected
    finally:
        ray.kill(actor)


# --- a user's own deployments calling lis ----------------------------------------------


@pytest.mark.parametrize("deployment,way", [
    ("async", "sdk"), ("async", "typed"), ("async", "sdk-sync"), ("async", "typed-sync"),
    ("sync", "sdk"), ("sync", "typed"),
])
@pytest.mark.parametrize("algo_type,service", [DETECTION, CLASSIFICATION])
def test_a_user_deployment_gets_what_http_answers(running_lis, watchers: dict[str, Any],
                                                  deployment: str, way: str, algo_type: str,
                                                  service: str) -> None:
    answer = _ask(watchers, deployment, way, algo_type, service)
    over_http = _over_http(running_lis.endpoint, service)
    if way.startswith("sdk"):
        assert answer == SdkAnswer(over_http.content, over_http.headers["content-type"])
    else:
        assert isinstance(answer, Detections if algo_type == DETECTION[0] else Classification)
        assert answer.raw == over_http.content


@pytest.mark.parametrize("deployment,way", [
    ("async", "sdk"), ("async", "sdk-sync"), ("sync", "sdk"),
])
def test_a_user_deployment_gets_the_sdk_exceptions(watchers: dict[str, Any], deployment: str,
                                                   way: str) -> None:
    unknown = _ask(watchers, deployment, way, DETECTION[0], "noSuchService")
    assert unknown == Raised("GreengrassDependencyException",
                             "no inference service named 'noSuchService'")
    wrong_algo = _ask(watchers, deployment, way, CLASSIFICATION[0], DETECTION[1])
    assert isinstance(wrong_algo, Raised)
    assert wrong_algo.type_name == "GreengrassDependencyException"
    assert "runs 'object-detection', not the requested AlgoType 'image-classification'" in \
        wrong_algo.message
    bad_image = _ask(watchers, deployment, way, DETECTION[0], DETECTION[1], b"not an image")
    assert isinstance(bad_image, Raised)
    assert bad_image.type_name == "GreengrassInferenceException"
    assert "invalid image" in bad_image.message


@pytest.mark.parametrize("deployment,way", [
    ("async", "typed"), ("async", "typed-sync"), ("sync", "typed"),
])
def test_a_user_deployment_gets_errors_of_the_one_tree(watchers: dict[str, Any],
                                                       deployment: str, way: str) -> None:
    unknown = _ask(watchers, deployment, way, DETECTION[0], "noSuchService")
    assert unknown == Raised("ServiceNotFound", "no inference service named 'noSuchService'")
    wrong_algo = _ask(watchers, deployment, way, CLASSIFICATION[0], DETECTION[1])
    assert isinstance(wrong_algo, Raised) and wrong_algo.type_name == "AlgorithmMismatch"


# --- which road a call takes: the replica's socket on its node, else the handle ----------


def _http_requests_counted(endpoint: str, service: str) -> float:
    """What the ingress's /metrics counts for ``service``: the requests that passed it."""
    text = requests.get(f"{endpoint}/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("lis_requests_total{") and f'service="{service}"' in line)


def _sdk_call(service: str = CLASSIFICATION[1], algo_type: str = CLASSIFICATION[0],
              image: bytes = FRAME) -> bytes:
    return ml.client("inference").invoke_inference_service(
        AlgoType=algo_type, ServiceName=service, ContentType="image/jpeg",
        Body=image)["Body"].read()


def test_python_calls_on_the_replicas_node_take_its_socket(running_lis, handle_transport: None,
                                                           watchers: dict[str, Any]) -> None:
    # The replica counts what came over its socket; /metrics counts what passed
    # the ingress: a call that took the socket moves the first, not the second.
    service = CLASSIFICATION[1]
    expected = _over_http(running_lis.endpoint, service).content
    counted, local = _http_requests_counted(running_lis.endpoint, service), \
        local_requests(service)
    assert _sdk_call() == expected  # a driver, sync
    assert asyncio.run(ml.client("inference").invoke_inference_service_async(
        AlgoType=CLASSIFICATION[0], ServiceName=service, ContentType="image/jpeg",
        Body=FRAME))["Body"].read() == expected  # a driver, awaited
    assert ImageClassifier(service).infer(FRAME, "image/jpeg").raw == expected
    for deployment, way in (("async", "sdk"), ("async", "typed-sync"), ("sync", "typed")):
        answer = _ask(watchers, deployment, way, *CLASSIFICATION)
        assert (answer.body if way == "sdk" else answer.raw) == expected, answer
    assert local_requests(service) == local + 6
    assert _http_requests_counted(running_lis.endpoint, service) == counted


def test_awaited_calls_on_two_event_loops_each_take_the_socket(running_lis,
                                                               handle_transport: None) -> None:
    # Each loop has its own route to the replica (a route's queue and
    # connections belong to one loop): two loops in two threads, calling at once.
    import threading

    service = CLASSIFICATION[1]
    expected = _over_http(running_lis.endpoint, service).content
    before = local_requests(service)
    client = ml.client("inference")

    async def three() -> list[bytes]:
        answers = await asyncio.gather(*(client.invoke_inference_service_async(
            AlgoType=CLASSIFICATION[0], ServiceName=service, ContentType="image/jpeg",
            Body=FRAME) for _ in range(3)))
        return [answer["Body"].read() for answer in answers]

    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.extend(asyncio.run(three())))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results == [expected] * 6
    assert local_requests(service) == before + 6
    assert asyncio.run(three()) == [expected] * 3  # a new loop after those closed
    assert local_requests(service) == before + 9


def _sockets_of(service: str) -> list[Path]:
    from deployments.local_socket import current_node_id, service_sockets

    return service_sockets(current_node_id(), service)


def test_a_python_call_takes_the_handle_when_the_socket_is_gone(running_lis,
                                                                handle_transport: None) -> None:
    service, algo_type = DETECTION[1], DETECTION[0]
    expected = _over_http(running_lis.endpoint, service).content
    assert _sdk_call(service, algo_type) == expected
    sockets = _sockets_of(service)
    assert sockets, "the replica serves no local socket"
    # Moved out of sight, not closed: the replica listens on, and nothing finds it.
    away = [path.with_name(path.name + ".away") for path in sockets]
    for path, moved in zip(sockets, away, strict=True):
        path.rename(moved)
    try:
        def answered_by_the_handle() -> bool:
            before = local_requests(service)
            assert _sdk_call(service, algo_type) == expected
            return local_requests(service) == before

        # The client looks for sockets again within a second, dropping its pooled connection.
        wait_until(answered_by_the_handle, timeout_s=30, interval_s=0.2,
                   message="a call through the Ray Serve handle, its socket gone")
        with pytest.raises(ml.GreengrassInferenceException, match="invalid image"):
            _sdk_call(service, algo_type, b"not an image")  # the handle's errors, the same
    finally:
        for path, moved in zip(sockets, away, strict=True):
            moved.rename(path)

    def answered_over_the_socket() -> bool:
        before = local_requests(service)
        assert _sdk_call(service, algo_type) == expected
        return local_requests(service) == before + 1

    wait_until(answered_over_the_socket, timeout_s=30, interval_s=0.2,
               message="the socket back in use once it is there again")


def test_the_replicas_limit_holds_for_the_ingress_and_a_python_caller_together(
        running_lis, handle_transport: None) -> None:
    # Each caller keeps up to 5 requests in the replica by its own count; the
    # replica, which sees both, takes 5 at once and answers the rest "busy".
    from concurrent.futures import ThreadPoolExecutor

    service, callers, rounds = CLASSIFICATION[1], 6, 8
    frame = _jpeg(1280, 720, seed=5)  # a slower decode: requests overlap in the replica
    before = replica_view(service)
    expected = _over_http(running_lis.endpoint, service, frame).content

    def over_http(_: int) -> bytes:
        return _over_http(running_lis.endpoint, service, frame).content

    def from_python(_: int) -> bytes:
        return _sdk_call(service, CLASSIFICATION[0], frame)

    with ThreadPoolExecutor(2 * callers) as pool:
        answers = list(pool.map(lambda i: (over_http if i % 2 else from_python)(i),
                                range(2 * callers * rounds)))
    assert set(answers) == {expected}
    after = replica_view(service)
    assert after["local_requests"] - before["local_requests"] == 2 * callers * rounds + 1
    assert after["local_busy"] > before["local_busy"]  # they did compete for its slots
    assert after["most_running"] <= after["limits"]["max_ongoing_requests"] == 5


# --- the docs' example, run as a user would ---------------------------------------------

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "python-api.md"


def _docs_block(first_line: str) -> str:
    """The Python code block of docs/python-api.md that starts with ``first_line``."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    return next(block for block in blocks if block.startswith(first_line))


def _replaced(text: str, *pairs: tuple[str, str]) -> str:
    for old, new in pairs:
        assert old in text, f"the docs' example no longer has {old!r}"
        text = text.replace(old, new)
    return text


def test_the_docs_composition_example_runs_beside_lis(running_lis, tmp_path: Path) -> None:
    import ray
    from ray import serve

    frame = tmp_path / "latest.jpg"
    frame.write_bytes(FRAME)
    rows = _over_http(running_lis.endpoint, DETECTION[1]).json()["prediction"]
    label = _labels(running_lis.endpoint, DETECTION[1])[rows[0][0]]
    # Only where the example's camera, class and Ray are: the test's frame, a class
    # the random-weight SSD finds in it, and the test's Ray.
    (tmp_path / "door_watcher.py").write_text(_replaced(
        _docs_block("# door_watcher.py"), ("/var/lib/camera/latest.jpg", str(frame)),
        ("'person'", repr(label)), ("min_score=0.6", "min_score=0.0")))
    # The test's Ray listens on loopback, as `lis up`'s does on one box.
    gcs_port = ray.get_runtime_context().gcs_address.rsplit(":", 1)[1]
    (tmp_path / "run_watcher.py").write_text(_replaced(
        _docs_block("# run_watcher.py"), ("address='auto'", f"address='127.0.0.1:{gcs_port}'")))
    # The docs' command line: Ray's token (this process has the test Ray's), loopback only.
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "PYTHONPATH": os.pathsep.join([".", str(REPO)])}
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"]
    try:
        done = subprocess.run([sys.executable, "run_watcher.py"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300, check=False)
    except subprocess.TimeoutExpired as stuck:
        pytest.fail(f"run_watcher.py did not end: {(stuck.stderr or b'')[-3000:]!r}")
    finally:
        if "door" in serve.status().applications:
            serve.delete("door")
    assert done.returncode == 0, done.stderr[-3000:]
    expected = [tuple(row[2:]) for row in rows if row[0] == rows[0][0]]
    assert ast.literal_eval(done.stdout.strip().splitlines()[-1]) == expected
