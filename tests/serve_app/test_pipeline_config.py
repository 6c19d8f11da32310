"""A services file's ``pipelines:``: read into typed specs, and every mistake named at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_app.config import load_config
from vocabulary.errors import ConfigError
from vocabulary.feedback_specs import MqttSpec
from vocabulary.pipeline_specs import FolderSource, ImageSource, MqttSink, StreamSource

SERVICES = """\
services:
  - LocalInferenceServiceName: objectDetection
    algorithm: object-detection
    platform: x86-64
    model: model
  - LocalInferenceServiceName: imageClassification
    algorithm: image-classification
    platform: x86-64
    model: model
"""


def _load(tmp_path: Path, pipelines: str, extra: str = "") -> object:
    (tmp_path / "incoming").mkdir(exist_ok=True)
    (tmp_path / "scene.jpg").write_bytes(b"\xff\xd8")
    (tmp_path / "clip.avi").write_bytes(b"")
    path = tmp_path / "lis.yaml"
    path.write_text(SERVICES + extra + "pipelines:\n" + pipelines)
    return load_config([path])


def _problems(tmp_path: Path, pipelines: str, extra: str = "") -> list[str]:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, pipelines, extra)
    return [f"{issue.parameter}: {issue.problem}" for issue in caught.value.issues]


def test_pipelines_load_with_paths_made_absolute_and_the_services_algorithm(
        tmp_path: Path) -> None:
    config = _load(tmp_path, """\
  - name: door
    service: objectDetection
    source: {type: stream, url: clip.avi}
    sinks: [{type: mqtt}, {type: mqtt, topic: site/door, format: lis, top_k: 2}]
  - name: inbox
    service: imageClassification
    source: {type: folder, path: incoming, after: move, move_to: done}
    state_directory: state
    sinks: [{type: mqtt, topic: site/inbox}]
  - name: still
    service: imageClassification
    source: {type: image, path: scene.jpg}
    interval_s: 10
    sinks: [{type: mqtt}]
""", extra="mqtt: {host: broker.local, port: 8883}\n")
    door, inbox, still = config.pipelines  # type: ignore[attr-defined]
    assert door.algorithm == "object-detection" and still.algorithm == "image-classification"
    assert isinstance(door.source, StreamSource) and door.source.url == str(tmp_path / "clip.avi")
    assert door.sinks == (MqttSink(), MqttSink(topic="site/door", format="lis", top_k=2))
    assert door.interval_s == 0  # as fast as the service answers
    assert isinstance(inbox.source, FolderSource)
    assert inbox.source.move_to == tmp_path / "done"
    assert inbox.record_file == tmp_path / "state" / "inbox.seen"
    assert isinstance(still.source, ImageSource) and still.interval_s == 10
    assert config.mqtt == MqttSpec(host="broker.local", port=8883)  # type: ignore[attr-defined]


def test_every_mistake_in_pipelines_is_named_at_once(tmp_path: Path) -> None:
    problems = _problems(tmp_path, """\
  - name: door
    service: objectDetectoin
    source: {type: folder, path: missing, after: move}
    sinks: [{type: mqtt, topic: "site/+/door"}, {type: mqtt, format: lis}]
  - name: door
    service: objectDetection
    source: {type: camera, device: 0}
    sinks: [{type: mqtt}]
  - name: still
    service: imageClassification
    source: {type: image, path: nothere.jpg}
    sinks: [{type: mqtt, topic: ""}, {type: feedback, config_id: field-data}]
  - name: zero
    service: imageClassification
    source: {type: image, path: scene.jpg}
    interval_s: "0"
    sinks: [{type: mqtt}]
  - name: fast
    service: imageClassification
    source: {type: stream, url: "ftp://camera.local/x"}
    interval_s: fast
    sinks: []
  - name: slow
    service: imageClassification
    source: {type: webcam}
    interval_s: -5
    sinks: [{type: mqtt, topic: "$SYS/x"}]
