"""The bench's "bare" path: lis's own HTTP app with the model in its process, no Ray.

``make bench`` runs one of these per service, before Ray starts, and sends it
the requests it sends the ingress. Against the raw path it shows what HTTP
alone costs on the machine (uvicorn, Starlette, the client on the same cores);
from it to lis's HTTP row is what Ray Serve's hop between ingress and replica
costs. A request takes the replica's steps: decoded on one of the replica's
worker threads, then the model, one run at a time.

    python -m benchmarks.bare_http MODEL_DIR ALGORITHM THREADS PORT
"""

from __future__ import annotations

import argparse
import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.serving import BARE_SERVICE, raw_pipeline
from deployments.inference import Prediction
from deployments.service import WORKER_THREADS
from serve_app._local import Gone
from serve_app.ingress import ServiceInfo, build_http_app
from vocabulary.errors import ServiceNotFound
from vocabulary.wire import InferenceResult


class InProcessRouter:
    """A ``Router`` for one service whose model runs in the ingress's own process."""

    def __init__(self, model_dir: Path, algorithm: str, threads: int) -> None:
        self.services = {BARE_SERVICE: ServiceInfo(
            name=BARE_SERVICE, algorithm=algorithm, connector_id="bench", connector_arn="",
            platform="", timeout_s=60.0, max_request_bytes=10 << 20)}
        self._predict = raw_pipeline(model_dir, algorithm, threads)
        self._workers = ThreadPoolExecutor(WORKER_THREADS)

    async def infer(self, service: ServiceInfo, body: bytes, content_type: str | None,
                    algo_type: str | None, gone: Gone | None = None) -> InferenceResult:
        prediction: Prediction = await asyncio.get_running_loop().run_in_executor(
            self._workers, self._predict, body, content_type)
        return InferenceResult(prediction.body, prediction.content_type)

    async def service_states(self) -> dict[str, dict[str, Any]]:
        return {BARE_SERVICE: {"state": "RUNNING"}}

    async def publish_feedback(self, config_id: str, body: bytes, prediction: Any,
                               metadata: dict[str, str]) -> dict[str, Any]:
        raise ServiceNotFound(f"feedback config {config_id}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("algorithm")
    parser.add_argument("threads", type=int)
    parser.add_argument("port", type=int)
    args = parser.parse_args()

    import uvicorn

    from serve_app._http_server import KEEP_ALIVE_S

    router = InProcessRouter(args.model_dir, args.algorithm, args.threads)
    # Idle connections stay open as long as lis's ingress keeps them: the
    # bench's client reuses one across a slow model's 15 s measurement.
    uvicorn.run(build_http_app(router), host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False, timeout_keep_alive=KEEP_ALIVE_S)


if __name__ == "__main__":
    main()
