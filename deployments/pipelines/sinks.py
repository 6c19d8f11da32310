"""Where a pipeline's results go: MQTT topics, ML Feedback.

A result is perishable: the newest says what the camera sees now, one from
five minutes ago mostly does not. So a sink never holds up the pipeline and
never keeps an unbounded backlog. While the broker is away an MQTT sink keeps
the newest ``buffer_messages`` results and drops the oldest beyond that,
counting each one dropped; when the broker is back it sends the kept ones in
order, then the new ones. (ML Feedback's samples are the opposite case: field
data to retrain on, kept on disk until delivered; see ``deployments.feedback``.)
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from deployments.feedback.mqtt import MqttPublisher
from deployments.pipelines.messages import Inferred, message_for
from deployments.pipelines.snapshots import drawn, has_result
from deployments.pipelines.sources import Frame
from vocabulary.errors import LisError
from vocabulary.pipeline_specs import FeedbackSink, MqttSink

__all__ = ["FeedbackResults", "MqttResults", "ResultSink", "totals"]

log = logging.getLogger("ray.serve.lis")


class ResultSink(Protocol):
    published: int  # results handed on (to the broker connection, to ML Feedback)
    dropped: int  # results lost: the buffer overflowed, or the hand-off was refused

    @property
    def buffered(self) -> int: ...

    def send(self, result: Inferred, frame: Frame) -> None: ...

    def flush(self) -> None: ...


class MqttResults:
    """Publishes each result on one topic (QoS 1), in the sink's format.

    ``published`` counts results handed to the connected client: paho sends an
    unacknowledged one again after a reconnect. While the client is not
    connected, results wait in a buffer of ``buffer_messages``; the oldest are
    dropped past that and counted in ``dropped``.
    """

    def __init__(self, publisher: MqttPublisher, sink: MqttSink, topic: str) -> None:
        self._publisher = publisher
        self._sink = sink
        self.topic = topic
        self._waiting: collections.deque[dict[str, Any]] = collections.deque()
        self._lock = threading.Lock()
        self.published = self.dropped = 0

    @property
    def buffered(self) -> int:
        return len(self._waiting)

    def send(self, result: Inferred, frame: Frame) -> None:
        with self._lock:
            self._waiting.append(message_for(result, self._sink))
            while len(self._waiting) > self._sink.buffer_messages:
                self._waiting.popleft()
                self.dropped += 1
        self.flush()

    def flush(self) -> None:
        """Publish what waits, oldest first, while the broker is connected."""
        with self._lock:
            while self._waiting and self._publisher.connected:
                delivery = self._publisher.publish(self.topic, self._waiting[0])
                self._waiting.popleft()
                if delivery.failed:  # paho's own queue refused it
                    self.dropped += 1
                else:
                    self.published += 1


class FeedbackResults:
    """Hands frames and their results to the ML Feedback worker, whose sampling decides
    what is kept; never waits for it. Every frame, or (``when: detections``) those with a
    result, raw or with the boxes drawn. A hand-off that fails is counted in ``dropped``."""

    def __init__(self, worker: Any, sink: FeedbackSink, pipeline: str) -> None:
        self._worker = worker
        self._sink = sink
        self._config_id = sink.config_id
        self._pipeline = pipeline
        self.published = self.dropped = 0
        self._in_flight: list[Any] = []

    @property
    def buffered(self) -> int:
        return len(self._in_flight)

    def send(self, result: Inferred, frame: Frame) -> None:
        threshold = self._sink.score_threshold
        if self._sink.when == "detections" and not has_result(result, threshold):
            return  # not a snapshot this sink takes: neither published nor dropped
        body, content_type = frame.body, frame.content_type
        if self._sink.draw:
            try:
                body, content_type = drawn(frame.body, result, threshold), "image/jpeg"
            except LisError as error:  # a frame OpenCV cannot decode: no snapshot of it
                self.dropped += 1
                log.warning("no snapshot of a pipeline frame: %s", error)
                return
        metadata = {"pipeline": self._pipeline, "service": result.service,
                    "source": result.source, "frame-time": result.frame_time.isoformat(),
                    "content-type": content_type, "boxes-drawn": str(self._sink.draw).lower()}
        self.flush()
        if len(self._in_flight) >= _MAX_FEEDBACK_IN_FLIGHT:
            self.dropped += 1
            return
        self._in_flight.append(self._worker.publish.remote(self._config_id, body,
                                                           result.output, metadata))

    def flush(self) -> None:
        still: list[Any] = []
        for response in self._in_flight:
            try:
                status = response.result(timeout_s=0)
            except TimeoutError:
                still.append(response)  # not answered yet
                continue
            except Exception:  # noqa: BLE001 - feedback never stops a pipeline
                self.dropped += 1
                log.warning("could not hand a pipeline frame to ML Feedback", exc_info=True)
                continue
            # Refused (RequestLimit reached, spool full): the worker keeps nothing of it.
            if status.get("response", {}).get("status") == "fail":
                self.dropped += 1
            else:
                self.published += 1
        self._in_flight = still


# Frames on their way to the feedback worker at once; past this they are dropped.
_MAX_FEEDBACK_IN_FLIGHT = 16


def totals(sinks: Sequence[ResultSink]) -> dict[str, int]:
    """Published, dropped and buffered, over ``sinks``."""
    return {"published": sum(s.published for s in sinks),
            "dropped": sum(s.dropped for s in sinks),
            "buffered": sum(s.buffered for s in sinks)}