""")
    expected = [
        f"source.path: no such folder: {tmp_path / 'missing'}",
        "source.move_to: give move_to with after: move, and only then",
        "sinks[1].topic: give a topic for the lis format (only greengrass-v2 has default topics)",
        "service: 'objectDetectoin' names no inference service (defined: imageClassification, "
        "objectDetection)",
        "sinks.0.mqtt.topic: topic 'site/+/door' has a wildcard (+ or #): those are for "
        "subscribing, not publishing",
        "name: 'door' is already the name of",
        f"source.path: no such image file: {tmp_path / 'nothere.jpg'}",
        "interval_s: an image re-read as fast as the service answers is the same picture "
        "inferred over and over: give interval_s in seconds",
        "interval_s: an image re-read as fast as the service answers is the same picture "
        "inferred over and over: give interval_s in seconds",
        "sinks[1].config_id: 'field-data' names no configuration of an MLFeedback connector "
        "(defined: none)",
        "sinks.0.mqtt.topic: topic is empty",
        "source.url: 'ftp://camera.local/x': a stream is http, https, rtsp, rtsps, rtmp or a "
        "video file's path",
        "interval_s: Input should be a valid number",
        "sinks: no sink: give at least one (mqtt or feedback)",
        "source: Input tag 'webcam' found using 'type' does not match any of the expected tags",
        "interval_s: Input should be greater than or equal to 0, got -5",
        "sinks.0.mqtt.topic: topic '$SYS/x' starts with $: such topics are the broker's own",
    ]
    for text in expected:
        assert any(problem.startswith(text) for problem in problems), (text, problems)
    assert len(problems) == len(expected), problems


def test_unknown_keys_in_a_pipeline_are_refused(tmp_path: Path) -> None:
    problems = _problems(tmp_path, """\
  - name: door
    service: objectDetection
    source: {type: folder, path: incoming, pattern: "*.jpg"}
    sinks: [{type: mqtt, qos: 2}]
    InferenceInterval: 5
""")
    assert any(p.startswith("InferenceInterval: unknown key") for p in problems), problems
    assert any(p.startswith("source.folder.pattern: unknown key") for p in problems), problems
    assert any(p.startswith("sinks.0.mqtt.qos: unknown key") for p in problems), problems


def test_a_pipelines_camera_is_a_name_a_node_can_advertise(tmp_path: Path) -> None:
    config = _load(tmp_path, """\
  - {name: door, service: objectDetection, camera: door-cam.1,
     source: {type: camera, device: 0}, sinks: [{type: mqtt}]}
""")
    assert config.pipelines[0].camera == "door-cam.1"  # type: ignore[attr-defined]
    problems = _problems(tmp_path, """\
  - {name: door, service: objectDetection, camera: front door,
     source: {type: camera, device: 0}, sinks: [{type: mqtt}]}
""")
    assert len(problems) == 1 and problems[0].startswith("camera: String should match pattern")
    problems = _problems(tmp_path, """\
  - {name: door, service: objectDetection,
     source: {type: camera, device: /dev/no-such-video}, sinks: [{type: mqtt}]}
""")
    assert problems == ["source.device: no such camera device: /dev/no-such-video"]


def test_boxes_are_drawn_for_detectors_only(tmp_path: Path) -> None:
    sinks = "[{type: feedback, config_id: frames, when: detections, draw: true}]"
    feedback = """\
connectors:
  - Id: Feedback
    ConnectorArn: arn:aws:greengrass:us-west-2::/connectors/MLFeedback/versions/1
    Parameters:
      FeedbackConfigurationMap: '{"frames": {"s3-bucket-name": "frames", "content-type": "image/jpeg"}}'
feedback: {storage: {s3_endpoint_url: "file:///tmp/lis-test-store"}}
"""
    config = _load(tmp_path, f"""\
  - {{name: door, service: objectDetection, source: {{type: camera, device: 0}}, sinks: {sinks}}}
