"""The feedback pipeline: sample, spool, upload, announce.

``FeedbackPipeline.submit`` does, in the caller's thread and without any
network call:

1. check the request (known config id, bytes input, a classification list or a
   detection dict, metadata that S3 can carry: each key an HTTP token);
2. apply the config's sampling strategy; a dropped sample gets a
   ``sample_dropped_by_strategy`` status and a ``SampleNotUsed`` metric;
3. admit it under ``RequestLimit``: at most that many samples may be accepted
   and not yet delivered; one more is a ``fail`` status whose error is
   ``Queue.Full``, with an ``ErrorRequestThrottled`` metric;
4. write it to the spool, fsync'd (a full spool: ``fail``, error ``SpoolFull``,
   metric ``ErrorSpoolFull``), and return ``accepted``.

A background worker thread then takes spooled samples oldest first: it uploads
the input to ``<s3-prefix>/<id>.<file-ext>`` (``SampleUploadSuccess`` and
``SampleSize`` metrics; ``SampleUploadFailure`` for each failed attempt), writes
the upload state to the spool, publishes the ``success`` status and the
prediction message with QoS 1 and, once the broker acknowledged both, removes
the sample from the spool (``SampleAndPredictionPublished``). While the store
or the broker is away, the sample goes to the back of the queue and the worker
backs off exponentially (``Backoff``), so a broken bucket slows other configs
but does not block them. An upload the store refuses for the sample itself
(``store.permanent_failure``: no such bucket, metadata it cannot carry) is
tried ``SET_ASIDE_AFTER`` times in all, across restarts; then the sample is
moved to the spool's ``set-aside/`` folder with the reason, a ``fail`` status
and a ``SampleSetAside`` metric, and leaves ``RequestLimit``: one sample never
blocks the others. A pipeline opened on a spool that holds samples (after a
crash or a restart) delivers them first.

Delivery guarantees. Every accepted sample is uploaded and announced at least
once. Duplicates are possible: a message the broker received but whose PUBACK
was lost to a disconnect is sent again (MQTT QoS 1), and so are the messages of
a sample that was uploaded but not yet acknowledged when the process stopped.
Each duplicate carries the same ``id`` and ``source-ref``. An object is never
stored twice: its key is fixed when the sample is accepted.

Only the ``success`` status and the prediction message are held for the broker.
The statuses of samples that were not kept (dropped, refused, invalid) and the
metrics are published only while the broker is connected. ``submit`` also
returns the status it decided: ``accepted``, ``sample_dropped_by_strategy`` or
``fail``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import queue
import random
import threading
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deployments.feedback.mqtt import (
    METRIC_TOPIC,
    PREDICTION_TOPIC,
    STATUS_TOPIC,
    Delivery,
    Metric,
    MqttPublisher,
    metric_message,
    prediction_message,
    status_message,
)
from deployments.feedback.sampling import keep_sample
from deployments.feedback.spool import Destination, Spool, SpoolRecord
from deployments.feedback.store import (
    SampleStore,
    object_key,
    open_store,
    permanent_failure,
    s3_metadata,
)
from vocabulary.errors import InvalidArgument, ServiceUnavailable, SpoolFull
from vocabulary.feedback_specs import FeedbackConfig, FeedbackConnectorSpec
from vocabulary.wire import METADATA_KEY, is_metadata_key

__all__ = [
    "ACCEPTED",
    "DEFAULT_ACK_TIMEOUT_S",
    "DEFAULT_BACKOFF",
    "DEFAULT_CLOSE_TIMEOUT_S",
    "DROPPED",
    "FAIL",
    "QUEUE_FULL",
    "SET_ASIDE_AFTER",
    "SUCCESS",
    "Backoff",
    "FeedbackPipeline",
]

ACCEPTED = "accepted"  # lis's own: returned by submit, never published
SUCCESS = "success"
DROPPED = "sample_dropped_by_strategy"
FAIL = "fail"
QUEUE_FULL = "Queue.Full"  # the error name the connector reported (Python 2's Queue.Full)
DEFAULT_ACK_TIMEOUT_S = 10.0
DEFAULT_CLOSE_TIMEOUT_S = 60.0
# Uploads of one sample the store refuses for good before it is set aside: a
# few, in case the refusal was the store's passing mistake.
SET_ASIDE_AFTER = 5
# S3 limits user-defined metadata to 2 KB, keys and values together.
_MAX_METADATA_BYTES = 2048
_ACK_POLL_S = 0.1

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff between retries: ``initial_s``, doubling, at most ``max_s``."""

    initial_s: float = 1.0
    max_s: float = 60.0

    def delay(self, failures: int) -> float:
        """The wait after ``failures`` failures in a row (``failures`` >= 1)."""
        return min(self.max_s, self.initial_s * 2.0 ** min(failures - 1, 32))


