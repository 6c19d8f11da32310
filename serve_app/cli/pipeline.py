"""``lis pipeline run``: try a source from the shell, results printed as they come.

    lis pipeline run 0 --service objectDetection                 # camera 0
    lis pipeline run http://camera.local/video.mjpg --service objectDetection --interval 2
    lis pipeline run ./incoming --service imageClassification    # each image of a folder
    lis pipeline run scene.jpg --service imageClassification --count 1

The same loop as a configured pipeline (``deployments.pipelines``) run in this
process, calling a running lis over HTTP (``--endpoint``, ``LIS_TOKEN``), and
printing each message, one JSON line each, instead of publishing it. A folder is
read from its start each time (its record is a temporary file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from deployments.pipelines.messages import Inferred, message_for
from deployments.pipelines.runner import PipelineRunner
from deployments.pipelines.sources import Frame, open_source
from serve_app.cli.status import fetch_services
from serve_app.transport import HttpTransport
from vocabulary.errors import ServiceNotFound
from vocabulary.names import CA_FILE_ENV, DEFAULT_ENDPOINT, ENDPOINT_ENV, TOKEN_ENV
from vocabulary.pipeline_specs import DEFAULT_SCORE_THRESHOLD, DEFAULT_TOP_K, MqttSink, PipelineSpec

__all__ = ["PrintedResults", "add_arguments", "run", "source_of"]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# An image file is read again at this interval unless --interval says otherwise.
_DEFAULT_IMAGE_INTERVAL_S = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["run"], help="run: infer SOURCE and print results")
    parser.add_argument("source", help="a camera index, a stream URL or video file, a folder, "
                                       "or an image file")
    parser.add_argument("--service", required=True, help="the LocalInferenceServiceName")
    parser.add_argument("--interval", type=float, default=None, metavar="SECONDS",
                        help="infer every SECONDS (default: as fast as the service answers; "
                             "an image: every 1 s)")
    parser.add_argument("--format", choices=["greengrass-v2", "lis"], default="greengrass-v2")
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K)
    parser.add_argument("--score-threshold", type=float, default=DEFAULT_SCORE_THRESHOLD)
    parser.add_argument("--count", type=int, default=None, help="stop after this many results")
    parser.add_argument("--endpoint", default=os.environ.get(ENDPOINT_ENV, DEFAULT_ENDPOINT))


def source_of(text: str, state: Path) -> dict[str, Any]:
    """The ``source:`` a command-line SOURCE stands for."""
    if text.isdigit():
        return {"type": "camera", "device": int(text)}
    if urlsplit(text).scheme or text.startswith("/dev/"):
        key = "device" if text.startswith("/dev/") else "url"
        return {"type": "camera" if key == "device" else "stream", key: text}
    path = Path(text).absolute()
    if path.is_dir():
        return {"type": "folder", "path": str(path), "record_file": str(state / "seen")}
    if path.suffix.lower() in _IMAGE_SUFFIXES:
        return {"type": "image", "path": str(path)}
    return {"type": "stream", "url": str(path)}


class PrintedResults:
    """A sink that prints each message as one JSON line; ``done`` is set after ``count``."""

    def __init__(self, sink: MqttSink, count: int | None) -> None:
        self._sink = sink
        self._count = count
        self.published = self.dropped = 0
        self.done = threading.Event()

    @property
    def buffered(self) -> int:
        return 0

    def send(self, result: Inferred, frame: Frame) -> None:
        if self.done.is_set():
            return
        print(json.dumps(message_for(result, self._sink)), flush=True)
        self.published += 1
        if self._count is not None and self.published >= self._count:
            self.done.set()

    def flush(self) -> None:
        """Nothing waits: each message is printed when it comes."""


def _service(endpoint: str, name: str) -> dict[str, Any]:
    for listed in fetch_services(endpoint):
        if listed["name"] == name:
            return listed
    raise ServiceNotFound(name)


def run(args: argparse.Namespace) -> int:
    service = _service(args.endpoint, args.service)
    transport = HttpTransport(args.endpoint, os.environ.get(TOKEN_ENV) or None,
                              os.environ.get(CA_FILE_ENV) or None)
    algorithm = service["algorithm"]
    with tempfile.TemporaryDirectory(prefix="lis-pipeline-") as state:
        source = source_of(args.source, Path(state))
        interval = args.interval if args.interval is not None else \
            _DEFAULT_IMAGE_INTERVAL_S if source["type"] == "image" else 0.0
        sink = MqttSink(topic="-", format=args.format, top_k=args.top_k,
                        score_threshold=args.score_threshold)
        spec = PipelineSpec(name="cli", service=args.service, algorithm=algorithm,
                            source=source, sinks=(sink,), interval_s=interval,
                            state_directory=Path(state))
        printed = PrintedResults(sink, args.count)
        labels = service.get("labels") or None
        size = tuple(service.get("input_size") or (512, 512))

        def infer(body: bytes, content_type: str) -> bytes:
            return transport.infer(algorithm, args.service, content_type, body, None)[0]

        runner = PipelineRunner(spec, open_source(spec), [printed], infer,
                                lambda: (labels, size))
        runner.start()
        shown = None
        try:
            while not printed.done.wait(1.0):
                problem = runner.source.problem or runner.last_error
                if problem and problem != shown:  # each new problem once, on stderr
                    print(f"lis pipeline: {problem}", file=sys.stderr)
                shown = problem
        finally:
            runner.stop()
    return 0
