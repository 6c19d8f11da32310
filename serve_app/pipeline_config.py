"""A services file's ``pipelines:`` section, read into ``PipelineSpec``s.

Each entry is checked on its own (``vocabulary.pipeline_specs``: keys, types,
topics, rates) and against the rest of the configuration: the service it feeds
exists (and gives the pipeline its algorithm), a folder or image is there, an
ML Feedback sink names a config of the MLFeedback connector. Paths are made
absolute, relative to the file that holds them. Every problem is reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from serve_app.connector_services import Collected, issues_from, local_path, shown
from vocabulary.feedback_specs import FeedbackConnectorSpec
from vocabulary.pipeline_specs import PipelineSpec
from vocabulary.specs import ServiceSpec

__all__ = ["PipelineEntry", "parse_pipelines", "pipeline_entries"]

_STREAM_SCHEMES = ("http", "https", "rtsp", "rtsps", "rtmp")


@dataclass(frozen=True)
class PipelineEntry:
    """One ``pipelines:`` entry as found: where, its raw mapping, its file's folder."""

    where: str
    raw: Mapping[str, Any]
    base_dir: Path


def _with_paths(raw: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """``raw`` with its paths absolute (relative to ``base``); other values untouched."""
    entry = dict(raw)
    source = entry.get("source")
    if isinstance(source, dict):
        source = dict(source)
        for key in ("path", "move_to", "record_file"):
            if isinstance(source.get(key), str):
                source[key] = str(local_path(source[key], base))
        url = source.get("url")
        if source.get("type") == "stream" and isinstance(url, str) and not urlsplit(url).scheme:
            source["url"] = str(local_path(url, base))
        entry["source"] = source
    if isinstance(entry.get("state_directory"), str):
        entry["state_directory"] = str(local_path(entry["state_directory"], base))
    return entry


def _source_problems(source: Any) -> list[tuple[str, str]]:
    """What is wrong with a source beyond its types: missing folders and files, a bad URL."""
    if not isinstance(source, dict):
        return []
    kind, problems = source.get("type"), []
    path = source.get("path")
    if kind == "folder" and isinstance(path, str) and not Path(path).is_dir():
        problems.append(("source.path", f"no such folder: {path}"))
    if kind == "image" and isinstance(path, str) and not Path(path).is_file():
        problems.append(("source.path", f"no such image file: {path}"))
    if kind == "folder" and (source.get("after") == "move") != ("move_to" in source):
        problems.append(("source.move_to", "give move_to with after: move, and only then"))
    device = source.get("device")
    if kind == "camera" and isinstance(device, str) and not Path(device).exists():
        problems.append(("source.device", f"no such camera device: {device}"))
    url = source.get("url")
    if kind == "stream" and isinstance(url, str):
        scheme = urlsplit(url).scheme
        if scheme and scheme not in _STREAM_SCHEMES:
            problems.append(("source.url", f"{url!r}: a stream is {', '.join(_STREAM_SCHEMES)}"
                                           " or a video file's path"))
        elif not scheme and not Path(url).is_file():
            problems.append(("source.url", f"no such video file: {url}"))
    return problems


def _sink_problems(sinks: Any, feedback: FeedbackConnectorSpec | None) -> list[tuple[str, str]]:
    problems = []
    for index, sink in enumerate(sinks if isinstance(sinks, list) else ()):
        if not isinstance(sink, dict):
            continue
        if sink.get("type", "mqtt") == "mqtt" and sink.get("format") == "lis" \
                and sink.get("topic") is None:
            problems.append((f"sinks[{index}].topic", "give a topic for the lis format (only "
                                                      "greengrass-v2 has default topics)"))
        config_id = sink.get("config_id")
        if sink.get("type") == "feedback" and isinstance(config_id, str):
            known = sorted(feedback.configs) if feedback else []
            if config_id not in known:
                problems.append((f"sinks[{index}].config_id", f"{config_id!r} names no "
                                 f"configuration of an MLFeedback connector (defined: "
                                 f"{', '.join(known) or 'none'})"))
    return problems


def _draw_problems(sinks: Any, algorithm: str) -> list[tuple[str, str]]:
    if algorithm == "object-detection":
        return []
    return [(f"sinks[{index}].draw", f"only object-detection services have boxes to draw, "
                                     f"not {algorithm}")
            for index, sink in enumerate(sinks if isinstance(sinks, list) else ())
            if isinstance(sink, dict) and sink.get("draw") is True]


def _rate_problems(entry: Mapping[str, Any]) -> list[tuple[str, str]]:
    source = entry.get("source")
    try:
        interval = float(entry.get("interval_s", 0))  # as the spec will read it: "0" too
    except (TypeError, ValueError):
        return []  # not a number: the spec says so
    if isinstance(source, dict) and source.get("type") == "image" and interval == 0:
        return [("interval_s", "an image re-read as fast as the service answers is the same "
                               "picture inferred over and over: give interval_s in seconds")]
    return []


def _parse_one(entry: PipelineEntry, services: Mapping[str, ServiceSpec],
               feedback: FeedbackConnectorSpec | None, found: Collected) -> PipelineSpec | None:
    raw = _with_paths(entry.raw, entry.base_dir)
    problems = _source_problems(raw.get("source")) + _sink_problems(raw.get("sinks"), feedback) \
        + _rate_problems(raw)
    service = raw.get("service")
    if isinstance(service, str) and service not in services:
        problems.append(("service", f"{service!r} names no inference service (defined: "
                                    f"{', '.join(sorted(services)) or 'none'})"))
    elif isinstance(service, str):
        raw["algorithm"] = services[service].algorithm
        problems += _draw_problems(raw.get("sinks"), raw["algorithm"])
    elif "algorithm" in entry.raw:
        problems.append(("algorithm", "is the service's: leave it out"))
    for parameter, problem in problems:
        found.issue(entry.where, parameter, problem)
    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as error:
        found.issues.extend(issues_from(error, entry.where))
        return None
    return None if problems else spec


def parse_pipelines(entries: Sequence[PipelineEntry], services: Sequence[ServiceSpec],
                    feedback: FeedbackConnectorSpec | None,
                    found: Collected) -> tuple[PipelineSpec, ...]:
    """The pipelines of ``entries``; their problems are added to ``found``."""
    by_name = {spec.name: spec for spec in services}
    specs, seen = [], {}
    for entry in entries:
        name = entry.raw.get("name")
        if isinstance(name, str) and name in seen:
            found.issue(entry.where, "name", f"{name!r} is already the name of {seen[name]}")
            continue
        if isinstance(name, str):
            seen[name] = entry.where
        spec = _parse_one(entry, by_name, feedback, found)
        if spec is not None:
            specs.append(spec)
    return tuple(specs)


def pipeline_entries(value: object, where: str, base_dir: Path,
                     found: Collected) -> list[PipelineEntry]:
    """The entries of a ``pipelines:`` list; anything else is reported."""
    if not isinstance(value, list):
        found.issue(where, "pipelines", f"expected a list, got {shown(value)}")
        return []
    entries = []
    for index, raw in enumerate(value):
        here = f"{where}: pipelines[{index}]"
        if isinstance(raw, dict):
            entries.append(PipelineEntry(here, raw, base_dir))
        else:
            found.issue(here, None, f"expected a mapping, got {shown(raw)}")
    return entries
