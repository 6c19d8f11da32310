"""A pipeline's sustained rate and its frame-to-MQTT latency, on a real stack.

``measure_pipeline`` starts an MQTT broker (``tests/_mqtt_broker.py``, amqtt)
and ``lis up`` with the demo SSD and one pipeline publishing each result in the
``lis`` format, from one of two sources made of the bench's 1280x720 camera
frame:
- ``image``: the frame's JPEG file, re-read for each inference as soon as the
  last one is answered: the pipeline's own cost, compared with the same
  service's HTTP throughput at concurrency 1 on the same stack (the pipeline
  has one frame in flight), in alternating blocks: the pipeline's, then, with
  the file moved away so that the pipeline idles, HTTP's;
- ``camera``: a video of the frame at ``FPS`` frames a second, played in a
  loop as a camera gives frames, the newest inferred as fast as the service
  answers: what a camera's results look like.
A subscriber in this process takes the results for ``MEASURE_S`` seconds after
a warm-up (the image source: over its blocks): results per second, and for each
the time from its frame's read (``frame-time``, in the message) to its arrival
here. Not a test.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from benchmarks.footprint import LIS, READY_LINE, ROOT, free_port
from benchmarks.http_load import HttpLoad

SERVICE = "objectDetection"
TOPIC = "bench/pipeline"
FPS, VIDEO_S = 30, 4
IMAGE_INTERVAL_S = 0.001  # an image source needs an interval: this one never waits
WARMUP_S, MEASURE_S = 5.0, 20.0
# The image source's alternating blocks: MEASURE_S of the pipeline over BLOCKS blocks, each
# followed by HTTP_REQUESTS_PER_BLOCK requests at concurrency 1 (about as long).
BLOCKS, HTTP_REQUESTS_PER_BLOCK = 8, 300
# The pipeline has stopped when no result came for this long (its source idles 0.5 s).
QUIET_S = 0.3
READY_TIMEOUT_S = 300.0

_CONFIG = """\
services:
  - LocalInferenceServiceName: {service}
    ConnectorArn: arn:aws:greengrass:us-west-2::/connectors/ObjectDetectionx86-64/versions/1
    model: {model}
    num_cpus: 0.5
mqtt: {{host: 127.0.0.1, port: {port}}}
pipelines:
  - name: benchCamera
    service: {service}
    source: {source}
    interval_s: {interval}
    sinks:
      - {{type: mqtt, topic: {topic}, format: lis, buffer_messages: 1000}}
