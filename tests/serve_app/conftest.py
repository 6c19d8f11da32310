"""A real Ray Serve instance running lis, shared by the end-to-end tests of this folder.

Started once per test session (Ray takes seconds to start on 2 cores) with
small real models: a tiny SageMaker IC classifier on MXNet, a deliberately
slow one for the timeout test, and the compiled SSD from ``tests/conftest.py``
on DLR; with ML Feedback writing to a local-folder store and a real MQTT broker.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from peers import MqttBroker, free_port

CACHE = Path(__file__).resolve().parents[2] / "build" / "test-cache"
# Logical CPUs for the test cluster: the services at 0.5 CPU each, with room to spare.
TEST_CLUSTER_CPUS = 8


def _classifier(name: str, channels: int, depth: int, classes: int) -> Path:
    """A random-weight Gluon classifier written as a SageMaker IC artifact (cached)."""
    key = hashlib.sha256(f"e2e-classifier-{name}-{channels}-{depth}-{classes}-v1".encode())
    dest = CACHE / f"{name}-{key.hexdigest()[:12]}"
    if dest.is_dir():
        return dest
    import mxnet as mx
    from mxnet.gluon import nn

    from deployments.sagemaker_ic import write_classifier_artifact

    mx.random.seed(7)
    net = nn.HybridSequential()
    for _ in range(depth):
        net.add(nn.Conv2D(channels, 3, padding=1, activation="relu"))
    net.add(nn.GlobalAvgPool2D(), nn.Dense(classes))
    net.initialize(mx.init.Xavier(magnitude=2.5))
    net.hybridize()
    net(mx.nd.zeros((1, 3, 224, 224)))
    scratch = dest.with_suffix(".tmp")
    write_classifier_artifact(net, scratch, labels=[f"class{i}" for i in range(classes)])
    scratch.rename(dest)
    return dest


@dataclass(frozen=True)
class RunningLis:
    endpoint: str
    config_path: Path
    classifier: Path
    detector: Path
    broker: MqttBroker
    feedback_store: Path
    inbox: Path  # the folder the "inbox" pipeline watches


SERVICES_YAML = """\
services:
  - LocalInferenceServiceName: imageClassification
    ConnectorArn: arn:aws:greengrass:us-west-2::/connectors/ImageClassificationx86-64/versions/2
    model: {classifier}
    LocalInferenceServiceTimeoutSeconds: "10"
    num_cpus: 0.5
    max_request_bytes: 2000000
  - LocalInferenceServiceName: objectDetection
    ConnectorArn: arn:aws:greengrass:us-west-2::/connectors/ObjectDetectionx86-64/versions/1
    model: {detector}
    LocalInferenceServiceTimeoutSeconds: "10"
    num_cpus: 0.5
  - LocalInferenceServiceName: slowClassifier
    ConnectorArn: arn:aws:greengrass:us-west-2::/connectors/ImageClassificationx86-64/versions/1
    model: {slow}
    LocalInferenceServiceTimeoutSeconds: "1"
    num_cpus: 0.5
  - LocalInferenceServiceName: hungryClassifier
    ConnectorArn: arn:aws:greengrass:us-west-2::/connectors/ImageClassificationx86-64/versions/1
    model: {classifier}
    # Far below any Python process: the first request finds the replica over its limit.
    LocalInferenceServiceMemoryLimitKB: "1000"
    num_cpus: 0.5
  - LocalInferenceServiceName: busyClassifier
    ConnectorArn: arn:aws:greengrass:us-west-2::/connectors/ImageClassificationx86-64/versions/1
    model: {busy}
    LocalInferenceServiceTimeoutSeconds: "60"
    # With Ray Serve's 5 requests in progress per replica, the 7th waiting one is refused.
    max_queued_requests: 1
    num_cpus: 0.5
  - LocalInferenceServiceName: scalingClassifier
    ConnectorArn: arn:aws:greengrass:us-west-2::/connectors/ImageClassificationx86-64/versions/1
    model: {busy}
    LocalInferenceServiceTimeoutSeconds: "60"
    # No wait to scale up; back to one replica 5 s after the load allows it.
    autoscaling: {{min_replicas: 1, max_replicas: 2, target_ongoing_requests: 1,
                  upscale_delay_s: 0, downscale_delay_s: 5}}
    num_cpus: 0.5
  - LocalInferenceServiceName: feedbackClassifier
    ConnectorArn: arn:aws:greengrass:us-west-2::/connectors/ImageClassificationx86-64/versions/2
    model: {classifier}
    MLFeedbackConnectorConfigId: every-sample
    num_cpus: 0.5
