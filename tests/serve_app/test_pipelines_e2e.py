"""A pipeline in a running lis: a folder watched, its files inferred by a service over its
replica's socket on the pipeline's node, results on the suite's MQTT broker in both formats and the frames in
ML Feedback's store, and what
``GET /pipelines``, ``/metrics`` and ``lis status`` show. Also: the pipeline's replica
killed, Ray Serve starts another, and no file is inferred twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests
from _replicas import local_requests
from camera import jpeg_bytes
from waiting import wait_until

GREENGRASS_TOPIC, LIS_TOPIC = "e2e/inbox", "e2e/inbox/lis"


def _drop(inbox: Path, name: str, seed: int) -> None:
    scratch = inbox / f"{name}.part"
    scratch.write_bytes(jpeg_bytes(seed, (96, 96)))
    scratch.rename(inbox / name)


def _pipeline(endpoint: str) -> dict:
    listing = requests.get(f"{endpoint}/pipelines", timeout=10).json()["pipelines"]
    return next(p for p in listing if p["name"] == "inbox")


def _sources(running_lis: Any) -> list[str]:
    return [Path(m["source"]).name for m in running_lis.broker.messages(LIS_TOPIC)]


def test_a_folder_pipeline_publishes_both_formats_and_reports_its_counters(
        running_lis: Any, http_endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    broker = running_lis.broker
    over_sockets = local_requests("imageClassification")
    for index in range(2):
        _drop(running_lis.inbox, f"shot-{index}.jpg", index)
    wait_until(lambda: len(broker.messages(LIS_TOPIC)) >= 2, timeout_s=120, interval_s=0.5,
               message="both files' results")
    wait_until(lambda: len(broker.messages(GREENGRASS_TOPIC)) >= 2, timeout_s=30,
               message="the greengrass-v2 messages")
    message = broker.messages(GREENGRASS_TOPIC)[0]
    assert list(message) == ["timestamp", "inference-type", "inference-description",
                             "inference-results"]
    assert message["inference-type"] == "image-classification"
    assert message["inference-description"] == "Top 5 predictions with score 0.3 or above "
    for result in message["inference-results"]:
        assert result["Label"] in ("class0", "class1", "class2")
        assert float(result["Score"]) >= 0.3
    lis = broker.messages(LIS_TOPIC)
    assert sorted(_sources(running_lis)) == ["shot-0.jpg", "shot-1.jpg"]
    assert [m["sequence"] for m in lis] == [1, 2]
    assert all(m["service"] == "imageClassification" and len(m["output"]) == 3 for m in lis)
    # One box: the pipeline reached the replica over its socket, not through Ray Serve.
    assert local_requests("imageClassification") == over_sockets + 2

    uploaded = running_lis.feedback_store / "field-samples" / "pipeline"
    wait_until(lambda: len(list(uploaded.glob("*.jpg"))) >= 2, timeout_s=60,
               message="both frames in ML Feedback's store")
    inputs = {(running_lis.inbox / name).read_bytes() for name in ("shot-0.jpg", "shot-1.jpg")}
    assert {path.read_bytes() for path in uploaded.glob("*.jpg")} == inputs
    state = wait_until(lambda: (p := _pipeline(http_endpoint))["published"] == 6 and p,
                       timeout_s=30, message="six results handed on (three sinks)")
    assert state["state"] == "RUNNING" and state["service"] == "imageClassification"
    assert (state["frames_read"], state["frames_inferred"], state["frames_skipped"],
            state["dropped"]) == (2, 2, 0, 0)
    assert state["broker_connected"] is True

    metrics = requests.get(f"{http_endpoint}/metrics", timeout=10).text
    assert 'lis_pipeline_frames_inferred_total{pipeline="inbox"} 2.0' in metrics
    assert 'lis_pipeline_results_published_total{pipeline="inbox"} 6.0' in metrics
    assert 'lis_pipeline_results_dropped_total{pipeline="inbox"} 0.0' in metrics

    from serve_app.cli import main

    assert main(["status", "--endpoint", http_endpoint]) == 0
    listing = capsys.readouterr().out
    assert "PIPELINE" in listing
    line = next(row for row in listing.splitlines() if row.startswith("inbox "))
    assert line.split()[:4] == ["inbox", "imageClassification", "RUNNING", "2"]
    assert main(["status", "--endpoint", http_endpoint, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in printed["pipelines"]] == ["inbox"]


def test_a_killed_pipeline_is_replaced_and_infers_no_file_twice(
        running_lis: Any, http_endpoint: str) -> None:
    import ray

    _drop(running_lis.inbox, "before-kill.jpg", 10)
    wait_until(lambda: "before-kill.jpg" in _sources(running_lis), timeout_s=120,
               interval_s=0.5, message="the file before the kill")
    replicas = [actor for actor in ray.util.list_named_actors(all_namespaces=True)
                if "pipeline.inbox" in actor["name"]]
    assert len(replicas) == 1, replicas
    ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]),
             no_restart=True)
    _drop(running_lis.inbox, "after-kill.jpg", 11)
    wait_until(lambda: "after-kill.jpg" in _sources(running_lis), timeout_s=180,
               interval_s=0.5, message="the new replica's result for the new file")
    # The new replica started from the record: its only file is the new one.
    # Until the ingress's handle learns the old replica is gone, /pipelines may show Ray's
    # state for it without counters.
    state = wait_until(lambda: (p := _pipeline(http_endpoint)).get("frames_inferred", 0) >= 1
                       and p, timeout_s=30, message="the new replica's counters")
    assert state["frames_inferred"] == 1 and state["state"] == "RUNNING"
    sources = _sources(running_lis)
    assert len(sources) == len(set(sources)), sources


def test_lis_pipeline_run_prints_results_of_an_image_a_folder_and_a_stream(
        running_lis: Any, http_endpoint: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from camera import numbered_frames, write_video

    from serve_app.cli import main

    image = tmp_path / "scene.jpg"
    image.write_bytes(jpeg_bytes(40, (96, 96)))
    assert main(["pipeline", "run", str(image), "--service", "imageClassification",
                 "--interval", "0.1", "--count", "2", "--score-threshold", "0",
                 "--endpoint", http_endpoint]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(printed) == 2
    assert all(m["inference-description"] == "Top 5 predictions with score 0.0 or above "
               and len(m["inference-results"]) == 3 for m in printed)

    folder = tmp_path / "shots"
    folder.mkdir()
    for index in range(3):
        _drop(folder, f"{index}.png", 50 + index)
    assert main(["pipeline", "run", str(folder), "--service", "objectDetection",
                 "--format", "lis", "--count", "3", "--endpoint", http_endpoint]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(Path(m["source"]).name for m in printed) == ["0.png", "1.png", "2.png"]
    assert all(m["inference-type"] == "object-detection" and "prediction" in m["output"]
               for m in printed)

    video = write_video(tmp_path / "camera.avi", numbered_frames(30), 30.0)
    assert main(["pipeline", "run", str(video), "--service", "objectDetection",
                 "--count", "2", "--score-threshold", "0", "--top-k", "2",
                 "--endpoint", http_endpoint]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [m["inference-type"] for m in printed] == ["object-detection"] * 2
    for message in printed:
        assert len(message["inference-results"]) <= 2
        for result in message["inference-results"]:
            # In the SSD's 512 x 512 input pixels, as the DLR component gives them.
            box = [float(v) for v in result["Boundaries"][1:-1].split()]
            assert len(box) == 4 and all(0 <= v <= 512 for v in box)


def test_lis_pipeline_run_names_an_unknown_service(
        running_lis: Any, http_endpoint: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from serve_app.cli import main

    assert main(["pipeline", "run", "0", "--service", "noSuchService",
                 "--endpoint", http_endpoint]) == 1
    assert "noSuchService" in capsys.readouterr().err
