"""Typed configuration of pipelines: a source of images, the service it feeds, where results go.

A pipeline is the loop most Lambda functions around ``invoke_inference_service``
were (and what Greengrass v2's DLR components do on their own): take the
newest camera frame or image, infer, publish the result. ``serve_app.config``
reads a services file's ``pipelines:`` section into ``PipelineSpec``s (paths made
absolute, the service and its algorithm checked); ``deployments.pipelines`` runs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator

from vocabulary.connectors import SERVICE_NAME_PATTERN
from vocabulary.feedback_specs import CONFIG_ID_PATTERN
from vocabulary.names import CAMERA_NAME_PATTERN

__all__ = [
    "DEFAULT_BUFFER_MESSAGES",
    "DEFAULT_IMAGE_PATTERNS",
    "DEFAULT_PIPELINE_STATE_DIRECTORY",
    "DEFAULT_REOPEN_MAX_S",
    "DEFAULT_SCORE_THRESHOLD",
    "DEFAULT_STREAM_TIMEOUT_S",
    "DEFAULT_TOP_K",
    "GREENGRASS_V2_TOPICS",
    "CameraSource",
    "FeedbackSink",
    "FolderSource",
    "ImageSource",
    "MqttSink",
    "PipelineSink",
    "PipelineSource",
    "PipelineSpec",
    "StreamSource",
    "topic_problem",
]

# The Greengrass v2 DLR components' defaults: top 5 results scoring 0.3 or more, on these topics.
DEFAULT_TOP_K = 5
DEFAULT_SCORE_THRESHOLD = 0.3
GREENGRASS_V2_TOPICS = {"image-classification": "ml/dlr/image-classification",
                        "object-detection": "ml/dlr/object-detection"}
# Results waiting for a broker that is away, per sink; older ones are dropped first.
DEFAULT_BUFFER_MESSAGES = 100
# A dropped stream is reopened after 0.5 s, then twice as long each time, up to this.
DEFAULT_REOPEN_MAX_S = 30.0
DEFAULT_IMAGE_PATTERNS = ("*.jpg", "*.jpeg", "*.png", "*.JPG", "*.JPEG", "*.PNG")
# A network stream silent this long (opening, or between two frames) has dropped.
DEFAULT_STREAM_TIMEOUT_S = 10.0
# Where a folder source records the files it has inferred (one file per pipeline).
DEFAULT_PIPELINE_STATE_DIRECTORY = Path("~/.local/state/lis/pipelines")

_SPEC = ConfigDict(extra="forbid", frozen=True)
_MAX_TOPIC_BYTES = 65535


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` cannot be published to (MQTT 3.1.1, section 4.7); None if it can."""
    if not topic:
        return "is empty"
    if "+" in topic or "#" in topic:
        return f"{topic!r} has a wildcard (+ or #): those are for subscribing, not publishing"
    if "\0" in topic:
        return f"{topic!r} has a NUL character"
    if topic.startswith("$"):
        return f"{topic!r} starts with $: such topics are the broker's own"
    if len(topic.encode()) > _MAX_TOPIC_BYTES:
        return f"is longer than {_MAX_TOPIC_BYTES} bytes"
    return None


# --- sources --------------------------------------------------------------------------


class CameraSource(BaseModel):
    """A camera on this node, read through OpenCV: always its newest frame."""

    model_config = _SPEC
    type: Literal["camera"] = "camera"
    device: Annotated[int, Field(ge=0)] | str = Field(
        description="A V4L2 device index (0 for /dev/video0) or a device path.")
    reopen_max_s: float = Field(DEFAULT_REOPEN_MAX_S, gt=0,
                                description="Longest wait between two tries to reopen it.")


class StreamSource(BaseModel):
    """A network stream (HTTP MJPEG, RTSP) or a video file, read through OpenCV: always its
    newest frame. A video file is read at its own frame rate, and from its start again
    once it ends, as a camera would go on."""

    model_config = _SPEC
    type: Literal["stream"] = "stream"
    url: str = Field(min_length=1, description="http(s)://, rtsp:// or a video file's path.")
    reopen_max_s: float = Field(DEFAULT_REOPEN_MAX_S, gt=0,
                                description="Longest wait between two tries to reopen it.")
    timeout_s: float = Field(
        DEFAULT_STREAM_TIMEOUT_S, gt=0,
        description="A network stream that takes longer to open, or to give its next frame, "
                    "has dropped: it is closed and reopened.")


class FolderSource(BaseModel):
    """A folder watched for new images, each inferred once (also across restarts)."""

    model_config = _SPEC
    type: Literal["folder"] = "folder"
    path: Path = Field(description="The folder (relative to the services file).")
    patterns: tuple[str, ...] = Field(DEFAULT_IMAGE_PATTERNS, min_length=1,
                                      description="Which file names are images.")
    after: Literal["keep", "move", "delete"] = Field(
        "keep", description="What becomes of a file once inferred.")
    move_to: Path | None = Field(None, description="Where ``after: move`` puts the files.")
    record_file: Path | None = Field(
        None, description="The record of files already inferred (None: <state>/<pipeline>.seen).")


