"""Real peers the tests start on loopback: an MQTT broker (amqtt) and S3 (moto server)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from vocabulary.feedback_specs import StorageSpec

HERE = Path(__file__).parent
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MqttBroker:
    """A real broker process that records what it receives."""

    def __init__(self, record: Path) -> None:
        self.port = free_port()
        self.record = record
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        environment = {**os.environ, "PYTHONPATH": str(HERE)}
        self._process = subprocess.Popen(
            [sys.executable, str(HERE / "_mqtt_broker.py"), str(self.port), str(self.record)],
            env=environment, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        assert line.strip() == "ready", f"broker did not start: {line!r}"

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(10)
            self._process = None

    def messages(self, topic: str) -> list[dict[str, Any]]:
        """Payloads the broker received on ``topic``, in order (duplicates included)."""
        if not self.record.exists():
            return []
        payloads = []
        for line in self.record.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # the last line may be half written
            if entry["topic"] == topic:
                payloads.append(json.loads(entry["payload"]))
        return payloads


class S3Server:
    """moto's S3 over HTTP on a loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: Any = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def storage(self) -> StorageSpec:
        return StorageSpec(s3_endpoint_url=self.endpoint, region=REGION,
                           access_key_id="testing", secret_access_key="testing")

    def objects(self, bucket: str) -> dict[str, bytes]:
        client = self.client()
        keys = [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket) for item in page.get("Contents", [])]
        return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}
