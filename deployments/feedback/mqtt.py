"""The connector's MQTT output: topics, message shapes, and a QoS 1 publisher.

Topics and payloads, as the ML Feedback connector published them:

``feedback/message/status``, one per request::

    {"response": {"status": "success", "s3_response": {"bucket", "key", "ETag"}}, "id": "<id>"}
    {"response": {"status": "sample_dropped_by_strategy"}, "id": "<id>"}
    {"response": {"status": "fail", "error_message": "...", "error": "Queue.Full"}, "id": "<id>"}

``feedback/message/prediction``, after each successful upload::

    {"source-ref": "s3://<bucket>/<prefix>/<id>.<ext>", "model-prediction": ...,
     "config-id": "...", "metadata": {..., "publish-ts": "YYYY-MM-DD HH:MM:SS.ffffff"}}

``cloudwatch/metric/put``, the metrics::

    {"request": {"namespace": "GreengrassFeedbackConnector",
                 "metricData": {"value": 1, "unit": "Count", "metricName": "SampleUploadSuccess"}}}

``MqttPublisher`` wraps one paho-mqtt 2.x client: it connects in the
background, reconnects with exponential backoff, and publishes with QoS 1.
``publish`` hands back a ``Delivery`` that tells when the broker acknowledged
the message (PUBACK); paho keeps an unacknowledged message and sends it again
after a reconnect, so it is not published twice by lis while the process
lives. ``publish_if_connected`` is for messages that are not worth holding
while the broker is away (metrics, statuses of samples that were not kept).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
from collections.abc import Mapping
from typing import Any

from vocabulary.errors import LisError
from vocabulary.feedback_specs import MqttSpec

__all__ = [
    "DEFAULT_RECONNECT_MAX_S",
    "DEFAULT_RECONNECT_MIN_S",
    "METRIC_NAMESPACE",
    "METRIC_TOPIC",
    "PREDICTION_TOPIC",
    "STATUS_TOPIC",
    "Delivery",
    "MqttPublisher",
    "Metric",
    "metric_message",
    "prediction_message",
    "publish_timestamp",
    "status_message",
]

STATUS_TOPIC = "feedback/message/status"
PREDICTION_TOPIC = "feedback/message/prediction"
METRIC_TOPIC = "cloudwatch/metric/put"
METRIC_NAMESPACE = "GreengrassFeedbackConnector"
DEFAULT_RECONNECT_MIN_S = 1.0
DEFAULT_RECONNECT_MAX_S = 60.0
_QOS = 1
_MQTT_ERR_SUCCESS = 0  # paho.mqtt.enums.MQTTErrorCode values
_MQTT_ERR_NO_CONN = 4

logger = logging.getLogger(__name__)


class Metric:
    """The connector's metric names and their units (lis adds the last two)."""

    SAMPLE_SIZE = ("SampleSize", "Bytes")
    UPLOAD_SUCCESS = ("SampleUploadSuccess", "Count")
    PUBLISHED = ("SampleAndPredictionPublished", "Count")
    UPLOAD_FAILURE = ("SampleUploadFailure", "Count")
    NOT_USED = ("SampleNotUsed", "Count")
    THROTTLED = ("ErrorRequestThrottled", "Count")
    SPOOL_FULL = ("ErrorSpoolFull", "Count")
    SET_ASIDE = ("SampleSetAside", "Count")  # the store refused it for good


def status_message(sample_id: str, status: str, **details: Any) -> dict[str, Any]:
    """A ``feedback/message/status`` payload; ``details`` join ``status`` in ``response``."""
    return {"response": {"status": status, **details}, "id": sample_id}


def prediction_message(source_ref: str, prediction: Any, config_id: str,
                       metadata: Mapping[str, Any], published: dt.datetime) -> dict[str, Any]:
    """A ``feedback/message/prediction`` payload, stamped with ``publish-ts``."""
    return {"source-ref": source_ref, "model-prediction": prediction, "config-id": config_id,
            "metadata": {**metadata, "publish-ts": publish_timestamp(published)}}


def metric_message(metric: tuple[str, str], value: float = 1) -> dict[str, Any]:
    """A ``cloudwatch/metric/put`` payload for one of ``Metric``'s names."""
    name, unit = metric
    return {"request": {"namespace": METRIC_NAMESPACE,
                        "metricData": {"value": value, "unit": unit, "metricName": name}}}


