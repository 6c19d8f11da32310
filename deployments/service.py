"""The Ray Serve deployment behind one named inference service.

One deployment per ``LocalInferenceServiceName``. A replica fetches and loads
its model once, then answers ``infer`` calls: the inference path itself is
``deployments.inference.InferencePipeline``; this module adds what a
long-running service needs around it: the per-request timeout, the memory
limit, one access log line per request, and handing samples to ML Feedback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from ray import serve

from deployments.access_log import AccessLog
from deployments.archive import artifact_version, cache_dir, materialize
from deployments.feedback.handoff import FeedbackHandoff
from deployments.imaging import feedback_image, mislabelled
from deployments.inference import InferencePipeline, PipelineOptions, Prediction
from deployments.local_socket import (
    LOCAL_ONGOING_METRIC,
    LocalServer,
    current_node_id,
    socket_path,
)
from deployments.ray_internals import log_rotation, serve_logs_dir
from deployments.runtime import set_thread_count
from vocabulary.errors import (
    AlgorithmMismatch,
    InferenceFailed,
    InferenceTimeout,
    LisError,
    MemoryLimitExceeded,
    PayloadTooLarge,
)
from vocabulary.limits import MAX_ONGOING_REQUESTS
from vocabulary.wire import InferenceResult, StageTimes

if TYPE_CHECKING:
    from vocabulary.specs import ModelStoreSpec, ServiceSpec

__all__ = [
    "LOCAL_MAX_RUNNING",
    "STUCK_AFTER_TIMEOUTS",
    "WORKER_THREADS",
    "InferenceService",
    "stuck_reason",
]

# Decode/preprocess of one request overlaps the model run of another; the
# model itself runs one call at a time (DLR and MXNet executors are not
# re-entrant), so two workers are enough to keep it busy.
WORKER_THREADS = 2
# Requests the local path runs at once, counting those their callers gave up on
# (past their timeout) that run on: room for one full set of them besides the
# MAX_ONGOING_REQUESTS on time, then 503 (``deployments.local_socket.LocalServer``).
LOCAL_MAX_RUNNING = 2 * MAX_ONGOING_REQUESTS
# A request still running after this many times its service's timeout is not
# slow but stuck: the replica reports itself unhealthy and Ray Serve replaces
# it, since a thread cannot be interrupted and its model lock is never freed.
STUCK_AFTER_TIMEOUTS = 10


def stuck_reason(longest_s: float, timeout_s: float) -> str | None:
    """Why a replica whose oldest request has run ``longest_s`` is stuck; None if it is not."""
    if longest_s <= STUCK_AFTER_TIMEOUTS * timeout_s:
        return None
    return (f"a request has run {longest_s:.0f} s, over {STUCK_AFTER_TIMEOUTS} times the "
            f"service's timeout of {timeout_s:g} s: the model is stuck, so the replica is "
            f"replaced")


class _Stages:
    """How long one request spent in each step of the replica, for its access line.

    ``prepare`` (decode + preprocess), ``wait`` (for the model, behind other
    requests) and ``model`` (run + output format); the rest of ``latency_ms``
    is the replica's own handling and the wait for a worker thread.
    """

    _NAMES = ("prepare", "wait", "model")

    def __init__(self) -> None:
        self._ms = dict.fromkeys(self._NAMES, 0.0)
        self._current: str | None = None
        self._since = 0.0
        self._started = time.perf_counter()

    def elapsed_s(self) -> float:
        return time.perf_counter() - self._started

    def start(self, name: str | None) -> None:
        """End the current stage (if any) and start ``name`` (``None``: stop timing)."""
        now = time.perf_counter()
        if self._current is not None:
            self._ms[self._current] += 1000 * (now - self._since)
        self._current, self._since = name, now

    def seconds(self) -> StageTimes:
        return tuple((name, ms / 1000) for name, ms in self._ms.items())

    def __str__(self) -> str:
        return " ".join(f"{name}_ms={ms:.1f}" for name, ms in self._ms.items())


class _ServiceLog(logging.LoggerAdapter):
    """Prefixes every line with the service name, as the connectors' logs did."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['service']}] {msg}", kwargs


def _open_access_log(service: str) -> AccessLog:
    """The replica's access log, in the folder of Ray Serve's own replica logs."""
    context = serve.get_replica_context()
    replica = context.replica_id.unique_id
    name = f"access_{context.app_name}_{context.deployment}_{replica}.log"
    max_bytes, backups = log_rotation()  # as Ray Serve rotates the replica's own log
    return AccessLog(Path(serve_logs_dir()) / name,
                     f"{context.app_name}_{context.deployment}", replica, service,
                     max_bytes=max_bytes, backups=backups)


def _fetch_model(spec: ServiceSpec, store: ModelStoreSpec | None) -> Path:
    from deployments.model_source import fetch_model

    return fetch_model(spec.model_source, destination=spec.model_destination, store=store,
                       cache_dir=cache_dir() / "models", sha256=spec.model_sha256)


