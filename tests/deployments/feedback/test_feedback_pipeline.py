"""The feedback pipeline against a real MQTT broker, moto's S3 over HTTP, and a local folder."""

from __future__ import annotations

import json
import random
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from peers import MqttBroker, S3Server
from waiting import wait_until

import deployments.feedback as feedback
from deployments.feedback import (
    ACCEPTED,
    DROPPED,
    FAIL,
    METRIC_TOPIC,
    PREDICTION_TOPIC,
    QUEUE_FULL,
    STATUS_TOPIC,
    SUCCESS,
    Backoff,
    FeedbackPipeline,
    LocalFolderStore,
    SampleStore,
    StoredObject,
)
from vocabulary.feedback_specs import (
    Entropy,
    FeedbackConfig,
    FeedbackConnectorSpec,
    LeastConfidence,
    Margin,
    RandomSampling,
)

FAST = Backoff(initial_s=0.05, max_s=0.5)
DEADLINE_S = 60.0


def config(bucket: str, strategy: Any = None, **fields: Any) -> FeedbackConfig:
    return FeedbackConfig(s3_bucket_name=bucket, content_type="image/jpeg", file_ext="jpg",
                          sampling_strategy=strategy, **fields)


@pytest.fixture
def pipelines() -> Iterator[Callable[..., FeedbackPipeline]]:
    """Open pipelines with test backoffs; every one is closed at the end of the test."""
    opened: list[FeedbackPipeline] = []

    def open_pipeline(spec: FeedbackConnectorSpec, *, broker_up: bool = True,
                      **options: Any) -> FeedbackPipeline:
        pipeline = FeedbackPipeline(spec, backoff=FAST, ack_timeout_s=2.0, **options)
        opened.append(pipeline)
        if broker_up:  # statuses and metrics of unkept samples need the broker at once
            assert pipeline.wait_for_broker(DEADLINE_S)
        return pipeline

    yield open_pipeline
    for pipeline in opened:
        pipeline.close(timeout_s=10)


class GatedStore(SampleStore):
    """A real local-folder store behind a switch: while closed, every upload fails."""

    def __init__(self, root: Path) -> None:
        self.inner = LocalFolderStore(root)
        self.open = threading.Event()
        self.puts: Counter[str] = Counter()

    def put(self, bucket: str, key: str, body: bytes, *, content_type: str,
            metadata: Mapping[str, Any]) -> StoredObject:
        if not self.open.is_set():
            raise ConnectionError("store unreachable (test switch)")
        self.puts[key] += 1
        return self.inner.put(bucket, key, body, content_type=content_type, metadata=metadata)


def by_status(messages: list[dict[str, Any]]) -> dict[str, set[str]]:
    statuses: dict[str, set[str]] = {}
    for message in messages:
        statuses.setdefault(message["response"]["status"], set()).add(message["id"])
    return statuses


def metric_counts(broker: MqttBroker) -> Counter[str]:
    counts: Counter[str] = Counter()
    for message in broker.messages(METRIC_TOPIC):
        data = message["request"]["metricData"]
        assert message["request"]["namespace"] == "GreengrassFeedbackConnector"
        counts[data["metricName"]] += data["value"] if data["unit"] == "Count" else 1
    return counts


def local_objects(root: Path, bucket: str) -> dict[str, bytes]:
    folder = root / bucket
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*")
            if path.is_file() and not path.name.endswith(feedback.store.METADATA_SUFFIX)}


# --- sampling, end to end --------------------------------------------------------