"""


@dataclass
class PipelineFigures:
    results: int
    seconds: float
    latencies_s: list[float]
    http_rate: float | None = None   # req/s at concurrency 1 in blocks beside the pipeline's

    @property
    def rate(self) -> float:
        return self.results / self.seconds

    def latency_ms(self, quantile: float) -> float:
        ordered = sorted(self.latencies_s)
        return 1000 * ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]


def write_video(frame_jpeg: bytes, path: Path) -> Path:
    """``VIDEO_S`` seconds of the frame at ``FPS`` (a slowly moving mark, so frames differ)."""
    frame = cv2.imdecode(np.frombuffer(frame_jpeg, np.uint8), cv2.IMREAD_COLOR)
    height, width = frame.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (width, height))
    for index in range(FPS * VIDEO_S):
        shown = frame.copy()
        cv2.circle(shown, (40 + 8 * index, 40), 20, (0, 255, 255), -1)
        writer.write(shown)
    writer.release()
    return path


def _subscriber(port: int, arrivals: list[tuple[float, dict]], lock: threading.Lock):
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="lis-bench-subscriber")

    def on_connect(client: mqtt.Client, *_: object) -> None:
        client.subscribe(TOPIC, qos=1)

    def on_message(_: mqtt.Client, __: object, message: mqtt.MQTTMessage) -> None:
        arrived = time.time()
        with lock:
            arrivals.append((arrived, json.loads(message.payload)))

    client.on_connect, client.on_message = on_connect, on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def measure_pipeline(frame_jpeg: bytes, kind: str) -> PipelineFigures:
    """Start a broker and ``lis up`` with one pipeline of ``kind`` (``image`` or ``camera``);
    measure what arrives."""
    scratch = Path(tempfile.mkdtemp(prefix="lis-bench-pipeline-"))
    if kind == "camera":
        source = f"{{type: stream, url: {write_video(frame_jpeg, scratch / 'camera.avi')}}}"
        interval = 0.0
    else:
        (scratch / "frame.jpg").write_bytes(frame_jpeg)
        source, interval = f"{{type: image, path: {scratch / 'frame.jpg'}}}", IMAGE_INTERVAL_S
    broker_port, http_port = free_port(), free_port()
    config = scratch / "services.yaml"
    config.write_text(_CONFIG.format(service=SERVICE, model=ROOT / "build/models/shapes-ssd",
                                     port=broker_port, source=source, interval=interval,
                                     topic=TOPIC))
    broker = subprocess.Popen([sys.executable, str(ROOT / "tests/_mqtt_broker.py"),
                               str(broker_port), str(scratch / "broker.jsonl")],
                              cwd=ROOT / "tests", stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    lis = subprocess.Popen([str(LIS), "up", str(config), "--port", str(http_port)], cwd=ROOT,
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    arrivals: list[tuple[float, dict]] = []
    lock = threading.Lock()
    subscriber = None
    try:
        started = time.monotonic()
        for line in lis.stdout:  # type: ignore[union-attr]
            if line.startswith(READY_LINE):
                break
            if time.monotonic() - started > READY_TIMEOUT_S:
                raise RuntimeError("lis up did not get to ready")
        else:
            raise RuntimeError("lis up ended before it was ready")
        threading.Thread(target=lambda: [None for _ in lis.stdout], daemon=True).start()
        subscriber = _subscriber(broker_port, arrivals, lock)
        time.sleep(WARMUP_S)  # the pipeline's first results, and the subscriber's connection
        if kind == "image":
            window, seconds, http_rate = _alternating(scratch / "frame.jpg", http_port,
                                                      frame_jpeg, arrivals, lock)
        else:
            with lock:
                arrivals.clear()
            time.sleep(MEASURE_S)  # what arrives in this window is the measurement
            with lock:
                window, seconds, http_rate = list(arrivals), MEASURE_S, None
    finally:
        if subscriber is not None:
            subscriber.loop_stop()
            subscriber.disconnect()
        lis.send_signal(signal.SIGINT)
        try:
            lis.wait(60)
        except subprocess.TimeoutExpired:
            lis.kill()
        broker.terminate()
        broker.wait(10)
    latencies = [arrived - dt.datetime.fromisoformat(message["frame-time"]).timestamp()
                 for arrived, message in window]
    return PipelineFigures(len(window), seconds, latencies, http_rate)


def _alternating(frame: Path, http_port: int, frame_jpeg: bytes,
                 arrivals: list[tuple[float, dict]], lock: threading.Lock
                 ) -> tuple[list[tuple[float, dict]], float, float]:
    """The pipeline's results over its blocks, their seconds, and HTTP's req/s between them.

    Each pipeline block counts the results of MEASURE_S / BLOCKS seconds from its first
    one; then the frame's file is moved away, and once no result has come for QUIET_S
    (the pipeline idles), HTTP has the service to itself for its block.
    """
    http = HttpLoad(http_port, f"/inference/{SERVICE}", frame_jpeg, "image/jpeg")
    http(1, 20)  # its connection, and a warm path
    away = frame.with_suffix(".away")
    window: list[tuple[float, dict]] = []
    requests, http_seconds = 0, 0.0
    for _ in range(BLOCKS):
        with lock:
            arrivals.clear()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not arrivals:   # the pipeline's source retries the file every 0.5 s
            if time.monotonic() > deadline:
                raise RuntimeError("the pipeline published nothing after its file came back")
            time.sleep(0.01)
        with lock:
            started = arrivals[0][0]
        time.sleep(MEASURE_S / BLOCKS)
        with lock:
            window += [(at, message) for at, message in arrivals
                       if started <= at < started + MEASURE_S / BLOCKS]
        frame.rename(away)
        while True:
            with lock:
                last = arrivals[-1][0]
            if time.time() - last >= QUIET_S:
                break
            time.sleep(0.05)
        latencies, wall = http(1, HTTP_REQUESTS_PER_BLOCK)
        requests, http_seconds = requests + len(latencies), http_seconds + wall
        away.rename(frame)
    http.close()
    return window, MEASURE_S, requests / http_seconds


def pipeline_summary(figures: PipelineFigures) -> str:
    return (f"{figures.results} results in {figures.seconds:g} s: {figures.rate:.1f} frames/s; "
            f"frame-to-MQTT latency p50 {figures.latency_ms(0.5):.0f} ms, "
            f"p90 {figures.latency_ms(0.9):.0f} ms "
            f"(mean {1000 * statistics.fmean(figures.latencies_s):.0f} ms)")


if __name__ == "__main__":
    from benchmarks.serving import camera_frame

    for kind in ("image", "camera"):
        figures = measure_pipeline(camera_frame(), kind)
        print(kind, pipeline_summary(figures) + (
            f"; HTTP at concurrency 1 beside it: {figures.http_rate:.1f} req/s, "
            f"{figures.rate / figures.http_rate:.2f}x" if figures.http_rate else ""))
