"""Real peers for the feedback tests: an MQTT broker, an S3-compatible server, a spool.

* ``mqtt_broker``: amqtt in its own process on a free loopback port; it records
  every message it receives (see ``_mqtt_broker.py``), can be stopped and
  started again on the same port, and is killed at the end of the test.
* ``s3_server``: moto's S3 in server mode on a free loopback port, reached by
  boto3 over HTTP; it can be stopped and started again (moto keeps its buckets
  in this process, so objects survive the restart like a real store's would).
* ``make_spec``: a ``FeedbackConnectorSpec`` pointing at those peers (or at a
  local-folder store) with a spool in ``tmp_path``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from peers import MqttBroker, S3Server

from vocabulary.feedback_specs import (
    FeedbackConfig,
    FeedbackConnectorSpec,
    MqttSpec,
    SpoolSpec,
    StorageSpec,
)


@pytest.fixture
def mqtt_broker(tmp_path: Path) -> Iterator[MqttBroker]:
    broker = MqttBroker(tmp_path / "broker-record.jsonl")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = S3Server()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def make_spec(tmp_path: Path, mqtt_broker: MqttBroker) -> Callable[..., FeedbackConnectorSpec]:
    """Build a spec for ``configs`` against the test broker; storage defaults to a local folder."""

    def make(configs: dict[str, FeedbackConfig], *, storage: StorageSpec | None = None,
             request_limit: int | None = None, spool_max_bytes: int = 1 << 30,
             spool_dir: Path | None = None) -> FeedbackConnectorSpec:
        local = StorageSpec(s3_endpoint_url=(tmp_path / "store").as_uri())
        return FeedbackConnectorSpec(
            configs=configs, request_limit=request_limit, storage=storage or local,
            mqtt=MqttSpec(port=mqtt_broker.port, client_id=f"lis-test-{time.monotonic_ns()}"),
            spool=SpoolSpec(directory=spool_dir or tmp_path / "spool", max_bytes=spool_max_bytes))

    return make
