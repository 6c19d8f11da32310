"""One pipeline's loop, without Ray: take the newest frame, infer, hand the result to the sinks.

``PipelineRunner`` runs on a thread of its own. ``infer`` is any callable that
answers the service's output for an image (a Ray Serve handle in the pipeline
deployment, the model itself in tests); ``describe`` gives the service's class
names and input size, for the messages. ``stats()`` is what ``GET /pipelines``,
``lis status`` and ``/metrics`` show.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any

from deployments.pipelines.messages import Inferred, parse_output
from deployments.pipelines.sinks import ResultSink, totals
from deployments.pipelines.sources import Frame, Source
from vocabulary.errors import InferenceFailed, LisError
from vocabulary.pipeline_specs import PipelineSpec

__all__ = ["IDLE_WAKE_S", "SERVICE_RETRY_S", "Infer", "PipelineRunner", "ServiceFacts"]

log = logging.getLogger("ray.serve.lis")

# With no frame coming, the loop still wakes this often to send what its sinks buffered.
IDLE_WAKE_S = 0.5
# After the service could not answer (not running yet, overloaded), wait this long.
SERVICE_RETRY_S = 1.0

# The service's output for (image bytes, content type).
Infer = Callable[[bytes, str], bytes | str]
# The service's class names (None: numbers) and model input (width, height).
ServiceFacts = tuple[Sequence[str] | None, tuple[int, int]]


class PipelineRunner:
    """Runs one pipeline on its own thread until ``stop``."""

    def __init__(self, spec: PipelineSpec, source: Source, sinks: Sequence[ResultSink],
                 infer: Infer, describe: Callable[[], ServiceFacts]) -> None:
        self.spec = spec
        self.source = source
        self.sinks = list(sinks)
        self._infer = infer
        self._describe = describe
        self._facts: ServiceFacts | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"pipeline {spec.name}",
                                        daemon=True)
        self.state = "STARTING"
        self.inferred = self.failed = self.sequence = 0
        self.last_error: str | None = None
        self.last_error_time: str | None = None
        self.crashed: str | None = None  # the loop itself died (a bug): the replica is unhealthy

    def start(self) -> None:
        self.source.start()
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        self.source.close()
        for sink in self.sinks:
            sink.flush()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stats(self) -> dict[str, Any]:
        """State and counters: frames read, inferred, skipped; results published, dropped."""
        problem = self.source.problem
        return {
            "name": self.spec.name, "service": self.spec.service,
            "source": self.source.description,
            "state": "SOURCE_FAILING" if problem and self.state == "RUNNING" else self.state,
            "frames_read": self.source.read, "frames_inferred": self.inferred,
            "frames_skipped": self.source.skipped, "frames_failed": self.failed,
            "stream_reopened": self.source.reopened,
            **totals(self.sinks),
            "last_error": problem or self.last_error, "last_error_time": self.last_error_time,
        }

    # --- the loop ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self.state = "RUNNING"
            next_due = time.monotonic()
            while not self._stop.is_set():
                if self.spec.interval_s and self._stop.wait(max(0.0, next_due - time.monotonic())):
                    break
                frame = self.source.next_frame(self._stop, IDLE_WAKE_S)
                self._flush()
                if frame is None:
                    continue
                next_due = time.monotonic() + self.spec.interval_s
                self._one(frame)
        except Exception as error:  # noqa: BLE001 - reported by check_health, then replaced
            self.crashed = f"{type(error).__name__}: {error}"
            self.state = "CRASHED"
            log.exception("pipeline %s stopped", self.spec.name)
        else:
            self.state = "STOPPED"

    def _one(self, frame: Frame) -> None:
        try:
            facts = self._service_facts()
            output = self._answer(frame)
        except LisError as error:
            self._failed(error)
            # A refused image will be refused again; an absent service may come back.
            self.source.done(frame, answered=int(error.status) < HTTPStatus.INTERNAL_SERVER_ERROR)
            if int(error.status) >= HTTPStatus.INTERNAL_SERVER_ERROR:
                self._stop.wait(SERVICE_RETRY_S)
            return
        self.inferred += 1
        self.sequence += 1
        result = Inferred(self.spec.name, self.spec.service, self.spec.algorithm, frame.source,
                          frame.index, frame.time, self.sequence, output, *facts)
        for sink in self.sinks:
            sink.send(result, frame)
        self.source.done(frame, answered=True)

    def _answer(self, frame: Frame) -> Any:
        answer = self._infer(frame.body, frame.content_type)
        try:
            return parse_output(answer)
        except ValueError as error:  # not the connector's output: the service's fault
            raise InferenceFailed(self.spec.service, f"answered no JSON: {error}") from None

    def _service_facts(self) -> ServiceFacts:
        if self._facts is None:
            self._facts = self._describe()
        return self._facts

    def _failed(self, error: LisError) -> None:
        self.failed += 1
        self.last_error = f"{error.type_name}: {error.message}"
        self.last_error_time = dt.datetime.now(dt.timezone.utc).isoformat()
        if self.failed == 1 or self.failed % 100 == 0:
            log.warning("pipeline %s: %s (%d failed so far)", self.spec.name, self.last_error,
                        self.failed)

    def _flush(self) -> None:
        for sink in self.sinks:
            sink.flush()
