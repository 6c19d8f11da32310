"""Real peers for the feedback tests: an MQTT broker, an S3-compatible server, a spool.

* ``mqtt_broker`` and ``s3_server`` (tests/conftest.py): a real broker and S3.
* ``make_spec: a ``FeedbackConnectorSpec`` pointing at those peers (or at a
  local-folder store) with a spool in ``tmp_path``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from peers import MqttBroker

from vocabulary.feedback_specs import (
    FeedbackConfig,
    FeedbackConnectorSpec,
    MqttSpec,
    SpoolSpec,
    StorageSpec,
)


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