connectors:
  - Id: MyFeedbackConnector
    ConnectorArn: arn:aws:greengrass:us-west-2::/connectors/MLFeedback/versions/1
    Parameters:
      FeedbackConfigurationMap: >-
        {{"every-sample": {{"s3-bucket-name": "field-samples", "content-type": "image/jpeg",
        "file-ext": "jpg", "s3-prefix": "e2e"}},
        "keep-half": {{"s3-bucket-name": "field-samples", "content-type": "image/jpeg",
        "s3-prefix": "sdk", "file-ext": "jpg",
        "sampling-strategy": {{"strategy-name": "RANDOM_SAMPLING", "rate": 0.5}}}},
        "pipeline-frames": {{"s3-bucket-name": "field-samples", "content-type": "image/jpeg",
        "file-ext": "jpg", "s3-prefix": "pipeline"}}}}
      RequestLimit: "500"
feedback:
  storage:
    s3_endpoint_url: file://{store}
  mqtt:
    host: 127.0.0.1
    port: {mqtt_port}
  spool:
    directory: {spool}
# Publishes to ML Feedback's broker (no mqtt: key of its own).
pipelines:
  - name: inbox
    service: imageClassification
    source: {{type: folder, path: {inbox}}}
    state_directory: {pipeline_state}
    sinks:
      - {{type: mqtt, topic: e2e/inbox}}
      - {{type: mqtt, topic: e2e/inbox/lis, format: lis}}
      - {{type: feedback, config_id: pipeline-frames}}
"""


@pytest.fixture(scope="session")
def running_lis(ssd_artifact: dict, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[RunningLis]:
    import ray
    from ray import serve

    from cluster.ray_start import connect_ray
    from serve_app.config import load_config
    from serve_app.deploy import deploy, wait_for_services

    classifier = _classifier("tiny", 8, 2, 3)
    # ~3 x 30 GFLOP: seconds per request on one thread, well past a 1 s timeout.
    slow = _classifier("slow", 256, 4, 3)
    busy = _classifier("busy", 64, 3, 3)
    folder = tmp_path_factory.mktemp("lis")
    broker = MqttBroker(folder / "mqtt-record.jsonl")
    broker.start()
    config_path = folder / "services.yaml"
    config_path.write_text(SERVICES_YAML.format(
        classifier=classifier, slow=slow, busy=busy, detector=ssd_artifact["artifact"],
        store=folder / "store", spool=folder / "spool", mqtt_port=broker.port,
        inbox=folder / "inbox", pipeline_state=folder / "pipeline-state"))
    (folder / "inbox").mkdir()
    config = load_config([config_path])
    port = free_port()
    connect_ray(None, num_cpus=TEST_CLUSTER_CPUS, http_port=port)
    try:
        deploy(config, port=port)
        states = wait_for_services(config, timeout_s=240)
        assert all(s["state"] == "RUNNING" for s in states.values()), states
        yield RunningLis(f"http://127.0.0.1:{port}", config_path, classifier,
                         Path(ssd_artifact["artifact"]), broker, folder / "store",
                         folder / "inbox")
    finally:
        serve.shutdown()
        ray.shutdown()
        broker.stop()


@pytest.fixture
def http_endpoint(running_lis: RunningLis, monkeypatch: pytest.MonkeyPatch) -> str:
    """The SDK client talks HTTP to the running lis."""
    monkeypatch.setenv("LIS_TRANSPORT", "http")
    monkeypatch.setenv("LIS_ENDPOINT", running_lis.endpoint)
    return running_lis.endpoint