def publish_timestamp(moment: dt.datetime) -> str:
    """``YYYY-MM-DD HH:MM:SS.ffffff`` (lis stamps UTC)."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


class Delivery:
    """One QoS 1 message on its way: ``acknowledged`` once the broker sent PUBACK."""

    def __init__(self, info: Any) -> None:
        self._info = info

    @property
    def failed(self) -> bool:
        """paho refused the message (its queue is full): it will never be sent."""
        return self._info.rc != 0

    @property
    def acknowledged(self) -> bool:
        return not self.failed and bool(self._info.is_published())

    def wait(self, timeout_s: float) -> bool:
        """Block up to ``timeout_s`` for the PUBACK; whether it came."""
        if self.failed:
            return False
        self._info.wait_for_publish(timeout_s)
        return self.acknowledged


class MqttPublisher:
    """A QoS 1 publisher that keeps itself connected to one broker."""

    def __init__(self, spec: MqttSpec, *, reconnect_min_s: float = DEFAULT_RECONNECT_MIN_S,
                 reconnect_max_s: float = DEFAULT_RECONNECT_MAX_S) -> None:
        self.spec = spec
        self.client_id = spec.client_id or f"lis-feedback-{socket.gethostname()}-{os.getpid()}"
        self._connected = threading.Event()
        self._client = _paho_client(self.client_id)
        self._configure(reconnect_min_s, reconnect_max_s)
        self._started = False
        self._closing = False

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        """Connect in the background; paho retries until the broker answers."""
        if not self._started:
            self._client.connect_async(self.spec.host, self.spec.port, self.spec.keepalive_s)
            self._client.loop_start()
            self._started = True

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def publish(self, topic: str, payload: Mapping[str, Any]) -> Delivery:
        """Publish with QoS 1; held in memory and resent until the broker acknowledges it."""
        info = self._client.publish(topic, _encode(payload), qos=_QOS)
        if info.rc == _MQTT_ERR_NO_CONN:
            # paho keeps a QoS 1 message it could not send and sends it after the
            # reconnect; its rc only reports that first attempt.
            info.rc = _MQTT_ERR_SUCCESS
        return Delivery(info)

    def publish_if_connected(self, topic: str, payload: Mapping[str, Any]) -> bool:
        """Publish with QoS 1 only if connected now; whether it was handed to the broker."""
        if not self.connected:
            logger.debug("broker unreachable, not published on %s: %s", topic, payload)
            return False
        self._client.publish(topic, _encode(payload), qos=_QOS)
        return True

    def close(self) -> None:
        """Disconnect; messages not yet acknowledged are forgotten (the spool still has them)."""
        if self._started:
            self._closing = True
            self._client.disconnect()
            self._client.loop_stop()
            self._started = False

    def _configure(self, reconnect_min_s: float, reconnect_max_s: float) -> None:
        client, spec = self._client, self.spec
        client.reconnect_delay_set(reconnect_min_s, reconnect_max_s)
        if spec.username is not None:
            password = spec.password.get_secret_value() if spec.password else None
            client.username_pw_set(spec.username, password)
        if spec.tls is not None:
            client.tls_set(ca_certs=_path(spec.tls.ca_file), certfile=_path(spec.tls.cert_file),
                           keyfile=_path(spec.tls.key_file))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            logger.warning("MQTT broker %s:%d refused %s: %s", self.spec.host, self.spec.port,
                           self.client_id, reason)
            return
        logger.info("connected to MQTT broker %s:%d as %s", self.spec.host, self.spec.port,
                    self.client_id)
        self._connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        if self._connected.is_set() and not self._closing:
            logger.warning("lost MQTT broker %s:%d (%s); reconnecting", self.spec.host,
                           self.spec.port, reason)
        self._connected.clear()


def _paho_client(client_id: str) -> Any:
    try:
        from paho.mqtt.client import CallbackAPIVersion, Client
    except ImportError as exc:
        raise LisError("the feedback pipeline publishes over MQTT and needs paho-mqtt 2: "
                       "pip install 'paho-mqtt>=2,<3'") from exc
    # Unacknowledged QoS 1 messages are resent after a reconnect whatever the
    # session flag; a clean session keeps the broker from hoarding state for us.
    return Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)


def _encode(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _path(path: Any) -> str | None:
    return None if path is None else str(path)
