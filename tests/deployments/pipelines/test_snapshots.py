"""A pipeline's ML Feedback sink: every frame, or snapshots of frames with a detection, raw or
with the boxes drawn, into the real feedback pipeline (a local-folder store, the real broker).

The feedback worker's Ray Serve handle is stood in for by ``_Worker``, which calls the
real ``FeedbackPipeline.submit`` the way ``FeedbackWorker.publish`` does.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from peers import MqttBroker
from waiting import wait_until

from deployments.feedback.pipeline import FeedbackPipeline
from deployments.pipelines.messages import Inferred
from deployments.pipelines.sinks import FeedbackResults
from deployments.pipelines.sources import Frame
from vocabulary.feedback_specs import (
    FeedbackConfig,
    FeedbackConnectorSpec,
    MqttSpec,
    SpoolSpec,
    StorageSpec,
)
from vocabulary.pipeline_specs import FeedbackSink


class _Answer:
    """A Ray Serve response: not ready when first asked (as the worker takes its time)."""

    def __init__(self, value: Any) -> None:
        self._value = value
        self._asked = False

    def result(self, timeout_s: float | None = None) -> Any:
        if not self._asked:
            self._asked = True
            raise TimeoutError
        return self._value


class _Method:
    def __init__(self, pipeline: FeedbackPipeline) -> None:
        self._pipeline = pipeline

    def remote(self, *args: Any) -> _Answer:
        return _Answer(self._pipeline.submit(*args))


class _Worker:
    def __init__(self, pipeline: FeedbackPipeline) -> None:
        self.publish = _Method(pipeline)


@pytest.fixture
def store(tmp_path: Path, mqtt_broker: MqttBroker) -> Any:
    spec = FeedbackConnectorSpec(
        configs={"snapshots": FeedbackConfig.model_validate(
            {"s3-bucket-name": "frames", "content-type": "image/jpeg", "file-ext": "jpg",
             "s3-prefix": "door"})},
        storage=StorageSpec(s3_endpoint_url=(tmp_path / "store").as_uri()),
        mqtt=MqttSpec(port=mqtt_broker.port, client_id="lis-test-snapshots"),
        spool=SpoolSpec(directory=tmp_path / "spool"))
    pipeline = FeedbackPipeline(spec)
    yield _Worker(pipeline), tmp_path / "store" / "frames" / "door"
    pipeline.close()


def _frame() -> Frame:
    import cv2

    ok, body = cv2.imencode(".png", np.full((200, 200, 3), 128, dtype=np.uint8))
    assert ok
    return Frame(body.tobytes(), "image/png", "camera:0", 7,
                 dt.datetime(2026, 12, 4, tzinfo=dt.timezone.utc))


def _result(rows: list[list[float]]) -> Inferred:
    return Inferred("door", "objectDetection", "object-detection", "camera:0", 7,
                    dt.datetime(2026, 12, 4, tzinfo=dt.timezone.utc), 1, {"prediction": rows},
                    ("person",), (512, 512))


def _settle(sink: FeedbackResults) -> None:
    """Flush until the worker has answered every hand-off."""
    wait_until(lambda: (sink.flush(), sink.buffered == 0)[1], timeout_s=30,
               message="the worker's answers")


def _uploaded(folder: Path) -> list[bytes]:
    return [path.read_bytes() for path in sorted(folder.glob("*.jpg"))]


def test_every_frame_goes_to_feedback_as_it_was_read(store: Any) -> None:
    worker, folder = store
    sink = FeedbackResults(worker, FeedbackSink(config_id="snapshots"), "door")
    frame = _frame()
    sink.send(_result([]), frame)
    wait_until(lambda: _uploaded(folder), timeout_s=30, message="the upload")
    _settle(sink)
    assert _uploaded(folder) == [frame.body] and (sink.published, sink.dropped) == (1, 0)


def test_snapshots_of_frames_with_a_detection_with_the_boxes_drawn(store: Any) -> None:
    import cv2

    worker, folder = store
    sink = FeedbackResults(worker, FeedbackSink(config_id="snapshots", when="detections",
                                                draw=True, score_threshold=0.5), "door")
    sink.send(_result([[0, 0.4, 0.25, 0.25, 0.75, 0.75]]), _frame())  # below 0.5: no snapshot
    sink.send(_result([[0, 0.9, 0.25, 0.25, 0.75, 0.75]]), _frame())
    (snapshot,) = wait_until(lambda: _uploaded(folder), timeout_s=30, message="the snapshot")
    _settle(sink)
    assert sink.published == 1
    image = cv2.imdecode(np.frombuffer(snapshot, dtype=np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (200, 200, 3)
    blue, green, red = (int(c) for c in image[100, 50])  # on the box's left edge, x = 0.25 * 200
    assert green > 200 and blue < 80 and red < 80
    assert abs(int(image[100, 100][1]) - 128) < 10  # inside the box: the frame as it was


def test_a_refused_hand_off_and_an_undrawable_frame_are_dropped_not_fatal(
        store: Any, tmp_path: Path) -> None:
    worker, folder = store
    refused = FeedbackResults(worker, FeedbackSink(config_id="no-such-config"), "door")
    refused.send(_result([]), _frame())
    refused.flush()  # not answered yet
    assert (refused.published, refused.dropped, refused.buffered) == (0, 0, 1)
    refused.flush()
    assert (refused.published, refused.dropped) == (0, 1)  # the worker answered "fail"
    drawing = FeedbackResults(worker, FeedbackSink(config_id="snapshots", draw=True), "door")
    broken = Frame(b"not an image", "image/jpeg", "camera:0", 8,
                   dt.datetime(2026, 12, 4, tzinfo=dt.timezone.utc))
    drawing.send(_result([[0, 0.9, 0.25, 0.25, 0.75, 0.75]]), broken)
    assert (drawing.published, drawing.dropped) == (0, 1)
    assert _uploaded(folder) == []