""", extra=feedback)
    assert config.pipelines[0].sinks[0].draw is True  # type: ignore[attr-defined]
    problems = _problems(tmp_path, f"""\
  - {{name: inbox, service: imageClassification, source: {{type: folder, path: incoming}},
     sinks: {sinks}}}
""", extra=feedback)
    assert problems == ["sinks[0].draw: only object-detection services have boxes to draw, "
                        "not image-classification"]


# --- any value, in any key: a ConfigError or a config, never a crash ---------------------

_SCALARS = (st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True)
            | st.text(max_size=12) | st.sampled_from(["camera", "stream", "folder", "image",
                                                     "mqtt", "feedback", "lis", "move", "0",
                                                     "/dev/video0", "http://x/y", "incoming"]))
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.sampled_from(["type", "path", "url", "device",
                                                          "topic", "format", "after",
                                                          "move_to", "config_id", "draw",
                                                          "when", "x"]), inner, max_size=4),
                       max_leaves=8)
_ENTRIES = st.dictionaries(st.sampled_from(["name", "service", "source", "sinks", "interval_s",
                                            "camera", "state_directory", "algorithm", "y"]),
                           _VALUES, max_size=7)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entry=_ENTRIES)
def test_any_pipeline_entry_is_a_config_or_a_config_error(tmp_path: Path, entry: dict) -> None:
    import json

    path = tmp_path / "lis.json"
    path.write_text(json.dumps({
        "services": [{"LocalInferenceServiceName": "objectDetection",
                      "algorithm": "object-detection", "platform": "x86-64", "model": "m"}],
        "pipelines": [entry]}))
    try:
        load_config([path])
    except ConfigError:
        pass


@st.composite
def _nearly_valid(draw: st.DrawFn) -> dict:
    """A valid entry of each source type, with one or two of its values made anything."""
    kind = draw(st.sampled_from(["camera", "stream", "folder", "image"]))
    source = {"camera": {"device": 0}, "stream": {"url": "http://cam/x.mjpg"},
              "folder": {"path": "incoming", "after": "move", "move_to": "done"},
              "image": {"path": "scene.jpg"}}[kind]
    entry = {"name": "door", "service": "objectDetection", "interval_s": 1,
             "source": {"type": kind, **source},
             "sinks": [{"type": "mqtt", "format": "lis", "topic": "a/b"},
                       {"type": "feedback", "config_id": "frames", "draw": True}]}
    containers = [entry, entry["source"], entry["sinks"][0], entry["sinks"][1]]
    for _ in range(draw(st.integers(1, 2))):
        where = draw(st.sampled_from(containers))
        key = draw(st.sampled_from(sorted(where) + ["when", "top_k", "labels", "patterns"]))
        where[key] = draw(_VALUES)
    return entry


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entry=_nearly_valid())
def test_a_nearly_valid_entry_is_a_config_or_a_config_error(tmp_path: Path, entry: dict) -> None:
    import json

    (tmp_path / "incoming").mkdir(exist_ok=True)
    (tmp_path / "scene.jpg").write_bytes(b"\xff\xd8")
    path = tmp_path / "lis.json"
    path.write_text(json.dumps({
        "services": [{"LocalInferenceServiceName": "objectDetection",
                      "algorithm": "object-detection", "platform": "x86-64", "model": "m"}],
        "connectors": [{"Id": "Feedback", "ConnectorArn":
                        "arn:aws:greengrass:us-west-2::/connectors/MLFeedback/versions/1",
                        "Parameters": {"FeedbackConfigurationMap": json.dumps(
                            {"frames": {"s3-bucket-name": "frames",
                                        "content-type": "image/jpeg"}})}}],
        "feedback": {"storage": {"s3_endpoint_url": "file:///tmp/lis-fuzz-store"}},
        "pipelines": [entry]}))
    try:
        load_config([path])
    except ConfigError:
        pass