class ImageSource(BaseModel):
    """One image file re-read every interval: Greengrass v2's ``ImageDirectory`` + ``ImageName``."""

    model_config = _SPEC
    type: Literal["image"] = "image"
    path: Path = Field(description="The image (relative to the services file).")


PipelineSource = Annotated[Union[CameraSource, StreamSource, FolderSource, ImageSource],
                           Field(discriminator="type")]


# --- sinks ----------------------------------------------------------------------------


class MqttSink(BaseModel):
    """Results published on an MQTT topic, in one of two formats.

    ``greengrass-v2``: the DLR components' message, exactly; ``lis``: the
    connector's own output plus service, source, frame time and sequence number.
    """

    model_config = _SPEC
    type: Literal["mqtt"] = "mqtt"
    topic: str | None = Field(
        None, description="None: the Greengrass v2 component's topic for the service's algorithm.")
    format: Literal["greengrass-v2", "lis"] = "greengrass-v2"
    top_k: PositiveInt = Field(DEFAULT_TOP_K, description="At most this many results.")
    score_threshold: float = Field(DEFAULT_SCORE_THRESHOLD, ge=0, le=1,
                                   description="Results scoring below this are left out.")
    labels: tuple[str, ...] | None = Field(
        None, description="Only results of these class names (None: any).")
    buffer_messages: PositiveInt = Field(
        DEFAULT_BUFFER_MESSAGES, description="Results kept while the broker is away; past "
                                             "this the oldest are dropped and counted.")

    @field_validator("topic")
    @classmethod
    def _publishable(cls, topic: str | None) -> str | None:
        problem = None if topic is None else topic_problem(topic)
        if problem:
            raise ValueError(f"topic {problem}")
        return topic


class FeedbackSink(BaseModel):
    """Frames and results handed to ML Feedback (its config's sampling applies): every frame,
    or snapshots of those with a result, raw or with the boxes drawn."""

    model_config = _SPEC
    type: Literal["feedback"] = "feedback"
    config_id: str = Field(pattern=CONFIG_ID_PATTERN,
                           description="A configuration of the MLFeedback connector.")
    when: Literal["always", "detections"] = Field(
        "always", description="detections: only frames with a result scoring score_threshold "
                              "or more (a detection, or a class for a classifier).")
    score_threshold: float = Field(DEFAULT_SCORE_THRESHOLD, ge=0, le=1,
                                   description="What counts as a result for when: detections "
                                               "and draw.")
    draw: bool = Field(False, description="Object detection: upload the frame with its boxes "
                                          "and labels drawn (false: the frame as read).")


PipelineSink = Annotated[Union[MqttSink, FeedbackSink], Field(discriminator="type")]


class PipelineSpec(BaseModel):
    """One pipeline: its source, the service it feeds, its sinks, its rate."""

    model_config = _SPEC
    name: str = Field(pattern=f"^{SERVICE_NAME_PATTERN}$",
                      description="Names the pipeline in /pipelines, lis status and /metrics.")
    service: str = Field(pattern=f"^{SERVICE_NAME_PATTERN}$",
                         description="The inference service (LocalInferenceServiceName) it feeds.")
    algorithm: Literal["image-classification", "object-detection"] = Field(
        "image-classification", description="The service's algorithm (set by the config reader).")
    source: PipelineSource
    sinks: tuple[PipelineSink, ...] = Field(description="Where results go, one or more.")
    interval_s: float = Field(
        0.0, ge=0, allow_inf_nan=False,
        description="Infer once every this many seconds (Greengrass v2's InferenceInterval); "
                    "0: as fast as the service answers. Always on the newest frame or file.")
    state_directory: Path = Field(DEFAULT_PIPELINE_STATE_DIRECTORY,
                                  description="Where a folder source keeps its record.")
    camera: str | None = Field(
        None, pattern=f"^{CAMERA_NAME_PATTERN}$",
        description="Run on the node that advertises camera:<camera> (lis node --camera NAME), "
                    "where the camera is; None: any node.")

    @field_validator("sinks")
    @classmethod
    def _some_sink(cls, sinks: tuple[PipelineSink, ...]) -> tuple[PipelineSink, ...]:
        # Checked here rather than by min_length, which also fires when a sink is invalid.
        if not sinks:
            raise ValueError("no sink: give at least one (mqtt or feedback)")
        return sinks

    @property
    def record_file(self) -> Path | None:
        """The folder source's record of files inferred; None for other sources."""
        if not isinstance(self.source, FolderSource):
            return None
        return self.source.record_file or self.state_directory.expanduser() / f"{self.name}.seen"