def _pipeline_options(spec: ServiceSpec) -> PipelineOptions:
    return PipelineOptions(
        algorithm=spec.algorithm,
        threads=spec.runtime_threads,
        device="gpu" if spec.gpu else "cpu",
        allow_cpu_fallback=spec.allow_cpu_fallback,
        preprocessing_overrides=dict(spec.preprocessing),
        score_threshold=spec.score_threshold,
        top_k=spec.top_k,
        max_pixels=spec.max_pixels,
    )


@serve.deployment
class InferenceService:
    """One replica of one named inference service."""

    def __init__(self, spec: ServiceSpec, store: ModelStoreSpec | None = None,
                 feedback: Any = None, expected_version: str | None = None,
                 local_socket: bool = True) -> None:
        self.spec = spec
        # A child of Ray Serve's logger: lines land in the replica's log with
        # Serve's deployment and replica ids, after our service-name prefix.
        self.log = _ServiceLog(logging.getLogger("ray.serve.lis"), {"service": spec.name})
        set_thread_count(spec.runtime_threads)
        started = time.perf_counter()
        fetched = _fetch_model(spec, store)
        self.version = artifact_version(fetched)
        if expected_version and expected_version != self.version:
            # A local path is read on each node: this node's copy is not the deployer's.
            self.log.warning("model %s is version %s here, the deployer saw %s",
                             fetched, self.version, expected_version)
        model_dir = materialize(fetched)
        self.pipeline = InferencePipeline(model_dir, _pipeline_options(spec))
        self.pipeline.warm_up()
        self._model_lock = threading.Lock()
        # When each request now in decode or model began them, by thread (either path).
        self._running: dict[int, float] = {}
        self._most_running = 0  # the most there were at once
        self._executor = ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix=spec.name)
        self._process = psutil.Process()
        self._memory_exceeded: int | None = None
        self._feedback = FeedbackHandoff(feedback) \
            if feedback is not None and spec.feedback_config_id else None
        self._tensors_not_sampled = 0  # model inputs ML Feedback could not be given
        self._access_log = _open_access_log(spec.name)
        self._local: LocalServer | None = None
        if local_socket:  # ``http.local_socket: false``: no caller takes the local path
            self._start_local_server()
        self.log.info("loaded %s (version %s) in %.1f s", model_dir, self.version,
                      time.perf_counter() - started)

    def _start_local_server(self) -> None:
        """Listen for the ingress on this node (``deployments.local_socket``)."""
        try:
            self._loop = asyncio.get_running_loop()  # Ray Serve runs the constructor on it
        except RuntimeError:
            return
        replica = serve.get_replica_context().replica_id.unique_id
        server = LocalServer(socket_path(current_node_id(), self.spec.name, replica),
                             self.answer_local, self.spec.name, LOCAL_MAX_RUNNING,
                             self.spec.max_request_bytes, max_ongoing=MAX_ONGOING_REQUESTS)
        try:
            server.start()
        except (OSError, LisError) as error:  # a refused folder, a failed bind: through Ray
            self.log.warning("no local socket (%s): requests come through Ray Serve only", error)
            return
        self._local = server

    async def __del__(self) -> None:
        # Ray Serve calls this once its own requests are done; the local ones
        # get as long as a request may take.
        local = getattr(self, "_local", None)  # None if the constructor failed early
        if local is not None:
            await asyncio.to_thread(local.stop, self.spec.timeout_s)
        access_log = getattr(self, "_access_log", None)
        if access_log is not None:
            access_log.close()

    # --- the request path ---------------------------------------------------

    async def infer(self, body: bytes, content_type: str | None,
                    algo_type: str | None = None) -> InferenceResult:
        """Answer one request: the connector's output, or a ``LisError``."""
        with self._access(body, content_type) as stages:
            self._check_request(body, algo_type)
            work = asyncio.get_running_loop().run_in_executor(
                self._executor, self._predict, body, content_type, stages)
            try:
                prediction = await asyncio.wait_for(work, self.spec.timeout_s)
            except asyncio.TimeoutError:
                raise InferenceTimeout(self.spec.name, self.spec.timeout_s) from None
            self._send_feedback(body, content_type, prediction)
            return InferenceResult(prediction.body, prediction.content_type, stages.seconds())

    def answer_local(self, body: bytes, content_type: str | None,
                     algo_type: str | None) -> InferenceResult:
        """``infer`` for the local path, on the socket connection's own thread.

        No executor hop and no event loop: that is most of what the local path
        saves. The ingress enforces the timeout on this path; a request that
        finishes late is logged as the 504 its caller already got.
        """
        with self._access(body, content_type) as stages:
            self._check_request(body, algo_type)
            prediction = self._predict(body, content_type, stages)
            if stages.elapsed_s() > self.spec.timeout_s:
                raise InferenceTimeout(self.spec.name, self.spec.timeout_s)
            if self._feedback is not None:
                self._loop.call_soon_threadsafe(self._send_feedback, body, content_type,
                                                prediction)
            return InferenceResult(prediction.body, prediction.content_type, stages.seconds())

    @contextlib.contextmanager
    def _access(self, body: bytes, content_type: str | None) -> Iterator[_Stages]:
        """Times one request and writes its access line, whatever its outcome."""
        stages = _Stages()
        status = 200
        try:
            yield stages
        except LisError as error:
            status = int(error.status)
            raise
        except Exception:
            status = 500
            self.log.exception("unexpected failure")
            raise
        finally:
            self._access_log.write(status, 1000 * stages.elapsed_s(), stages, len(body),
                                   mislabelled=mislabelled(body, content_type))

    def _check_request(self, body: bytes, algo_type: str | None) -> None:
        if algo_type is not None and algo_type != self.spec.algorithm:
            raise AlgorithmMismatch(self.spec.name, algo_type, self.spec.algorithm)
        if len(body) > self.spec.max_request_bytes:
            raise PayloadTooLarge("request body bytes", len(body), self.spec.max_request_bytes)

    def _predict(self, body: bytes, content_type: str | None, stages: _Stages) -> Prediction:
        thread = threading.get_ident()
        self._running[thread] = time.perf_counter()
        self._most_running = max(self._most_running, len(self._running))
        try:
            # Decoding runs outside the lock, overlapping another request's model run.
            stages.start("prepare")
            batch = self.pipeline.prepare(body, content_type)
            self._enforce_memory_limit()
            stages.start("wait")
            with self._model_lock:
                stages.start("model")
                prediction = self.pipeline.run_batch(batch)
            stages.start(None)
            self._enforce_memory_limit()
            return prediction
        finally:
            del self._running[thread]

    def _enforce_memory_limit(self) -> None:
        limit = self.spec.memory_limit_kb
        if limit is None:
            return
        rss_kb = self._process.memory_info().rss // 1024
        if rss_kb > limit:
            # check_health now fails, so Ray Serve replaces this replica;
            # the caller learns why instead of seeing a dead actor.
            self._memory_exceeded = rss_kb
            raise MemoryLimitExceeded(self.spec.name, rss_kb, limit)

    def _send_feedback(self, body: bytes, content_type: str | None,
                       prediction: Prediction) -> None:
        if self._feedback is None:
            return
        sample = feedback_image(body, content_type)
        if sample is None:
            # A preprocessed tensor (Open Inference Protocol): no image to keep.
            self._tensors_not_sampled += 1
            return
        body, content_type = sample
        self._feedback.add((self.spec.feedback_config_id, body, prediction.values,
                            {"service": self.spec.name, "content-type": content_type or ""}))

    # --- what Ray Serve and the ingress ask ---------------------------------

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Requests on the local socket, which Ray Serve's autoscaler would not see."""
        return {LOCAL_ONGOING_METRIC: float(self._local.ongoing if self._local else 0)}

    def check_health(self) -> None:
        if self._memory_exceeded is not None:
            raise MemoryLimitExceeded(self.spec.name, self._memory_exceeded,
                                      self.spec.memory_limit_kb or 0)
        # A copy first: request threads add and remove while this reads.
        oldest = min(tuple(self._running.values()), default=None)
        longest = 0.0 if oldest is None else time.perf_counter() - oldest
        reason = stuck_reason(longest, self.spec.timeout_s)
        if reason is not None:
            raise InferenceFailed(self.spec.name, reason)

    def describe(self) -> dict[str, Any]:
        context = serve.get_replica_context()
        return {
            "replica": context.replica_id.unique_id,
            "node_id": current_node_id(),
            "version": self.version,
            "device": self.pipeline.runtime.device,
            "gpu_ids": _gpu_ids(),
            "rss_kb": self._process.memory_info().rss // 1024,
            "labels": list(self.pipeline.labels or ()),
            # The model's input (width, height): pipelines give boxes in its pixels.
            "input_size": [self.pipeline.preprocessing.width, self.pipeline.preprocessing.height],
            # The Open Inference Protocol's model metadata: what runs it, and the
            # FP32 tensor it takes as its input.
            "runtime": self.pipeline.runtime.platform,
            "input_shape": list(self.pipeline.runtime.input_shape),
            "local_requests": self._local.answered if self._local else 0,
            # Model inputs sent as tensors that ML Feedback got no image of.
            "feedback_skipped_tensors": self._tensors_not_sampled,
            # Local requests refused unstarted: the replica had its most at once.
            "local_busy": self._local.busy if self._local else 0,
            # Requests past decoding's start, on either path: accepted and being worked on.
            "running": len(self._running),
            "most_running": self._most_running,  # the most at once since the replica started
            # What a caller on this node needs to call the socket as Ray Serve would.
            "limits": {"timeout_s": self.spec.timeout_s,
                       "max_ongoing_requests": MAX_ONGOING_REQUESTS,
                       "max_queued_requests": self.spec.max_queued_requests},
        }


def _gpu_ids() -> list[str]:
    import ray

    return [str(i) for i in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]
