"""What a pipeline publishes: the Greengrass v2 DLR components' message, or lis's own.

``greengrass-v2``, as ``aws.greengrass.DLRImageClassification`` and
``aws.greengrass.DLRObjectDetection`` publish it::

    {"timestamp": "2026-12-04 10:01:02.123456",
     "inference-type": "object-detection",
     "inference-description": "Top 5 predictions with score 0.3 or above ",
     "inference-results": [{"Label": "dog", "Score": "0.87", "Boundaries": "[ 10.  20. 300. 400.]"}]}

The description names the top-k and threshold in force (the trailing space is
theirs); scores and boxes are strings; ``Boundaries`` (detection only) is a
float32 NumPy array's ``str``, in the model's input pixels, as the components'
consumers parse it (``np.fromstring(b[1:-1], sep=" ")``); results go highest
score first, at most top-k, each scoring at least the threshold.

``lis``: the service's own answer (the connector's output, parsed) with where
and when the frame came from and a sequence number, so a consumer sees what
was lost::

    {"pipeline": "door", "service": "objectDetection", "inference-type": "object-detection",
     "source": "camera:0", "frame": 812, "frame-time": "2026-12-04T10:01:02.101+00:00",
     "sequence": 57, "output": {"prediction": [[0, 0.87, 0.1, 0.2, 0.5, 0.6]]}}
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vocabulary.pipeline_specs import MqttSink

__all__ = ["Inferred", "greengrass_v2_message", "lis_message", "message_for", "parse_output"]


@dataclass(frozen=True)
class Inferred:
    """One frame's answer from the service, with what the messages say about it."""

    pipeline: str
    service: str
    algorithm: str
    source: str  # the camera, stream, or file the frame came from
    frame: int  # the frame's number in its source (frames skipped make gaps)
    frame_time: dt.datetime  # when the frame was read (UTC)
    sequence: int  # this pipeline's answers, counted from 1
    output: Any  # the connector's output, parsed from its JSON text
    labels: Sequence[str] | None = None  # class names, by class id
    input_size: tuple[int, int] = (512, 512)  # the model's input (width, height)


def _label(labels: Sequence[str] | None, class_id: int) -> str:
    return labels[class_id] if labels is not None and 0 <= class_id < len(labels) else str(class_id)


def _description(sink: MqttSink) -> str:
    return f"Top {sink.top_k} predictions with score {sink.score_threshold} or above "


def _wanted(sink: MqttSink, label: str) -> bool:
    return sink.labels is None or label in sink.labels


def _classification_results(result: Inferred, sink: MqttSink) -> list[dict[str, str]]:
    probabilities = [float(p) for p in result.output]
    ranked = sorted(range(len(probabilities)), key=lambda i: -probabilities[i])
    named = [(_label(result.labels, i), probabilities[i]) for i in ranked]
    kept = [(label, p) for label, p in named if _wanted(sink, label)][:sink.top_k]
    return [{"Label": label, "Score": str(p)} for label, p in kept if p >= sink.score_threshold]


def _boundaries(row: Sequence[float], input_size: tuple[int, int]) -> str:
    width, height = input_size
    scale = np.array([width, height, width, height], dtype=np.float64)
    return str((np.asarray(row[2:6], dtype=np.float64) * scale).astype(np.float32))


def _detection_results(result: Inferred, sink: MqttSink) -> list[dict[str, str]]:
    # The service's rows come highest score first, padding rows already dropped.
    results: list[dict[str, str]] = []
    for row in result.output["prediction"]:
        if len(results) == sink.top_k:
            break
        label = _label(result.labels, int(row[0]))
        if float(row[1]) >= sink.score_threshold and _wanted(sink, label):
            results.append({"Label": label, "Score": str(float(row[1])),
                            "Boundaries": _boundaries(row, result.input_size)})
    return results


def greengrass_v2_message(result: Inferred, sink: MqttSink,
                          now: dt.datetime | None = None) -> dict[str, Any]:
    """The DLR components' message for ``result``, with the sink's top-k, threshold and labels.

    ``timestamp`` is ``str(datetime.now())``, local time, as theirs is.
    """
    detection = result.algorithm == "object-detection"
    results = _detection_results(result, sink) if detection else \
        _classification_results(result, sink)
    return {"timestamp": str(now or dt.datetime.now()),
            "inference-type": result.algorithm,
            "inference-description": _description(sink),
            "inference-results": results}


def lis_message(result: Inferred) -> dict[str, Any]:
    """The service's answer as the connector gave it, with its frame's provenance."""
    return {"pipeline": result.pipeline, "service": result.service,
            "inference-type": result.algorithm, "source": result.source,
            "frame": result.frame, "frame-time": result.frame_time.isoformat(),
            "sequence": result.sequence, "output": result.output}


def message_for(result: Inferred, sink: MqttSink) -> dict[str, Any]:
    """The payload ``sink`` publishes for ``result``, in its format."""
    if sink.format == "lis":
        return lis_message(result)
    return greengrass_v2_message(result, sink)


def parse_output(body: bytes) -> Any:
    """The connector's output (JSON text: a list of probabilities, or ``{"prediction": ...}``)."""
    return json.loads(body)