def test_each_strategy_keeps_and_drops_with_matching_statuses(
        make_spec, pipelines, mqtt_broker: MqttBroker, tmp_path: Path) -> None:
    configs = {
        "least": config("least", LeastConfidence(threshold=0.6)),
        "margin": config("margin", Margin(threshold=0.2)),
        "entropy": config("entropy", Entropy(threshold=1.0)),
        "random": config("random", RandomSampling(rate=0.5)),
        "everything": config("everything"),
    }
    pipeline = pipelines(make_spec(configs), rng=random.Random(7))
    reference = random.Random(7)
    cases = [  # (config id, prediction, kept?)
        ("least", [0.5, 0.3, 0.2], True), ("least", [0.7, 0.2, 0.1], False),
        ("least", {"prediction": []}, True),
        ("least", {"prediction": [[1, 0.9, 0.1, 0.1, 0.4, 0.4]]}, False),
        ("margin", [0.45, 0.4, 0.15], True), ("margin", [0.7, 0.2, 0.1], False),
        ("entropy", [0.5, 0.25, 0.25], True), ("entropy", [0.9, 0.05, 0.05], False),
        ("everything", [0.99, 0.01], True),
    ] + [("random", [0.5, 0.5], reference.random() < 0.5) for _ in range(20)]

    returned = [(pipeline.submit(config_id, f"input {i}".encode(), prediction, {"n": i}), kept)
                for i, (config_id, prediction, kept) in enumerate(cases)]

    kept_ids = {status["id"] for status, kept in returned if kept}
    dropped_ids = {status["id"] for status, kept in returned if not kept}
    assert [status["response"]["status"] for status, _ in returned] == [
        ACCEPTED if kept else DROPPED for _, kept in returned]
    assert 0 < len(kept_ids & {s["id"] for s, _ in returned[-20:]}) < 20  # random kept some
    assert pipeline.drain(DEADLINE_S)
    wait_until(lambda: len(mqtt_broker.messages(STATUS_TOPIC)) >= len(cases), timeout_s=DEADLINE_S,
               message="a status per request")
    assert by_status(mqtt_broker.messages(STATUS_TOPIC)) == {SUCCESS: kept_ids,
                                                              DROPPED: dropped_ids}
    stored = sum(len(local_objects(tmp_path / "store", bucket)) for bucket in configs)
    assert stored == len(kept_ids)
    wait_until(lambda: metric_counts(mqtt_broker)["SampleNotUsed"] == len(dropped_ids),
               timeout_s=DEADLINE_S, message="a SampleNotUsed metric per dropped sample")


# --- 200 samples through S3 --------------------------------------------------------


