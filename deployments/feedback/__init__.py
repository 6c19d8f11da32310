"""The ML Feedback connector's job: sample, spool, upload and announce feedback samples.

    FeedbackPipeline.submit(config_id, model_input, prediction, metadata) -> status
        sampling.keep_sample      which samples the config's strategy keeps
        spool.Spool               accepted samples, durable until delivered
        store.SampleStore         S3 (boto3) or a local folder
        mqtt.MqttPublisher        statuses, predictions, metrics (QoS 1)

The Ray Serve deployment that holds a pipeline per node is
``deployments.feedback.deployment.FeedbackWorker``; it is not imported here so
that the pipeline can be used and tested without Ray.
"""

from __future__ import annotations

from deployments.feedback.mqtt import (
    METRIC_TOPIC,
    PREDICTION_TOPIC,
    STATUS_TOPIC,
    Metric,
    MqttPublisher,
)
from deployments.feedback.pipeline import (
    ACCEPTED,
    DROPPED,
    FAIL,
    QUEUE_FULL,
    SUCCESS,
    Backoff,
    FeedbackPipeline,
)
from deployments.feedback.sampling import keep_sample
from deployments.feedback.spool import Spool
from deployments.feedback.store import (
    LocalFolderStore,
    S3Store,
    SampleStore,
    StoredObject,
    open_store,
)

__all__ = [
    "ACCEPTED",
    "DROPPED",
    "FAIL",
    "METRIC_TOPIC",
    "PREDICTION_TOPIC",
    "QUEUE_FULL",
    "STATUS_TOPIC",
    "SUCCESS",
    "Backoff",
    "FeedbackPipeline",
    "LocalFolderStore",
    "Metric",
    "MqttPublisher",
    "S3Store",
    "SampleStore",
    "Spool",
    "StoredObject",
    "keep_sample",
    "open_store",
]
