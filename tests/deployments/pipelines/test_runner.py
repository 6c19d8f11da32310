"""A pipeline's loop with real parts: a video "camera", a folder, the suite's MQTT broker.

The service is the tiny classifier run by lis's own inference path; where a test
needs a slow service, its ``infer`` holds each answer until the camera has read
a few more frames (a condition, not a time).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from camera import jpeg_bytes
from peers import MqttBroker
from waiting import wait_until

from deployments.feedback.mqtt import MqttPublisher
from deployments.pipelines.runner import PipelineRunner
from deployments.pipelines.sinks import MqttResults
from deployments.pipelines.sources import open_source
from vocabulary.errors import InvalidImage, ServiceUnavailable
from vocabulary.feedback_specs import MqttSpec
from vocabulary.pipeline_specs import MqttSink, PipelineSpec

TOPIC = "lis/test/pipeline"


@pytest.fixture
def publisher(mqtt_broker: MqttBroker) -> Any:
    made: list[MqttPublisher] = []

    def make(name: str) -> MqttPublisher:
        # Reconnect within 0.2-1 s: the broker-restart test should not wait minutes.
        one = MqttPublisher(MqttSpec(port=mqtt_broker.port, client_id=f"lis-test-{name}"),
                            reconnect_min_s=0.2, reconnect_max_s=1.0)
        one.start()
        made.append(one)
        return one

    yield make
    for one in made:
        one.close()


def _runner(spec: PipelineSpec, publisher: MqttPublisher, infer: Callable[[bytes, str], Any],
            facts: Callable[[], tuple]) -> PipelineRunner:
    sinks = [MqttResults(publisher, sink, sink.topic or TOPIC) for sink in spec.sinks]
    return PipelineRunner(spec, open_source(spec), sinks, infer, facts)


def _spec(source: dict[str, Any], tmp_path: Path, **extra: Any) -> PipelineSpec:
    sinks = extra.pop("sinks", [{"type": "mqtt", "topic": TOPIC, "format": "lis"}])
    return PipelineSpec.model_validate({"name": "test-pipe", "service": "imageClassification",
                                        "source": source, "sinks": sinks,
                                        "state_directory": str(tmp_path / "state"), **extra})


def _write_atomically(path: Path, body: bytes) -> None:
    scratch = path.with_suffix(".part")  # not an image name: the folder source ignores it
    scratch.write_bytes(body)
    scratch.rename(path)


def test_a_folders_files_are_each_inferred_once_also_across_a_restart(
        tmp_path: Path, mqtt_broker: MqttBroker, publisher: Any, classify: Any,
        classifier_facts: Any) -> None:
    folder = tmp_path / "incoming"
    folder.mkdir()
    for index in range(2):
        _write_atomically(folder / f"before-{index}.jpg", jpeg_bytes(index))
    spec = _spec({"type": "folder", "path": str(folder)}, tmp_path)
    runner = _runner(spec, publisher("folder-1"), classify, classifier_facts)
    runner.start()
    try:
        for index in range(3):  # arriving while the pipeline runs
            _write_atomically(folder / f"during-{index}.png", jpeg_bytes(10 + index))
        wait_until(lambda: len(mqtt_broker.messages(TOPIC)) >= 5, timeout_s=30,
                   message="five results published")
    finally:
        runner.stop()
    _write_atomically(folder / "after-restart.jpg", jpeg_bytes(20))
    again = _runner(spec, publisher("folder-2"), classify, classifier_facts)
    again.start()
    try:
        wait_until(lambda: len(mqtt_broker.messages(TOPIC)) >= 6, timeout_s=30,
                   message="the new file's result")
        # Give it the chance to infer an old file again: one more folder listing at least.
        new = folder / "last.jpg"
        _write_atomically(new, jpeg_bytes(30))
        wait_until(lambda: len(mqtt_broker.messages(TOPIC)) >= 7, timeout_s=30,
                   message="the last file's result")
    finally:
        again.stop()
    sources = [Path(m["source"]).name for m in mqtt_broker.messages(TOPIC)]
    assert sorted(sources) == sorted(["before-0.jpg", "before-1.jpg", "during-0.png",
                                      "during-1.png", "during-2.png", "after-restart.jpg",
                                      "last.jpg"])
    assert again.stats()["frames_inferred"] == 2
    assert all(len(m["output"]) == 3 for m in mqtt_broker.messages(TOPIC))


def test_a_folder_moves_or_deletes_what_it_inferred(
        tmp_path: Path, mqtt_broker: MqttBroker, publisher: Any, classify: Any,
        classifier_facts: Any) -> None:
    folder, done = tmp_path / "in", tmp_path / "done"
    folder.mkdir()
    spec = _spec({"type": "folder", "path": str(folder), "after": "move",
                  "move_to": str(done)}, tmp_path)
    runner = _runner(spec, publisher("move"), classify, classifier_facts)
    runner.start()
    try:
        _write_atomically(folder / "a.jpg", jpeg_bytes(1))
        wait_until(lambda: (done / "a.jpg").exists(), timeout_s=30, message="a.jpg moved")
    finally:
        runner.stop()
    assert not (folder / "a.jpg").exists()
    assert [Path(m["source"]).name for m in mqtt_broker.messages(TOPIC)] == ["a.jpg"]


def test_a_bad_image_is_recorded_and_not_retried_an_absent_service_is(
        tmp_path: Path, mqtt_broker: MqttBroker, publisher: Any, classifier_facts: Any) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    calls: list[str] = []
    available = threading.Event()

    def infer(body: bytes, content_type: str) -> str:
        calls.append(body.decode())
        if body == b"not an image":
            raise InvalidImage("not a JPEG")
        if not available.is_set():
            raise ServiceUnavailable("imageClassification", "no replica is running")
        return "[0.5,0.25,0.25]"

    spec = _spec({"type": "folder", "path": str(folder)}, tmp_path)
    runner = _runner(spec, publisher("bad"), infer, classifier_facts)
    (folder / "bad.jpg").write_bytes(b"not an image")
    (folder / "good.jpg").write_bytes(b"fine")
    runner.start()
    try:
        wait_until(lambda: calls.count("fine") >= 2, timeout_s=30,
                   message="the good file tried again while the service is away")
        available.set()
        wait_until(lambda: mqtt_broker.messages(TOPIC), timeout_s=30, message="its result")
    finally:
        runner.stop()
    assert calls.count("not an image") == 1
    stats = runner.stats()
    assert stats["frames_inferred"] == 1 and stats["frames_failed"] >= 3
    assert stats["last_error"].startswith("ServiceUnavailable")


def test_latest_frame_a_slow_service_skips_frames_and_no_queue_builds(
        tmp_path: Path, mqtt_broker: MqttBroker, publisher: Any, classify: Any,
        classifier_facts: Any, video_file: Path) -> None:
    spec = _spec({"type": "stream", "url": str(video_file)}, tmp_path)
    runner: PipelineRunner | None = None
    seen: list[tuple[int, int, int]] = []  # (read, skipped, inferred) when each call began

    def slow(body: bytes, content_type: str) -> str:
        assert runner is not None
        source = runner.source
        seen.append((source.read, source.skipped, runner.inferred))
        # The service takes as long as the camera needs for 5 more frames.
        start = source.read
        wait_until(lambda: source.read >= start + 5, timeout_s=30, message="5 more frames")
        return classify(body, content_type)

    runner = _runner(spec, publisher("latest"), slow, classifier_facts)
    runner.start()
    try:
        wait_until(lambda: len(mqtt_broker.messages(TOPIC)) >= 6, timeout_s=60,
                   message="six results")
    finally:
        runner.stop()
    frames = [m["frame"] for m in mqtt_broker.messages(TOPIC)]
    # Each result is for the newest frame when the service was free: 5 or more frames later.
    assert all(b - a >= 5 for a, b in zip(frames, frames[1:])), frames
    skipped = [s for _, s, _ in seen]
    assert skipped == sorted(skipped) and skipped[-1] > skipped[0] >= 0
    # No queue: every frame read was inferred, skipped, or is the one frame held.
    for read, skipped_then, inferred in seen:
        assert 0 <= read - skipped_then - inferred <= 2, seen
    stats = runner.stats()
    assert stats["frames_skipped"] >= 4 * 5
    assert stats["source"] == str(video_file)


def test_the_broker_away_results_are_buffered_then_the_oldest_dropped_and_counted(
        tmp_path: Path, mqtt_broker: MqttBroker, publisher: Any, classify: Any,
        classifier_facts: Any, jpeg: bytes) -> None:
    image = tmp_path / "scene.jpg"
    image.write_bytes(jpeg)
    sinks = [{"type": "mqtt", "topic": TOPIC, "format": "lis", "buffer_messages": 5}]
    spec = _spec({"type": "image", "path": str(image)}, tmp_path, interval_s=0.05, sinks=sinks)
    client = publisher("broker-away")
    runner = _runner(spec, client, classify, classifier_facts)
    runner.start()
    try:
        wait_until(lambda: len(mqtt_broker.messages(TOPIC)) >= 3, timeout_s=30,
                   message="results before the broker stops")
        mqtt_broker.stop()
        wait_until(lambda: runner.stats()["dropped"] >= 10, timeout_s=60,
                   message="results dropped while the broker is away")
        assert runner.stats()["buffered"] == 5
        mqtt_broker.start()
        resumed_after = runner.sequence
        wait_until(lambda: max(m["sequence"] for m in mqtt_broker.messages(TOPIC))
                   > resumed_after + 5, timeout_s=60, message="publishing resumed")
    finally:
        runner.stop()
        client.close()  # nothing more in flight: the record is final
    received = {m["sequence"] for m in mqtt_broker.messages(TOPIC)}
    lost = set(range(1, max(received) + 1)) - received
    stats = runner.stats()
    assert lost and len(lost) == stats["dropped"], (sorted(lost), stats)
    assert stats["buffered"] == 0 or max(received) < runner.sequence


def test_a_missing_image_is_reported_and_the_loop_goes_on(
        tmp_path: Path, mqtt_broker: MqttBroker, publisher: Any, classify: Any,
        classifier_facts: Any, jpeg: bytes) -> None:
    image = tmp_path / "later.jpg"
    spec = _spec({"type": "image", "path": str(image)}, tmp_path, interval_s=0.05)
    runner = _runner(spec, publisher("missing"), classify, classifier_facts)
    runner.start()
    try:
        wait_until(lambda: runner.stats()["state"] == "SOURCE_FAILING", timeout_s=30,
                   message="the missing image reported")
        assert "cannot read the image" in runner.stats()["last_error"]
        image.write_bytes(jpeg)
        wait_until(lambda: mqtt_broker.messages(TOPIC), timeout_s=30, message="a result")
    finally:
        runner.stop()
    assert runner.stats()["state"] == "STOPPED"
    assert json.dumps(runner.stats())  # what GET /pipelines returns is JSON


def test_an_mjpeg_stream_that_drops_is_reopened_and_results_resume(
        tmp_path: Path, mqtt_broker: MqttBroker, publisher: Any, classify: Any,
        classifier_facts: Any) -> None:
    from camera import MjpegServer, numbered_frames

    import cv2

    frames = [cv2.imencode(".jpg", frame)[1].tobytes() for frame in numbered_frames(20)]
    camera = MjpegServer(frames, frames_per_connection=40)
    camera.start()
    spec = _spec({"type": "stream", "url": camera.url, "reopen_max_s": 1}, tmp_path)
    runner = _runner(spec, publisher("mjpeg"), classify, classifier_facts)
    runner.start()
    try:
        wait_until(lambda: camera.connections >= 3 and runner.source.reopened >= 2,
                   timeout_s=60, message="the stream dropped and reopened twice")
        published = len(mqtt_broker.messages(TOPIC))
        wait_until(lambda: len(mqtt_broker.messages(TOPIC)) > published, timeout_s=30,
                   message="results after the reopening")
    finally:
        runner.stop()
        camera.stop()
    stats = runner.stats()
    assert stats["stream_reopened"] >= 2
    assert stats["frames_read"] >= 80  # frames of more than two connections
    assert stats["source"] == camera.url


def test_an_unreachable_stream_is_reported_and_retried_with_backoff(
        tmp_path: Path, publisher: Any, classify: Any, classifier_facts: Any) -> None:
    from peers import free_port

    url = f"http://127.0.0.1:{free_port()}/video.mjpg"  # nothing listens there
    spec = _spec({"type": "stream", "url": url, "reopen_max_s": 1}, tmp_path)
    runner = _runner(spec, publisher("unreachable"), classify, classifier_facts)
    runner.start()
    try:
        stats = wait_until(lambda: (s := runner.stats())["stream_reopened"] >= 2 and s,
                           timeout_s=60, message="two tries to reopen it")
    finally:
        runner.stop()
    assert stats["state"] == "SOURCE_FAILING"
    assert stats["last_error"] == f"cannot open {url}"
    assert stats["frames_read"] == 0


def test_an_answer_that_is_not_the_connectors_output_is_a_failure_not_a_crash(
        tmp_path: Path, publisher: Any, classifier_facts: Any, jpeg: bytes) -> None:
    image = tmp_path / "scene.jpg"
    image.write_bytes(jpeg)
    spec = _spec({"type": "image", "path": str(image)}, tmp_path, interval_s=0.05)
    runner = _runner(spec, publisher("garbage"), lambda body, ct: "<html>", classifier_facts)
    runner.start()
    try:
        stats = wait_until(lambda: (s := runner.stats())["frames_failed"] >= 2 and s,
                           timeout_s=30, message="two failed frames")
    finally:
        runner.stop()
    assert stats["state"] == "RUNNING" and runner.crashed is None
    assert stats["last_error"].startswith("InferenceFailed: ")
    assert "answered no JSON" in stats["last_error"]


def test_a_watched_folder_that_goes_away_is_reported_and_watched_again(
        tmp_path: Path, mqtt_broker: MqttBroker, publisher: Any, classify: Any,
        classifier_facts: Any) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    spec = _spec({"type": "folder", "path": str(folder)}, tmp_path)
    runner = _runner(spec, publisher("gone"), classify, classifier_facts)
    runner.start()
    try:
        folder.rmdir()
        wait_until(lambda: runner.stats()["state"] == "SOURCE_FAILING", timeout_s=30,
                   message="the missing folder reported")
        assert runner.stats()["last_error"] == f"cannot list {folder}: no such folder: {folder}"
        folder.mkdir()
        _write_atomically(folder / "back.jpg", jpeg_bytes(3))
        wait_until(lambda: mqtt_broker.messages(TOPIC), timeout_s=30, message="a result")
    finally:
        runner.stop()
    assert runner.stats()["last_error"] is None


def test_a_stream_gone_silent_is_reopened_after_its_timeout(
        tmp_path: Path, mqtt_broker: MqttBroker, publisher: Any, classify: Any,
        classifier_facts: Any) -> None:
    from camera import MjpegServer, numbered_frames

    import cv2

    frames = [cv2.imencode(".jpg", frame)[1].tobytes() for frame in numbered_frames(10)]
    camera = MjpegServer(frames, frames_per_connection=30, stall=True)
    camera.start()
    spec = _spec({"type": "stream", "url": camera.url, "reopen_max_s": 1, "timeout_s": 1},
                 tmp_path)
    runner = _runner(spec, publisher("silent"), classify, classifier_facts)
    runner.start()
    try:
        wait_until(lambda: camera.connections >= 3, timeout_s=60,
                   message="the silent stream given up and opened again, twice")
        published = len(mqtt_broker.messages(TOPIC))
        wait_until(lambda: len(mqtt_broker.messages(TOPIC)) > published, timeout_s=30,
                   message="results from the new connection")
    finally:
        runner.stop()
        camera.stop()
    assert runner.stats()["stream_reopened"] >= 2
