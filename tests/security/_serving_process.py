"""A lis service in a process of its own: lis's HTTP app and server over a real model.

The attack tests that need a real service (a real model runtime behind lis's
own ingress app and uvicorn, as the one-box ingress replica runs them) start
this script (``ServingProcess``), so the memory a request costs is this
process's alone (``/proc/<pid>/status`` VmHWM) and a crash shows as a dead
process, not a dead test runner. It prints ``ready <port>`` once it answers.

    python _serving_process.py MODEL_DIR PORT [--max-pixels N] [--token T]
                               [--cert-file F --key-file F]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from deployments.inference import InferencePipeline, PipelineOptions
from serve_app._http_server import IngressHttpServer
from serve_app.ingress import ServiceInfo, build_http_app
from vocabulary.limits import DEFAULT_MAX_PIXELS
from vocabulary.specs import TlsSpec
from vocabulary.wire import InferenceResult

SERVICE = "imageClassification"
ALGORITHM = "image-classification"
MAX_BODY = 10 * 1024 * 1024


HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServingProcess:
    """The test's handle on this script run as a child: its port, its peak memory."""

    def __init__(self, model_dir: Path, *options: str) -> None:
        self.port = _free_port()
        environment = {**os.environ,
                       "PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), str(HERE)])}
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "_serving_process.py"), str(model_dir), str(self.port),
             *options], env=environment, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # until ready, or EOF if it died
        assert line.strip() == f"ready {self.port}", f"the service did not start: {line!r}"

    def peak_bytes(self) -> int:
        """VmHWM: the most resident memory the process has had so far."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(30)


class PipelineRouter:
    """The ``Router`` of one service whose requests run a real ``InferencePipeline``."""

    def __init__(self, pipeline: InferencePipeline) -> None:
        self.pipeline = pipeline
        self.services = {SERVICE: ServiceInfo(
            name=SERVICE, algorithm=ALGORITHM, connector_id=SERVICE, connector_arn="",
            platform="x86-64", timeout_s=60.0, max_request_bytes=MAX_BODY)}

    async def infer(self, service: ServiceInfo, body: bytes, content_type: str | None,
                    algo_type: str | None, gone: Any = None) -> InferenceResult:
        prediction = await asyncio.to_thread(self.pipeline.run, body, content_type)
        return InferenceResult(prediction.body, prediction.content_type)

    async def service_states(self) -> dict[str, dict[str, Any]]:
        return {SERVICE: {"state": "RUNNING"}}

    async def publish_feedback(self, config_id: str, body: bytes, prediction: Any,
                               metadata: dict[str, str]) -> dict[str, Any]:
        raise NotImplementedError


async def serve(arguments: argparse.Namespace) -> None:
    pipeline = InferencePipeline(Path(arguments.model_dir), PipelineOptions(
        algorithm=ALGORITHM, max_pixels=arguments.max_pixels))
    pipeline.warm_up()
    tls = TlsSpec(cert_file=arguments.cert_file, key_file=arguments.key_file) \
        if arguments.cert_file else None
    server = IngressHttpServer(build_http_app(PipelineRouter(pipeline), token=arguments.token),
                               "127.0.0.1", arguments.port, tls=tls)
    server.start()
    print(f"ready {arguments.port}", flush=True)
    await asyncio.Event().wait()  # until the test kills the process


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("port", type=int)
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    parser.add_argument("--token")
    parser.add_argument("--cert-file", type=Path)
    parser.add_argument("--key-file", type=Path)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