DEFAULT_BACKOFF = Backoff()


class FeedbackPipeline:
    """One node's feedback job: ``submit`` samples, a worker thread delivers them."""

    def __init__(self, spec: FeedbackConnectorSpec, *, store: SampleStore | None = None,
                 publisher: MqttPublisher | None = None, rng: random.Random | None = None,
                 backoff: Backoff = DEFAULT_BACKOFF,
                 ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S,
                 set_aside_after: int = SET_ASIDE_AFTER) -> None:
        self.spec = spec
        self._set_aside_after = set_aside_after
        self._rng = rng or random.Random()
        self._backoff = backoff
        self._ack_timeout_s = ack_timeout_s
        self._store = store or open_store(spec.storage)
        self._publisher = publisher or MqttPublisher(
            spec.mqtt, reconnect_min_s=backoff.initial_s, reconnect_max_s=backoff.max_s)
        self._spool = Spool(spec.spool.directory, spec.spool.max_bytes)
        self._queue: deque[SpoolRecord] = deque(self._spool.records())
        self._in_progress = len(self._queue)  # accepted, not yet delivered
        self._deliveries: dict[str, dict[str, Delivery]] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._closing = threading.Event()
        self._publisher.start()
        self._worker = threading.Thread(target=self._run, name="lis-feedback-worker", daemon=True)
        self._worker.start()

    # --- the caller's side -----------------------------------------------------

    def submit(self, config_id: str, model_input: bytes, prediction: Any,
               metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Take one (input, prediction) pair; return its status without waiting for the upload.

        The status is ``{"response": {"status": ...}, "id": "<sample id>"}`` with
        status ``accepted`` (spooled; ``success`` follows on MQTT once delivered),
        ``sample_dropped_by_strategy``, or ``fail`` with ``error`` (the error's
        name, ``Queue.Full`` over RequestLimit) and ``error_message``.
        """
        sample_id = str(uuid.uuid4())
        try:
            return self._accept(sample_id, config_id, model_input, prediction, metadata or {})
        except Exception as exc:  # every refusal is a status, as the connector reported them
            return self._refuse(sample_id, exc)

    @property
    def pending(self) -> int:
        """Samples accepted and not yet delivered (in the spool)."""
        with self._lock:
            return self._in_progress

    def wait_for_broker(self, timeout_s: float) -> bool:
        """Wait until the MQTT broker is connected; whether it is.

        Statuses of samples that are not kept, and metrics, are only published
        while connected: a caller that needs them from the first request waits here.
        """
        return self._publisher.wait_connected(timeout_s)

    def drain(self, timeout_s: float) -> bool:
        """Wait until every accepted sample is delivered; whether that happened in time."""
        with self._changed:
            return self._changed.wait_for(lambda: self._in_progress == 0, timeout_s)

    def close(self, timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S) -> None:
        """Stop the worker and disconnect; undelivered samples stay in the spool for next time."""
        self._closing.set()
        with self._changed:
            self._changed.notify_all()
        self._worker.join(timeout_s)
        if self._worker.is_alive():
            logger.warning("feedback worker still busy after %g s; closing anyway", timeout_s)
        self._publisher.close()
        self._spool.close()

    def _accept(self, sample_id: str, config_id: str, model_input: Any, prediction: Any,
                metadata: Any) -> dict[str, Any]:
        if self._closing.is_set():
            raise ServiceUnavailable("feedback", "the feedback pipeline is closed")
        config = self._config(config_id)
        body = _checked_input(model_input)
        prediction = _plain(prediction)
        metadata = _checked_metadata(metadata)
        with self._lock:  # random.Random is not safe to share between threads
            keep = keep_sample(config.sampling_strategy, prediction, self._rng)
        if not keep:
            return self._drop(sample_id)
        self._admit()
        try:
            record = self._spool.add(sample_id, config_id, body, prediction, metadata,
                                     _destination(config, sample_id))
        except BaseException:
            self._release()
            raise
        self._enqueue(record)
        return status_message(sample_id, ACCEPTED)

    def _config(self, config_id: Any) -> FeedbackConfig:
        config = self.spec.configs.get(config_id) if isinstance(config_id, str) else None
        if config is None:
            # The configured ids are not listed: a caller need not learn the others.
            raise InvalidArgument("ConfigId", config_id, "the id of a feedback config in lis's "
                                                         "MLFeedback connector")
        return config

    def _drop(self, sample_id: str) -> dict[str, Any]:
        status = status_message(sample_id, DROPPED)
        self._publisher.publish_if_connected(STATUS_TOPIC, status)
        self._metric(Metric.NOT_USED)
        return status

    def _refuse(self, sample_id: str, error: Exception) -> dict[str, Any]:
        name = QUEUE_FULL if isinstance(error, queue.Full) else type(error).__name__
        status = status_message(sample_id, FAIL, error_message=str(error), error=name)
        self._publisher.publish_if_connected(STATUS_TOPIC, status)
        if isinstance(error, queue.Full):
            self._metric(Metric.THROTTLED)
        elif isinstance(error, SpoolFull):
            self._metric(Metric.SPOOL_FULL)
        logger.info("feedback sample %s refused: %s: %s", sample_id, name, error)
        return status

    def _admit(self) -> None:
        limit = self.spec.request_limit
        with self._lock:
            if limit is not None and self._in_progress >= limit:
                raise queue.Full(f"{self._in_progress} samples are waiting for upload: "
                                 f"RequestLimit is {limit}")
            self._in_progress += 1

    def _release(self) -> None:
        with self._changed:
            self._in_progress -= 1
            self._changed.notify_all()

    def _enqueue(self, record: SpoolRecord) -> None:
        with self._changed:
            self._queue.append(record)
            self._changed.notify_all()

    def _metric(self, metric: tuple[str, str], value: float = 1) -> None:
        self._publisher.publish_if_connected(METRIC_TOPIC, metric_message(metric, value))

    # --- the worker's side -----------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while (record := self._next()) is not None:
            try:
                done, record = self._deliver(record)
            except Exception:  # a bug must not kill the worker: the sample stays spooled
                logger.exception("feedback sample %s: unexpected error", record.sample_id)
                done = False
            if done:
                failures = 0
                continue
            self._enqueue(record)  # to the back: one broken bucket must not block the rest
            failures += 1
            if self._closing.wait(self._backoff.delay(failures)):
                return

    def _next(self) -> SpoolRecord | None:
        with self._changed:
            self._changed.wait_for(lambda: self._queue or self._closing.is_set())
            return None if self._closing.is_set() else self._queue.popleft()

    def _deliver(self, record: SpoolRecord) -> tuple[bool, SpoolRecord]:
        """Take a sample as far as it goes; whether it is done (delivered or set aside)."""
        if record.upload is None:
            try:
                record = self._upload(record)
            except Exception as exc:
                self._metric(Metric.UPLOAD_FAILURE)
                if permanent_failure(exc):
                    return self._refused(record, exc)
                logger.warning("feedback sample %s: upload to %s/%s failed, will retry: %s",
                               record.sample_id, record.destination.bucket,
                               record.destination.key, exc)
                return False, record
        if not self._announce(record):
            return False, record
        self._finish(record)
        return True, record

    def _refused(self, record: SpoolRecord, error: Exception) -> tuple[bool, SpoolRecord]:
        """The store refused the sample itself: count it, and set it aside at the last try."""
        record = self._spool.count_failure(record)
        if record.failed_uploads < self._set_aside_after:
            logger.warning("feedback sample %s: the store refused it (%d of %d tries before "
                           "it is set aside): %s", record.sample_id, record.failed_uploads,
                           self._set_aside_after, error)
            return False, record
        reason = f"{type(error).__name__}: {error}"
        folder = self._spool.set_aside(record, reason)
        message = (f"the store refused the sample {record.failed_uploads} times; "
                   f"set aside in {folder}: {reason}")
        logger.error("feedback sample %s: %s", record.sample_id, message)
        self._publisher.publish_if_connected(STATUS_TOPIC, status_message(
            record.sample_id, FAIL, error_message=message, error=type(error).__name__))
        self._metric(Metric.SET_ASIDE)
        self._deliveries.pop(record.sample_id, None)
        self._release()
        return True, record

    def _upload(self, record: SpoolRecord) -> SpoolRecord:
        # Checked again: a sample an older lis accepted may carry a key S3 refuses.
        _checked_metadata(record.metadata)
        destination = self._current_destination(record)
        body = self._spool.read_input(record)
        stored = self._store.put(destination.bucket, destination.key, body,
                                 content_type=destination.content_type, metadata=record.metadata)
        record = self._spool.mark_uploaded(record, stored)
        self._metric(Metric.UPLOAD_SUCCESS)
        self._metric(Metric.SAMPLE_SIZE, len(body))
        return record

    def _current_destination(self, record: SpoolRecord) -> Destination:
        # A config fixed since (say, its bucket) applies to samples still spooled;
        # one removed since leaves them the destination they were accepted with.
        config = self.spec.configs.get(record.config_id)
        return record.destination if config is None else _destination(config, record.sample_id)

    def _announce(self, record: SpoolRecord) -> bool:
        """Publish what is not yet on its way; whether the broker acknowledged all of it."""
        sent = self._deliveries.setdefault(record.sample_id, {})
        for topic, payload in self._announcements(record).items():
            if topic not in sent or sent[topic].failed:
                sent[topic] = self._publisher.publish(topic, payload)
        return self._acknowledged(list(sent.values()))

    def _announcements(self, record: SpoolRecord) -> dict[str, dict[str, Any]]:
        stored = record.upload
        assert stored is not None
        now = dt.datetime.now(dt.timezone.utc)
        return {
            STATUS_TOPIC: status_message(record.sample_id, SUCCESS, s3_response=stored.response()),
            PREDICTION_TOPIC: prediction_message(stored.url, record.prediction, record.config_id,
                                                 record.metadata, now),
        }

    def _acknowledged(self, deliveries: list[Delivery]) -> bool:
        # Wait in slices so close() is not held up by a broker that went away.
        waited = 0.0
        while waited < self._ack_timeout_s and not self._closing.is_set():
            if not self._publisher.connected:
                return all(delivery.acknowledged for delivery in deliveries)
            if all(delivery.wait(_ACK_POLL_S) for delivery in deliveries):
                return True
            waited += _ACK_POLL_S
        return all(delivery.acknowledged for delivery in deliveries)

    def _finish(self, record: SpoolRecord) -> None:
        self._spool.remove(record)
        self._deliveries.pop(record.sample_id, None)
        self._metric(Metric.PUBLISHED)
        self._release()


def _destination(config: FeedbackConfig, sample_id: str) -> Destination:
    return Destination(bucket=config.s3_bucket_name,
                       key=object_key(config.s3_prefix, sample_id, config.file_ext),
                       content_type=config.content_type)


def _checked_input(model_input: Any) -> bytes:
    if not isinstance(model_input, (bytes, bytearray, memoryview)):
        raise InvalidArgument("ModelInput", type(model_input).__name__, "bytes")
    return bytes(model_input)


def _plain(value: Any) -> Any:
    """The prediction as plain JSON values (numpy scalars and arrays included)."""
    try:
        return json.loads(json.dumps(value, default=_tolist))
    except (TypeError, ValueError) as exc:
        raise InvalidArgument("ModelPrediction", value,
                              f"JSON-serialisable values ({exc})") from None


def _tolist(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _checked_metadata(metadata: Any) -> dict[str, Any]:
    # Checked now, not at upload: a sample S3 would refuse would block the spool forever.
    expected = f"a dict of ASCII str keys to JSON values, at most {_MAX_METADATA_BYTES} bytes"
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
        raise InvalidArgument("Metadata", metadata, expected)
    plain = _plain_metadata(metadata, expected)
    headers = s3_metadata(plain)
    text = "".join(key + value for key, value in headers.items())
    if not text.isascii() or not text.isprintable() or len(text) > _MAX_METADATA_BYTES:
        raise InvalidArgument("Metadata", metadata, expected)
    for key in plain:  # each becomes an HTTP header name (x-amz-meta-<key>)
        if not is_metadata_key(key):
            raise InvalidArgument("Metadata key", key, METADATA_KEY)
    return plain


def _plain_metadata(metadata: Mapping[str, Any], expected: str) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(dict(metadata), default=_tolist))
    except (TypeError, ValueError):
        raise InvalidArgument("Metadata", metadata, expected) from None