def test_200_samples_through_s3_are_stored_and_announced_once_each(
        make_spec, pipelines, mqtt_broker: MqttBroker, s3_server: S3Server) -> None:
    import paho.mqtt.client as mqtt

    bucket = "feedback-200"
    s3_server.client().create_bucket(Bucket=bucket)
    spec = make_spec({"shapes": config(bucket, LeastConfidence(threshold=0.5),
                                       **{"s3-prefix": "field/shapes"})},
                     storage=s3_server.storage())
    received: list[tuple[str, dict[str, Any]]] = []
    subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-subscriber")
    subscriber.on_message = lambda client, data, message: received.append(
        (message.topic, json.loads(message.payload)))
    subscriber.connect("127.0.0.1", mqtt_broker.port)
    subscriber.subscribe([("feedback/#", 1), ("cloudwatch/#", 1)])
    subscriber.loop_start()
    try:
        pipeline = pipelines(spec)
        rng = random.Random(200)
        inputs: dict[str, bytes] = {}
        for n in range(200):
            top = rng.random()
            body = rng.randbytes(rng.randrange(100, 4000))
            probabilities = [top, (1 - top) / 2, (1 - top) / 2]  # kept when top < 0.5
            status = pipeline.submit("shapes", body, probabilities, {"camera": "cam-1", "n": n})
            if status["response"]["status"] == ACCEPTED:
                inputs[status["id"]] = body
        assert pipeline.drain(DEADLINE_S)
        wait_until(lambda: sum(topic == PREDICTION_TOPIC for topic, _ in received) >= len(inputs),
                   timeout_s=DEADLINE_S, message="the subscriber to see every prediction")
    finally:
        subscriber.loop_stop()
        subscriber.disconnect()

    kept = len(inputs)
    assert 60 < kept < 140
    objects = s3_server.objects(bucket)
    successes = [m for m in mqtt_broker.messages(STATUS_TOPIC)
                 if m["response"]["status"] == SUCCESS]
    predictions = mqtt_broker.messages(PREDICTION_TOPIC)
    assert len(objects) == len(predictions) == len(successes) == kept
    assert objects == {f"field/shapes/{sample_id}.jpg": body for sample_id, body in inputs.items()}
    assert {m["id"] for m in successes} == set(inputs)
    assert sorted(m["source-ref"] for m in predictions) == sorted(
        f"s3://{bucket}/{key}" for key in objects)
    delivered = [m for topic, m in received if topic == PREDICTION_TOPIC]
    assert len(delivered) == kept  # a real subscriber saw each exactly once

    success = successes[0]["response"]["s3_response"]
    assert success["bucket"] == bucket and success["key"] in objects and success["ETag"]
    prediction = predictions[0]
    assert prediction["config-id"] == "shapes"
    assert prediction["model-prediction"][0] < 0.5
    assert prediction["metadata"]["camera"] == "cam-1"
    timestamp = prediction["metadata"]["publish-ts"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", timestamp)
    head = s3_server.client().head_object(Bucket=bucket, Key=success["key"])
    assert head["ContentType"] == "image/jpeg"
    assert head["Metadata"]["camera"] == "cam-1" and head["Metadata"]["n"].isdigit()

    wait_until(lambda: metric_counts(mqtt_broker)["SampleAndPredictionPublished"] == kept,
               timeout_s=DEADLINE_S, message="the published metrics")
    metrics = metric_counts(mqtt_broker)
    assert metrics["SampleUploadSuccess"] == kept
    assert metrics["SampleNotUsed"] == 200 - kept
    sizes = [m["request"]["metricData"] for m in mqtt_broker.messages(METRIC_TOPIC)
             if m["request"]["metricData"]["metricName"] == "SampleSize"]
    assert {size["unit"] for size in sizes} == {"Bytes"}
    assert sum(size["value"] for size in sizes) == sum(len(body) for body in inputs.values())


def test_the_local_folder_store_keeps_metadata_beside_the_object(
        make_spec, pipelines, mqtt_broker: MqttBroker, tmp_path: Path) -> None:
    pipeline = pipelines(make_spec({"cfg": config("local-bucket", **{"s3-prefix": "a/b"})}))
    status = pipeline.submit("cfg", b"\x89PNG bytes", [0.2, 0.8], {"site": "plant-4", "k": [1, 2]})
    assert pipeline.drain(DEADLINE_S)

    path = tmp_path / "store" / "local-bucket" / "a" / "b" / f"{status['id']}.jpg"
    assert path.read_bytes() == b"\x89PNG bytes"
    sidecar = json.loads(path.with_name(path.name + ".metadata.json").read_text())
    assert sidecar == {"ContentType": "image/jpeg",
                       "Metadata": {"site": "plant-4", "k": "[1, 2]"}}
    (prediction,) = wait_until(lambda: mqtt_broker.messages(PREDICTION_TOPIC),
                               timeout_s=DEADLINE_S, message="the prediction message")
    assert prediction["source-ref"] == path.as_uri()


# --- durability ----------------------------------------------------------------------


def test_an_outage_of_broker_and_store_loses_no_accepted_sample(
        make_spec, pipelines, mqtt_broker: MqttBroker, s3_server: S3Server) -> None:
    bucket = "feedback-outage"
    s3_server.client().create_bucket(Bucket=bucket)
    pipeline = pipelines(make_spec({"cfg": config(bucket)}, storage=s3_server.storage()))
    inputs: dict[str, bytes] = {}

    def send(count: int) -> None:
        for _ in range(count):
            body = random.randbytes(512)
            status = pipeline.submit("cfg", body, [0.4, 0.6], {})
            assert status["response"]["status"] == ACCEPTED
            inputs[status["id"]] = body

    send(20)
    try:
        s3_server.stop()  # mid-run: some of the 20 are still on their way
        send(10)
        mqtt_broker.stop()
        send(20)
        assert pipeline.pending > 0
    finally:
        s3_server.start()
        mqtt_broker.start()
    assert pipeline.drain(DEADLINE_S)

    objects = s3_server.objects(bucket)
    assert objects == {f"{sample_id}.jpg": body for sample_id, body in inputs.items()}
    successes = Counter(m["id"] for m in mqtt_broker.messages(STATUS_TOPIC)
                        if m["response"]["status"] == SUCCESS)
    predictions = Counter(m["source-ref"] for m in mqtt_broker.messages(PREDICTION_TOPIC))
    assert set(successes) == set(inputs)
    assert set(predictions) == {f"s3://{bucket}/{key}" for key in objects}
    # QoS 1: a message whose PUBACK was lost in the outage may arrive twice, never more
    # often than the broker went away.
    assert max(successes.values()) <= 2 and max(predictions.values()) <= 2


def test_a_new_pipeline_delivers_what_the_last_one_left_in_the_spool(
        make_spec, pipelines, mqtt_broker: MqttBroker, tmp_path: Path) -> None:
    spec = make_spec({"cfg": config("restart")})
    store = GatedStore(tmp_path / "store")
    first = pipelines(spec, store=store)
    ids = [first.submit("cfg", f"sample {n}".encode(), [0.5, 0.5], {})["id"] for n in range(10)]
    assert first.pending == 10
    first.close(timeout_s=10)

    store.open.set()
    second = pipelines(spec, store=store)
    assert second.pending == 10
    assert second.drain(DEADLINE_S)

    objects = local_objects(tmp_path / "store", "restart")
    assert objects == {f"{sample_id}.jpg": f"sample {n}".encode()
                       for n, sample_id in enumerate(ids)}
    wait_until(lambda: {m["id"] for m in mqtt_broker.messages(STATUS_TOPIC)} == set(ids),
               timeout_s=DEADLINE_S, message="a success status per replayed sample")


def test_a_sample_uploaded_before_a_restart_is_announced_without_a_second_upload(
        make_spec, pipelines, mqtt_broker: MqttBroker, tmp_path: Path) -> None:
    spec = make_spec({"cfg": config("no-reupload")})
    store = GatedStore(tmp_path / "store")
    store.open.set()
    mqtt_broker.stop()  # uploads succeed, announcements cannot be acknowledged
    first = pipelines(spec, store=store, broker_up=False)
    ids = [first.submit("cfg", b"x" * 100, [0.5, 0.5], {})["id"] for _ in range(5)]
    wait_until(lambda: len(store.puts) == 5, timeout_s=DEADLINE_S, message="the five uploads")
    first.close(timeout_s=10)

    mqtt_broker.start()
    second = pipelines(spec, store=store)
    assert second.drain(DEADLINE_S)
    assert set(store.puts.values()) == {1}
    wait_until(lambda: {m["id"] for m in mqtt_broker.messages(STATUS_TOPIC)} == set(ids),
               timeout_s=DEADLINE_S, message="a success status per sample")


# --- limits ------------------------------------------------------------------------


def test_requests_over_the_request_limit_fail_with_queue_full(
        make_spec, pipelines, mqtt_broker: MqttBroker, tmp_path: Path) -> None:
    store = GatedStore(tmp_path / "store")
    pipeline = pipelines(make_spec({"cfg": config("limited")}, request_limit=3), store=store)

    statuses = [pipeline.submit("cfg", b"img", [0.5, 0.5], {}) for _ in range(5)]

    assert [s["response"]["status"] for s in statuses] == [ACCEPTED] * 3 + [FAIL] * 2
    for refused in statuses[3:]:
        assert refused["response"]["error"] == QUEUE_FULL
        assert "RequestLimit is 3" in refused["response"]["error_message"]
    wait_until(lambda: metric_counts(mqtt_broker)["ErrorRequestThrottled"] == 2,
               timeout_s=DEADLINE_S, message="two throttling metrics")
    published = {m["id"]: m["response"] for m in mqtt_broker.messages(STATUS_TOPIC)}
    assert {statuses[3]["id"], statuses[4]["id"]} <= set(published)
    assert published[statuses[3]["id"]]["error"] == QUEUE_FULL

    store.open.set()  # once the backlog is delivered there is room again
    assert pipeline.drain(DEADLINE_S)
    assert pipeline.submit("cfg", b"img", [0.5, 0.5], {})["response"]["status"] == ACCEPTED


def test_a_full_spool_refuses_new_samples_and_keeps_the_stored_ones(
        make_spec, pipelines, mqtt_broker: MqttBroker, tmp_path: Path) -> None:
    store = GatedStore(tmp_path / "store")
    pipeline = pipelines(make_spec({"cfg": config("small-spool")}, spool_max_bytes=3000),
                         store=store)

    statuses = [pipeline.submit("cfg", bytes(1000), [0.5, 0.5], {}) for _ in range(3)]

    assert [s["response"]["status"] for s in statuses] == [ACCEPTED, ACCEPTED, FAIL]
    assert statuses[2]["response"]["error"] == "SpoolFull"
    assert "spool is full" in statuses[2]["response"]["error_message"]
    wait_until(lambda: metric_counts(mqtt_broker)["ErrorSpoolFull"] == 1, timeout_s=DEADLINE_S,
               message="the spool-full metric")
    store.open.set()
    assert pipeline.drain(DEADLINE_S)
    assert len(local_objects(tmp_path / "store", "small-spool")) == 2


# --- bad requests --------------------------------------------------------------------


@pytest.mark.parametrize(("config_id", "model_input", "prediction", "metadata", "named"), [
    ("nope", b"x", [0.5], {}, "ConfigId"),
    ("cfg", "not bytes", [0.5], {}, "ModelInput"),
    ("cfg", b"x", "0.5,0.5", {}, "ModelPrediction"),
    ("cfg", b"x", {"boxes": []}, {}, "ModelPrediction"),
    ("cfg", b"x", [0.5], {"city": "Zürich"}, "Metadata"),
    ("cfg", b"x", [0.5], {"big": "x" * 3000}, "Metadata"),
    ("cfg", b"x", [0.5], ["not", "a", "dict"], "Metadata"),
])
def test_a_bad_request_fails_with_the_parameter_named(
        make_spec, pipelines, mqtt_broker: MqttBroker, config_id, model_input, prediction,
        metadata, named: str) -> None:
    pipeline = pipelines(make_spec({"cfg": config("bad-requests")}))
    status = pipeline.submit(config_id, model_input, prediction, metadata)
    assert status["response"]["status"] == FAIL
    assert status["response"]["error"] == "InvalidArgument"
    assert named in status["response"]["error_message"]
    assert pipeline.pending == 0
    wait_until(lambda: [m["id"] for m in mqtt_broker.messages(STATUS_TOPIC)] == [status["id"]],
               timeout_s=DEADLINE_S, message="the fail status on MQTT")


def test_numpy_predictions_are_accepted_as_plain_numbers(
        make_spec, pipelines, mqtt_broker: MqttBroker) -> None:
    import numpy as np

    pipeline = pipelines(make_spec({"cfg": config("numpy")}))
    status = pipeline.submit("cfg", b"x", np.array([0.25, 0.75], dtype=np.float32), {})
    assert status["response"]["status"] == ACCEPTED
    assert pipeline.drain(DEADLINE_S)
    (prediction,) = wait_until(lambda: mqtt_broker.messages(PREDICTION_TOPIC),
                               timeout_s=DEADLINE_S, message="the prediction message")
    assert prediction["model-prediction"] == [0.25, 0.75]


def test_the_package_exports_its_public_names() -> None:
    exported = {name for name in dir(feedback) if not name.startswith("_")} - {
        "annotations", "deployment", "handoff", "mqtt", "pipeline", "sampling", "spool", "store"}
    assert exported == set(feedback.__all__)
