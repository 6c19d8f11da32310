"""The feedback worker as a Ray Serve deployment: one ``FeedbackPipeline`` per node.

The feedback HTTP route and the SDK call ``FeedbackWorker.publish`` through
a deployment handle; inference replicas hand their samples over in batches
through a ``FeedbackHandoff`` and never wait for it. Uploads and MQTT run on
the pipeline's own thread in this replica, so a stuck upload never blocks
inference. At most one replica runs per node
(``max_replicas_per_node=1``) because each node has one spool folder; the
spool's lock file keeps a replica that is being replaced from sharing it with
its successor. Replicas take no CPU reservation: they mostly wait on the
network and the disk.

This is the only feedback module that imports Ray.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import pickle
from collections.abc import Mapping
from typing import Any

from ray import serve
from ray.serve import Application

from deployments.feedback.handoff import Sample
from deployments.feedback.pipeline import DEFAULT_BACKOFF, Backoff, FeedbackPipeline
from deployments.ray_internals import versioned
from vocabulary.feedback_specs import FeedbackConnectorSpec
from vocabulary.names import FEEDBACK_DEPLOYMENT

__all__ = ["FeedbackWorker", "build_feedback_worker"]


@serve.deployment(
    name=FEEDBACK_DEPLOYMENT,
    max_replicas_per_node=1,
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=64,
)
class FeedbackWorker:
    """Holds the node's feedback pipeline: ``publish`` for one sample (SDK, HTTP route),
    ``publish_many`` for an inference replica's batch."""

    def __init__(self, spec: FeedbackConnectorSpec, backoff: Backoff = DEFAULT_BACKOFF) -> None:
        self._pipeline = FeedbackPipeline(spec, backoff=backoff)

    async def publish(self, config_id: str, model_input: bytes, prediction: Any,
                      metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``FeedbackPipeline.submit`` off the replica's event loop (it fsyncs)."""
        submit = functools.partial(self._pipeline.submit, config_id, model_input, prediction,
                                   metadata)
        return await asyncio.get_running_loop().run_in_executor(None, submit)

    async def publish_many(self, samples: list[Sample]) -> list[dict[str, Any]]:
        """``publish`` for a batch of samples, in order; one status each."""
        def submit_all() -> list[dict[str, Any]]:
            return [self._pipeline.submit(*sample) for sample in samples]

        return await asyncio.get_running_loop().run_in_executor(None, submit_all)

    def pending(self) -> int:
        """Samples this node accepted and has not yet delivered."""
        return self._pipeline.pending

    def __del__(self) -> None:
        # Serve calls __del__ when it stops a replica: release the spool for the next one.
        pipeline = getattr(self, "_pipeline", None)
        if pipeline is not None:
            pipeline.close()


def build_feedback_worker(spec: FeedbackConnectorSpec, *, num_replicas: int = 1,
                          backoff: Backoff = DEFAULT_BACKOFF) -> Application:
    """The bound feedback deployment for ``spec``; pass its handle to whoever publishes.

    ``num_replicas`` is how many nodes run a worker (at most one each).
    """
    # A version from what the worker runs restarts it only on change (pickled,
    # so secrets count too without being written anywhere).
    version = hashlib.sha256(pickle.dumps((spec, backoff))).hexdigest()[:16]
    return versioned(FeedbackWorker, version, num_replicas=num_replicas).bind(spec, backoff)

