"""ML Feedback through running services: every sample uploaded and announced, none lost."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
from waiting import wait_until

import greengrass_machine_learning_sdk as ml
from greengrass_machine_learning_sdk.feedback import GreengrassFeedbackException

pytestmark = pytest.mark.slow

SAMPLES = 200


def _unique_jpeg(index: int) -> bytes:
    image = np.zeros((48, 64, 3), np.uint8)
    cv2.putText(image, str(index), (2, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 255, 255), 2)
    return cv2.imencode(".jpg", image)[1].tobytes()


def _key(status: dict) -> str:
    return status["response"].get("s3_response", {}).get("key", "")


def _objects(store: Path, prefix: str) -> dict[str, bytes]:
    folder = store / "field-samples" / prefix
    if not folder.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in folder.glob("*.jpg")}


def test_every_request_of_a_feedback_service_is_uploaded_and_announced(running_lis) -> None:
    inputs = [_unique_jpeg(i) for i in range(SAMPLES)]
    for body in inputs:
        response = requests.post(f"{running_lis.endpoint}/inference/feedbackClassifier",
                                 data=body, headers={"Content-Type": "image/jpeg"}, timeout=30)
        assert response.status_code == 200, response.text
    objects = wait_until(lambda: len(_objects(running_lis.feedback_store, "e2e")) >= SAMPLES
                         and _objects(running_lis.feedback_store, "e2e"), timeout_s=120,
                         message=f"{SAMPLES} uploaded samples")
    assert len(objects) == SAMPLES
    assert sorted(objects.values()) == sorted(inputs)  # every object's bytes are an input's

    def announced() -> list[dict]:
        return [m for m in running_lis.broker.messages("feedback/message/prediction")
                if m["config-id"] == "every-sample"]
    wait_until(lambda: len({m["source-ref"] for m in announced()}) >= SAMPLES, timeout_s=60,
               message="prediction messages")
    refs = {m["source-ref"] for m in announced()}
    assert len(refs) == SAMPLES
    assert all(ref.endswith(".jpg") and "/e2e/" in ref for ref in refs)
    assert all(isinstance(m["model-prediction"], list) and len(m["model-prediction"]) == 3
               for m in announced())
    successes = {m["id"] for m in running_lis.broker.messages("feedback/message/status")
                 if m["response"]["status"] == "success"
                 and _key(m).startswith("e2e/")}
    assert len(successes) == SAMPLES


def test_sdk_publish_samples_by_strategy_and_reports_errors(http_endpoint: str,
                                                            running_lis) -> None:
    feedback = ml.client("feedback")
    for index in range(20):
        assert feedback.publish(ConfigId="keep-half", ModelInput=_unique_jpeg(1000 + index),
                                ModelPrediction=[0.2, 0.8], Metadata={"camera": "gate-1"}) is None
    statuses = wait_until(
        lambda: [m for m in running_lis.broker.messages("feedback/message/status")
                 if m["response"]["status"] == "sample_dropped_by_strategy"
                 or _key(m).startswith("sdk/")], timeout_s=60,
        message="feedback statuses")
    wait_until(lambda: len({m["id"] for m in running_lis.broker.messages(
        "feedback/message/status") if m["response"]["status"] in
        ("sample_dropped_by_strategy", "success")
        and not _key(m).startswith("e2e/")}) >= 20, timeout_s=60,
        message="a status for each of the 20 samples")
    kept = _objects(running_lis.feedback_store, "sdk")
    assert 0 < len(kept) < 20, "RANDOM_SAMPLING at rate 0.5 keeps some, not all"
    assert statuses
    with pytest.raises(GreengrassFeedbackException, match="no-such-config"):
        feedback.publish(ConfigId="no-such-config", ModelInput=b"x", ModelPrediction=[1.0])

