"""The HTTP ingress in-process: Starlette's test client in front of a fake router.

What a caller sees of the ingress itself (statuses and error bodies, the
bearer token, ``/metrics``) without a ``lis up`` subprocess or Ray; the end
to end versions live in ``test_ingress_auth.py`` and ``test_service_e2e.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import pytest
from starlette.testclient import TestClient

from serve_app._local import Gone
from serve_app.ingress import ServiceInfo, build_http_app
from vocabulary.errors import LisError, ServiceUnavailable
from vocabulary.limits import MAX_FEEDBACK_BODY_BYTES
from vocabulary.wire import InferenceResult

TOKEN = "correct-horse-battery-staple"
MAX_BODY = 64
ANSWER = InferenceResult("[0.25,0.75]", "application/json",
                         (("prepare", 0.002), ("wait", 0.0), ("model", 0.01)))
CLASSIFIER = ServiceInfo(
    name="cls", algorithm="image-classification", connector_id="ImageClassifier",
    connector_arn="arn:aws:greengrass:us-west-2::/connectors/ImageClassificationx86-64/versions/2",
    platform="x86-64", timeout_s=10.0, max_request_bytes=MAX_BODY, feedback_config_id="every")
DETECTOR = ServiceInfo(
    name="det", algorithm="object-detection", connector_id="ObjectDetector",
    connector_arn="arn:aws:greengrass:us-west-2::/connectors/ObjectDetectionx86-64/versions/1",
    platform="x86-64", timeout_s=5.0, max_request_bytes=MAX_BODY)
# Where errors of the tree are defined: the vocabulary, and the feedback spool's own.
ERROR_MODULES = ("vocabulary.errors", "deployments.feedback.spool")


@dataclass
class Call:
    service: str
    body: bytes
    content_type: str | None
    algo_type: str | None
    gone: Gone | None


@dataclass
class FakeRouter:
    """A ``Router`` that answers ``ANSWER``, or raises ``failure`` when one is set."""

    services: dict[str, ServiceInfo] = field(
        default_factory=lambda: {info.name: info for info in (CLASSIFIER, DETECTOR)})
    states: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"cls": {"state": "RUNNING", "replicas": 1},
                                 "det": {"state": "RUNNING", "replicas": 2}})
    failure: BaseException | None = None
    calls: list[Call] = field(default_factory=list)
    feedback: list[tuple[str, bytes, Any, dict[str, str]]] = field(default_factory=list)

    async def infer(self, service: ServiceInfo, body: bytes, content_type: str | None,
                    algo_type: str | None, gone: Gone | None = None) -> InferenceResult:
        self.calls.append(Call(service.name, body, content_type, algo_type, gone))
        if self.failure is not None:
            raise self.failure
        return ANSWER

    async def service_states(self) -> dict[str, dict[str, Any]]:
        return self.states

    async def publish_feedback(self, config_id: str, body: bytes, prediction: Any,
                               metadata: dict[str, str]) -> dict[str, Any]:
        self.feedback.append((config_id, body, prediction, metadata))
        if self.failure is not None:
            raise self.failure
        return {"accepted": True, "key": "e2e/sample.jpg"}


@pytest.fixture
def router() -> FakeRouter:
    return FakeRouter()


@pytest.fixture
def client(router: FakeRouter) -> Iterator[TestClient]:
    # A plain exception's handler answers, then Starlette re-raises it to the
    # server; a test client that re-raised it would hide the answer.
    with TestClient(build_http_app(router), raise_server_exceptions=False) as test_client:
        yield test_client


def _infer(client: TestClient, service: str = "cls", body: bytes = b"frame",
           **headers: str) -> Any:
    return client.post(f"/inference/{service}", content=body,
                       headers={"Content-Type": "image/jpeg", **headers})


def _error(type_name: str, message: str) -> dict[str, Any]:
    return {"error": {"type": type_name, "message": message}}


# --- every error of the tree -----------------------------------------------------------------


def _error_classes() -> list[type[LisError]]:
    found: list[type[LisError]] = []
    pending: list[type[LisError]] = [LisError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending += cls.__subclasses__()
    return sorted({cls for cls in found if cls.__module__ in ERROR_MODULES},
                  key=lambda cls: cls.__name__)


def _instance(cls: type[LisError], message: str) -> LisError:
    # Each class has its own structured constructor; the message is what matters here.
    error = cls.__new__(cls)
    LisError.__init__(error, message)
    return error


def test_the_error_tree_declares_the_documented_statuses() -> None:
    assert {cls.__name__: int(cls.status) for cls in _error_classes()} == {
        "AlgorithmMismatch": 409, "ArtifactError": 500, "ClientClosedRequest": 499,
        "CompileError": 500, "ConfigError": 500, "InferenceFailed": 500,
        "InferenceTimeout": 504, "InvalidArgument": 400, "InvalidImage": 400, "LisError": 500,
        "MemoryLimitExceeded": 500, "MisdirectedRequest": 421, "PayloadTooLarge": 413, "RequestError": 400,
        "ServiceNotFound": 404, "ServiceUnavailable": 503, "SpoolFull": 507,
        "Unauthorized": 401, "UnsafeArchive": 500, "UnsupportedMediaType": 415,
    }


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda cls: cls.__name__)
def test_an_error_from_the_service_answers_its_status_and_body(
        client: TestClient, router: FakeRouter, cls: type[LisError]) -> None:
    router.failure = _instance(cls, f"what went wrong: {cls.__name__}")
    answer = _infer(client)
    assert answer.status_code == int(cls.status)
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == _error(cls.__name__, f"what went wrong: {cls.__name__}")


def test_an_error_built_by_its_constructor_keeps_its_message(client: TestClient,
                                                             router: FakeRouter) -> None:
    router.failure = ServiceUnavailable("cls", "no node has 0.5 CPU free")
    answer = _infer(client)
    assert (answer.status_code, answer.json()) == (503, _error(
        "ServiceUnavailable", "service 'cls' is unavailable: no node has 0.5 CPU free"))


def test_an_unexpected_exception_is_a_500_in_the_trees_shape_without_a_traceback(
        client: TestClient, router: FakeRouter) -> None:
    router.failure = RuntimeError("replica handle vanished")
    answer = _infer(client)
    assert answer.status_code == 500
    assert answer.json() == _error("LisError",
                                   "internal error: RuntimeError: replica handle vanished")


# --- what the ingress refuses before the service sees it ----------------------------------------


def test_a_successful_request_hands_the_router_what_the_caller_sent(
        client: TestClient, router: FakeRouter) -> None:
    answer = _infer(client, body=b"\xff\xd8jpeg", **{"X-Algo-Type": "image-classification"})
    assert (answer.status_code, answer.text) == (200, "[0.25,0.75]")
    assert answer.headers["content-type"] == "application/json"
    [call] = router.calls
    assert (call.service, call.body, call.content_type, call.algo_type) == \
        ("cls", b"\xff\xd8jpeg", "image/jpeg", "image-classification")
    assert callable(call.gone)


def test_the_content_type_is_the_services_to_judge(client: TestClient,
                                                   router: FakeRouter) -> None:
    # The ingress checks no media type: the replica answers 415 or 400 for it.
    assert client.post("/inference/cls", content=b"frame").status_code == 200
    assert _infer(client, **{"Content-Type": "text/plain"}).status_code == 200
    assert [call.content_type for call in router.calls] == [None, "text/plain"]


def test_an_unknown_service_is_404(client: TestClient, router: FakeRouter) -> None:
    answer = _infer(client, service="nope")
    assert (answer.status_code, answer.json()) == (
        404, _error("ServiceNotFound", "no inference service named 'nope'"))
    assert router.calls == []


def test_an_algo_type_other_than_the_services_is_409(client: TestClient,
                                                     router: FakeRouter) -> None:
    answer = _infer(client, **{"X-Algo-Type": "object-detection"})
    assert (answer.status_code, answer.json()) == (409, _error(
        "AlgorithmMismatch",
        "service 'cls' runs 'image-classification', not the requested AlgoType "
        "'object-detection'"))
    assert router.calls == []


def test_a_body_over_the_services_limit_is_413(client: TestClient, router: FakeRouter) -> None:
    assert _infer(client, body=bytes(MAX_BODY)).status_code == 200  # the limit itself is fine
    declared = _infer(client, body=bytes(MAX_BODY + 1))
    assert (declared.status_code, declared.json()) == (413, _error(
        "PayloadTooLarge", f"request body bytes {MAX_BODY + 1} is over the limit of {MAX_BODY}"))
    # Sent chunked, without a Content-Length: counted as it arrives.
    chunked = client.post("/inference/cls", content=iter([bytes(40), bytes(40)]),
                          headers={"Content-Type": "image/jpeg"})
    assert "content-length" not in chunked.request.headers
    assert (chunked.status_code, chunked.json()) == (413, _error(
        "PayloadTooLarge", f"request body bytes 80 is over the limit of {MAX_BODY}"))
    assert len(router.calls) == 1


def test_unknown_routes_and_methods_answer_in_the_same_shape(client: TestClient) -> None:
    missing = client.get("/nowhere")
    assert (missing.status_code, missing.json()) == (404, _error("NotFound", "Not Found"))
    wrong_method = client.get("/inference/cls")
    assert (wrong_method.status_code, wrong_method.json()) == (
        405, _error("MethodNotAllowed", "Method Not Allowed"))


# --- feedback, listing, health ------------------------------------------------------------------


def test_feedback_hands_the_router_the_parsed_headers(client: TestClient,
                                                      router: FakeRouter) -> None:
    answer = client.post("/feedback/every", content=b"sample",
                         headers={"X-Model-Prediction": "[0.25, 0.75]",
                                  "X-Metadata": '{"camera": 3, "site": "dock"}'})
    assert (answer.status_code, answer.json()) == (200, {"accepted": True,
                                                         "key": "e2e/sample.jpg"})
    assert router.feedback == [("every", b"sample", [0.25, 0.75], {"camera": "3", "site": "dock"})]


@pytest.mark.parametrize(("headers", "message"), [
    ({}, "invalid X-Model-Prediction header None: expected the model's prediction as JSON"),
    ({"X-Model-Prediction": "[0.25,"},
     "invalid X-Model-Prediction/X-Metadata header 'Expecting value: line 1 column 7 (char 6)': "
     "expected valid JSON"),
    ({"X-Model-Prediction": "1", "X-Metadata": "[1]"},
     "invalid X-Metadata header [1]: expected a JSON object"),
], ids=["no prediction", "prediction not JSON", "metadata not an object"])
def test_feedback_with_bad_headers_is_400(client: TestClient, router: FakeRouter,
                                          headers: dict[str, str], message: str) -> None:
    answer = client.post("/feedback/every", content=b"sample", headers=headers)
    assert (answer.status_code, answer.json()) == (400, _error("InvalidArgument", message))
    assert router.feedback == []


def test_feedback_over_its_limit_is_413(client: TestClient, router: FakeRouter) -> None:
    answer = client.post("/feedback/every", content=bytes(MAX_FEEDBACK_BODY_BYTES + 1),
                         headers={"X-Model-Prediction": "1"})
    assert (answer.status_code, answer.json()) == (413, _error(
        "PayloadTooLarge", f"request body bytes {MAX_FEEDBACK_BODY_BYTES + 1} is over the limit "
                           f"of {MAX_FEEDBACK_BODY_BYTES}"))
    assert router.feedback == []


def test_services_lists_each_service_with_its_state(client: TestClient) -> None:
    answer = client.get("/services")
    assert answer.status_code == 200
    assert answer.json() == {"services": [
        {"name": "cls", "algorithm": "image-classification", "connector_id": "ImageClassifier",
         "connector_arn": CLASSIFIER.connector_arn, "platform": "x86-64", "timeout_s": 10.0,
         "max_request_bytes": MAX_BODY, "feedback_config_id": "every", "state": "RUNNING",
         "replicas": 1},
        {"name": "det", "algorithm": "object-detection", "connector_id": "ObjectDetector",
         "connector_arn": DETECTOR.connector_arn, "platform": "x86-64", "timeout_s": 5.0,
         "max_request_bytes": MAX_BODY, "feedback_config_id": None, "state": "RUNNING",
         "replicas": 2},
    ]}


def test_readyz_waits_for_every_service(client: TestClient, router: FakeRouter) -> None:
    ready = client.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    router.states = {"cls": {"state": "DEPLOYING"}}
    waiting = client.get("/readyz")
    assert (waiting.status_code, waiting.json()) == (
        503, {"status": "not ready", "waiting_for": ["cls", "det"]})


def test_healthz(client: TestClient) -> None:
    answer = client.get("/healthz")
    assert (answer.status_code, answer.json()) == (200, {"status": "ok"})


# --- the bearer token ----------------------------------------------------------------------------


@pytest.fixture
def guarded(router: FakeRouter) -> Iterator[TestClient]:
    with TestClient(build_http_app(router, token=TOKEN)) as test_client:
        yield test_client


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", TOKEN,
                                           f"Bearer {TOKEN} "],
                         ids=["no header", "wrong token", "no Bearer prefix",
                              "trailing space"])
@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/inference/cls"), ("POST", "/inference/nope"), ("POST", "/feedback/every"),
    ("GET", "/services"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/nowhere"),
])
def test_without_the_token_every_route_but_healthz_is_401(
        guarded: TestClient, router: FakeRouter, authorization: str | None, method: str,
        path: str) -> None:
    headers = {"X-Model-Prediction": "1"}
    if authorization is not None:
        headers["Authorization"] = authorization
    answer = guarded.request(method, path, content=b"frame", headers=headers)
    assert (answer.status_code, answer.json()) == (
        401, _error("Unauthorized", "missing or wrong bearer token"))
    assert (router.calls, router.feedback) == ([], [])


@pytest.mark.parametrize("authorization", [None, "Bearer wrong"], ids=["no header", "wrong"])
def test_healthz_needs_no_token(guarded: TestClient, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    answer = guarded.get("/healthz", headers=headers)
    assert (answer.status_code, answer.json()) == (200, {"status": "ok"})


def test_the_token_opens_every_route(guarded: TestClient, router: FakeRouter) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert _infer(guarded, **auth).text == "[0.25,0.75]"
    feedback = guarded.post("/feedback/every", content=b"s",
                            headers={**auth, "X-Model-Prediction": "1"})
    assert feedback.status_code == 200
    assert [guarded.get(path, headers=auth).status_code
            for path in ("/services", "/readyz", "/metrics", "/healthz")] == [200, 200, 200, 200]
    assert len(router.calls) == len(router.feedback) == 1
    # Past the token, errors are the service's own.
    assert _infer(guarded, service="nope", **auth).status_code == 404


def test_refused_requests_are_not_counted(guarded: TestClient) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    _infer(guarded)
    _infer(guarded, **{"Authorization": "Bearer wrong"})
    _infer(guarded, **auth)
    assert _answers(guarded.get("/metrics", headers=auth).text) == {
        ("lis_requests_total", ("cls", "200")): 1,
        ("lis_requests_in_flight", ("cls",)): 0,
    }


# --- /metrics ------------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<labels>.*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
# The label names of each series /metrics shows, in the order its samples are keyed here.
_KEY_LABELS = {"lis_requests_total": ("service", "code"), "lis_requests_in_flight": ("service",),
               "lis_request_duration_seconds_count": ("service",),
               "lis_replica_stage_seconds_count": ("service", "stage")}


def _samples(text: str) -> dict[tuple[str, tuple[str, ...]], float]:
    """The samples of a Prometheus text exposition, keyed by series name and label values."""
    samples = {}
    for line in text.splitlines():
        found = _SAMPLE.match(line)
        if found is None or found["name"] not in _KEY_LABELS:
            continue
        labels = dict(_LABEL.findall(found["labels"]))
        assert set(labels) == set(_KEY_LABELS[found["name"]]), line
        key = (found["name"], tuple(labels[name] for name in _KEY_LABELS[found["name"]]))
        samples[key] = float(found["value"])
    return samples


def _answers(text: str) -> dict[tuple[str, tuple[str, ...]], float]:
    """The answer counts and in-flight gauges of a /metrics text."""
    return {key: value for key, value in _samples(text).items()
            if key[0] in ("lis_requests_total", "lis_requests_in_flight")}


def test_metrics_count_each_answer_by_service_and_status(client: TestClient,
                                                         router: FakeRouter) -> None:
    _infer(client)
    _infer(client, service="det")
    _infer(client)
    _infer(client, service="nope")
    _infer(client, **{"X-Algo-Type": "object-detection"})
    _infer(client, body=bytes(MAX_BODY + 1))
    router.failure = ServiceUnavailable("cls", "overloaded")
    _infer(client)
    router.failure = RuntimeError("boom")
    _infer(client)
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert _samples(answer.text) == {
        ("lis_requests_total", ("(unknown)", "404")): 1,
        ("lis_requests_total", ("cls", "200")): 2,
        ("lis_requests_total", ("cls", "409")): 1,
        ("lis_requests_total", ("cls", "413")): 1,
        ("lis_requests_total", ("cls", "500")): 1,
        ("lis_requests_total", ("cls", "503")): 1,
        ("lis_requests_total", ("det", "200")): 1,
        ("lis_requests_in_flight", ("(unknown)",)): 0,
        ("lis_requests_in_flight", ("cls",)): 0,
        ("lis_requests_in_flight", ("det",)): 0,
        ("lis_request_duration_seconds_count", ("(unknown)",)): 1,
        ("lis_request_duration_seconds_count", ("cls",)): 6,
        ("lis_request_duration_seconds_count", ("det",)): 1,
        # Stage times come only with answers: two from cls, one from det.
        ("lis_replica_stage_seconds_count", ("cls", "prepare")): 2,
        ("lis_replica_stage_seconds_count", ("cls", "wait")): 2,
        ("lis_replica_stage_seconds_count", ("cls", "model")): 2,
        ("lis_replica_stage_seconds_count", ("det", "prepare")): 1,
        ("lis_replica_stage_seconds_count", ("det", "wait")): 1,
        ("lis_replica_stage_seconds_count", ("det", "model")): 1,
    }


def test_metrics_of_a_fresh_ingress_are_only_the_families(client: TestClient) -> None:
    answer = client.get("/metrics")
    assert _samples(answer.text) == {}
    assert [line.split(" ")[1:3] for line in answer.text.splitlines()] == [
        ["HELP", "lis_requests_total"], ["TYPE", "lis_requests_total"],
        ["HELP", "lis_requests_in_flight"], ["TYPE", "lis_requests_in_flight"],
        ["HELP", "lis_request_duration_seconds"], ["TYPE", "lis_request_duration_seconds"],
        ["HELP", "lis_replica_stage_seconds"], ["TYPE", "lis_replica_stage_seconds"],
    ]


def test_metrics_are_per_app(router: FakeRouter) -> None:
    with TestClient(build_http_app(router)) as first:
        _infer(first)
    with TestClient(build_http_app(router)) as second:
        assert _samples(second.get("/metrics").text) == {}


def test_a_status_outside_httpstatus_is_still_counted(client: TestClient,
                                                      router: FakeRouter) -> None:
    # 499 is nginx's, not in http.HTTPStatus: it must still render as its number.
    assert 499 not in {status.value for status in HTTPStatus}
    router.failure = _instance(next(cls for cls in _error_classes()
                                    if cls.__name__ == "ClientClosedRequest"), "left")
    assert _infer(client).status_code == 499
    assert _answers(client.get("/metrics").text) == {
        ("lis_requests_total", ("cls", "499")): 1, ("lis_requests_in_flight", ("cls",)): 0}
