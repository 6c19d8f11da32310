"""A user's own Ray Serve application calling lis, as docs/python-api.md shows one.

Two deployments, one async and one sync, each calling lis through the drop-in
SDK and through the typed API; and a Ray task and an actor doing the same.
They live in this module, which the test registers with cloudpickle by value:
Ray's workers cannot import a test module by name.

Each call answers what the caller got, or ``Raised``: the exception's type and
message as the user's code saw them (a Ray error wrapping it would hide which
type the user caught).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray import serve

import greengrass_machine_learning_sdk as ml
from serve_app.client import Classification, Detections, ImageClassifier, ObjectDetector

COMPOSER_APP = "composer"
# Zero CPUs: beside lis on a small box, a deployment asking Ray's default one CPU
# waits for a CPU that never frees up.
NO_CPU = {"num_cpus": 0}


@dataclass(frozen=True)
class Raised:
    type_name: str
    message: str


@dataclass(frozen=True)
class SdkAnswer:
    body: bytes
    content_type: str


def typed_service(algo_type: str, service: str) -> ImageClassifier | ObjectDetector:
    return ObjectDetector(service) if algo_type == "object-detection" else ImageClassifier(service)


def _sdk_answer(response: dict[str, Any]) -> SdkAnswer:
    return SdkAnswer(bytes(response["Body"].read()), response["ContentType"])


def _raised(error: Exception) -> Raised:
    return Raised(type(error).__name__, str(error))


def sdk_sync(algo_type: str, service: str, image: bytes) -> SdkAnswer | Raised:
    try:
        return _sdk_answer(ml.client("inference").invoke_inference_service(
            AlgoType=algo_type, ServiceName=service, ContentType="image/jpeg", Body=image))
    except Exception as error:  # noqa: BLE001 - the test checks which one
        return _raised(error)


async def sdk_async(algo_type: str, service: str, image: bytes) -> SdkAnswer | Raised:
    try:
        return _sdk_answer(await ml.client("inference").invoke_inference_service_async(
            AlgoType=algo_type, ServiceName=service, ContentType="image/jpeg", Body=image))
    except Exception as error:  # noqa: BLE001
        return _raised(error)


def typed_sync(algo_type: str, service: str, image: bytes
               ) -> Classification | Detections | Raised:
    try:
        return typed_service(algo_type, service).infer(image, "image/jpeg")
    except Exception as error:  # noqa: BLE001
        return _raised(error)


async def typed_async(algo_type: str, service: str, image: bytes
                      ) -> Classification | Detections | Raised:
    try:
        return await typed_service(algo_type, service).infer_async(image, "image/jpeg")
    except Exception as error:  # noqa: BLE001
        return _raised(error)


# Each way of calling lis from Python, by name: the test asks every deployment for each.
SYNC_WAYS: dict[str, Callable[..., Any]] = {"sdk": sdk_sync, "typed": typed_sync}
ASYNC_WAYS: dict[str, Callable[..., Awaitable[Any]]] = {"sdk": sdk_async, "typed": typed_async}


@serve.deployment(ray_actor_options=NO_CPU)
class AsyncWatcher:
    """An async deployment, the usual kind: awaits lis, and also calls it the sync way."""

    async def call(self, way: str, algo_type: str, service: str, image: bytes) -> Any:
        if way.endswith("-sync"):  # the sync form, made on this replica's running loop
            return SYNC_WAYS[way.removesuffix("-sync")](algo_type, service, image)
        return await ASYNC_WAYS[way](algo_type, service, image)


@serve.deployment(ray_actor_options=NO_CPU)
class SyncWatcher:
    """A sync deployment: Ray Serve runs its methods in a thread of their own."""

    def call(self, way: str, algo_type: str, service: str, image: bytes) -> Any:
        return SYNC_WAYS[way](algo_type, service, image)


@ray.remote(num_cpus=0)
def detect_in_a_task(detector: ObjectDetector, image: bytes) -> Detections:
    return detector.infer(image, "image/jpeg")


@ray.remote(num_cpus=0)
class DetectingActor:
    async def detect(self, detector: ObjectDetector, image: bytes) -> Detections:
        return await detector.infer_async(image, "image/jpeg")
