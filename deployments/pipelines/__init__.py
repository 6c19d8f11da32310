"""Pipelines: the newest frame of a camera, stream, folder or image, inferred and published.

    PipelineRunner                 the loop: take a frame, infer, hand the result on
        sources.open_source        LatestFrame (camera, stream), FolderWatch, ImageReread
        messages.message_for       greengrass-v2 or lis messages
        sinks.MqttResults          a topic, with a bounded buffer while the broker is away
        sinks.FeedbackResults      ML Feedback: every frame, or snapshots (snapshots.py)

The Ray Serve deployment that runs a pipeline is
``deployments.pipelines.deployment.PipelineWorker``; it is not imported here so
that a pipeline can be run and tested without Ray.
"""

from __future__ import annotations

from deployments.pipelines.messages import Inferred, greengrass_v2_message, lis_message
from deployments.pipelines.runner import PipelineRunner
from deployments.pipelines.sinks import FeedbackResults, MqttResults
from deployments.pipelines.sources import FolderWatch, Frame, ImageReread, LatestFrame, open_source

__all__ = [
    "FeedbackResults",
    "FolderWatch",
    "Frame",
    "ImageReread",
    "Inferred",
    "LatestFrame",
    "MqttResults",
    "PipelineRunner",
    "greengrass_v2_message",
    "lis_message",
    "open_source",
]
