"""Door 7 of issue #17: one feedback request must not block ML Feedback.

Metadata keys were checked as printable ASCII only, so ``{"a:b": "x"}`` was
accepted and became an illegal S3 header: its upload failed every time, was
retried forever, and held its place under ``RequestLimit`` across restarts.
Against a real broker (amqtt) and a real S3-compatible server (moto, over HTTP).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from peers import MqttBroker, S3Server
from waiting import wait_until

from deployments.feedback import (
    ACCEPTED,
    FAIL,
    METRIC_TOPIC,
    STATUS_TOPIC,
    Backoff,
    FeedbackPipeline,
    Spool,
)
from deployments.feedback.spool import Destination
from serve_app.client import FeedbackClient
from vocabulary.feedback_specs import (
    FeedbackConfig,
    FeedbackConnectorSpec,
    MqttSpec,
    SpoolSpec,
)

FAST = Backoff(initial_s=0.05, max_s=0.2)
DEADLINE_S = 30.0
BUCKET = "feedback-poison"
SET_ASIDE = "set-aside"



@pytest.fixture(scope="module")
def bucket(s3_server: S3Server) -> str:
    s3_server.client().create_bucket(Bucket=BUCKET)
    return BUCKET


def _config(bucket: str) -> FeedbackConfig:
    return FeedbackConfig(s3_bucket_name=bucket, content_type="image/jpeg", file_ext="jpg")


@pytest.fixture
def spec(tmp_path: Path, mqtt_broker: MqttBroker, s3_server: S3Server,
         bucket: str) -> FeedbackConnectorSpec:
    """Two configs on the real S3 server: one whose bucket exists, one whose bucket does not."""
    return FeedbackConnectorSpec(
        configs={"cfg": _config(bucket), "nowhere": _config("no-such-bucket")},
        request_limit=2, storage=s3_server.storage(),
        mqtt=MqttSpec(port=mqtt_broker.port, client_id=f"lis-poison-{time.monotonic_ns()}"),
        spool=SpoolSpec(directory=tmp_path / "spool", max_bytes=1 << 30))


@pytest.fixture
def open_pipeline(spec: FeedbackConnectorSpec) -> Iterator[Callable[[], FeedbackPipeline]]:
    opened: list[FeedbackPipeline] = []

    def open_one() -> FeedbackPipeline:
        pipeline = FeedbackPipeline(spec, backoff=FAST, ack_timeout_s=2.0)
        opened.append(pipeline)
        assert pipeline.wait_for_broker(DEADLINE_S)
        return pipeline

    yield open_one
    for pipeline in opened:
        pipeline.close(timeout_s=10)


@pytest.mark.parametrize("key", ["a:b", "a b", "a/b", "(a)", "a\"b", ""])
def test_a_metadata_key_that_is_no_http_token_is_refused_at_submission(
        key: str, open_pipeline: Callable[[], FeedbackPipeline]) -> None:
    """Before: any printable ASCII key was accepted; its upload then failed forever."""
    pipeline = open_pipeline()
    status = pipeline.submit("cfg", b"x", [0.5, 0.5], {key: "x"})
    assert status["response"]["status"] == FAIL
    assert status["response"]["error"] == "InvalidArgument"
    assert f"Metadata key {key!r}" in status["response"]["error_message"]
    assert pipeline.pending == 0


def test_the_sdk_refuses_such_a_key_before_sending() -> None:
    """Before: the SDK sent ``{"a:b": ...}`` on to lis, which accepted it."""
    sent: list[Any] = []

    class Transport:
        def feedback(self, *arguments: Any) -> dict[str, Any]:
            sent.append(arguments)
            return {"response": {"status": ACCEPTED}}

    client = FeedbackClient(Transport())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Metadata key 'a:b'"):
        client.publish(ConfigId="cfg", ModelInput=b"x", ModelPrediction=[0.5],
                       Metadata={"a:b": "x"})
    client.publish(ConfigId="cfg", ModelInput=b"x", ModelPrediction=[0.5],
                   Metadata={"Camera-Id_7.x": "x"})
    assert len(sent) == 1


def _spool_poison(spec: FeedbackConnectorSpec) -> str:
    """A sample an older lis accepted (key ``a:b``), left in the spool by its last run."""
    spool = Spool(spec.spool.directory, spec.spool.max_bytes)
    try:
        record = spool.add("0" * 8 + "-poison", "cfg", b"poison", [0.5, 0.5], {"a:b": "x"},
                           Destination(BUCKET, "0-poison.jpg", "image/jpeg"))
    finally:
        spool.close()
    return record.sample_id


def _submit_poison(pipeline: FeedbackPipeline) -> str:
    status = pipeline.submit("nowhere", b"poison", [0.5, 0.5], {})  # NoSuchBucket: a 404
    assert status["response"]["status"] == ACCEPTED
    return status["id"]


def _metric_count(broker: MqttBroker, name: str) -> int:
    return sum(m["request"]["metricData"]["value"] for m in broker.messages(METRIC_TOPIC)
               if m["request"]["metricData"]["metricName"] == name)


@pytest.mark.parametrize("poison", ["a key S3 cannot carry, spooled by an older lis",
                                    "a bucket the store does not have"])
def test_a_sample_that_fails_for_good_is_set_aside_and_later_samples_flow(
        poison: str, spec: FeedbackConnectorSpec, open_pipeline: Callable[[], FeedbackPipeline],
        mqtt_broker: MqttBroker, s3_server: S3Server) -> None:
    """Before: the sample was retried forever and held its RequestLimit place (drain never
    finished, nothing was set aside, later samples past the limit got Queue.Full)."""
    spooled = poison.startswith("a key")
    poison_id = _spool_poison(spec) if spooled else None
    pipeline = open_pipeline()
    if poison_id is None:
        poison_id = _submit_poison(pipeline)
    flowing = pipeline.submit("cfg", b"later", [0.5, 0.5], {"camera": "1"})
    assert flowing["response"]["status"] == ACCEPTED
    wait_until(lambda: f"{flowing['id']}.jpg" in s3_server.objects(BUCKET),
               timeout_s=DEADLINE_S, message="a later sample uploaded while the poison retries")

    assert pipeline.drain(DEADLINE_S)  # the poison no longer counts as pending
    aside = spec.spool.directory / SET_ASIDE
    assert (aside / f"{poison_id}.bin").read_bytes() == b"poison"
    assert json.loads((aside / f"{poison_id}.json").read_bytes())["sample_id"] == poison_id
    reason = json.loads((aside / f"{poison_id}.reason.json").read_bytes())
    assert reason["attempts"] >= 2 and reason["reason"]
    assert not list((spec.spool.directory / "samples").glob(f"{poison_id}.*"))
    wait_until(lambda: _metric_count(mqtt_broker, "SampleSetAside") == 1,
               timeout_s=DEADLINE_S, message="the SampleSetAside metric")
    failed = wait_until(
        lambda: [m for m in mqtt_broker.messages(STATUS_TOPIC)
                 if m["id"] == poison_id and m["response"]["status"] == FAIL],
        timeout_s=DEADLINE_S, message="the poison sample's fail status")
    assert SET_ASIDE in failed[0]["response"]["error_message"]

    # Its RequestLimit place is free again, and it does not come back on a restart.
    for n in range(spec.request_limit or 0):
        assert pipeline.submit("cfg", f"more {n}".encode(), [0.5, 0.5], {})[
            "response"]["status"] == ACCEPTED
    assert pipeline.drain(DEADLINE_S)
    pipeline.close(timeout_s=10)
    assert open_pipeline().pending == 0
