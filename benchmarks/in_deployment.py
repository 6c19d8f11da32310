"""The bench's "deployment" path: lis called from inside a user's Ray Serve deployment.

A deployment of the bench's own (``BenchCaller``) runs beside lis as an
application of its own, as docs/python-api.md shows a user's: async, no CPU
reserved, calling lis with the SDK's awaitable call. It times each call
itself, where the user's code would wait for it: a call from the driver to
the deployment would add a Ray Serve hop of its own to every figure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

APP = "bench-caller"


def deploy_caller() -> Any:
    """``BenchCaller`` running in the bench's Ray beside lis; its handle."""
    import ray.cloudpickle
    from ray import serve

    import benchmarks.in_deployment as this

    # Ray's workers import lis's packages, not the bench's: this module travels by value.
    ray.cloudpickle.register_pickle_by_value(this)
    serve.run(_caller_deployment().bind(), name=APP, route_prefix=None)
    return serve.get_deployment_handle("BenchCaller", app_name=APP)


def _caller_deployment() -> Any:
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class BenchCaller:
        async def measure(self, service: str, algorithm: str, body: bytes,
                          concurrency: int, requests: int, warmup: int
                          ) -> tuple[list[float], float]:
            return await measure_calls(service, algorithm, body, concurrency, requests, warmup)

    return BenchCaller


async def measure_calls(service: str, algorithm: str, body: bytes, concurrency: int,
                        requests: int, warmup: int) -> tuple[list[float], float]:
    """Latencies (s) of ``requests`` awaited SDK calls, ``concurrency`` at a time; the wall time."""
    import greengrass_machine_learning_sdk as ml

    client = ml.client("inference")

    async def one() -> float:
        started = time.perf_counter()
        await client.invoke_inference_service_async(
            AlgoType=algorithm, ServiceName=service, ContentType="image/jpeg", Body=body)
        return time.perf_counter() - started

    for _ in range(warmup):
        await one()
    left = requests
    latencies: list[float] = []

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            latencies.append(await one())

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


def deployment_load(handle: Any, service: str, algorithm: str, body: bytes
                    ) -> Callable[..., tuple[list[float], float]]:
    """A bench ``Load``: the calls made and timed inside the deployment."""
    def load(concurrency: int, requests: int, warmup: int = 3) -> tuple[list[float], float]:
        return handle.measure.remote(service, algorithm, body, concurrency, requests,
                                     warmup).result(timeout_s=600)

    return load
