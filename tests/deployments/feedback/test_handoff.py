"""The inference replica's side of ML Feedback: samples leave in batches, never blocking.

The worker here is an in-process stand-in with the handle's call shape
(``publish_many.remote(batch)`` returns an awaitable); the real worker behind
a real handle is exercised end to end in tests/serve_app/test_feedback_e2e.py.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from waiting import wait_until_async

from deployments.feedback.handoff import FeedbackHandoff

WAIT_S = 10


class _Worker:
    def __init__(self, fail: bool = False, gate: asyncio.Event | None = None) -> None:
        self.batches: list[list[Any]] = []
        self.fail = fail
        self.gate = gate
        self.publish_many = self

    def remote(self, batch: list[Any]) -> Any:
        async def answer() -> list[dict[str, Any]]:
            if self.gate is not None:
                await self.gate.wait()
            self.batches.append(batch)
            if self.fail:
                raise ConnectionError("worker gone")
            return [{"response": {"status": "accepted"}} for _ in batch]
        return answer()


def _sample(i: int) -> tuple[str, bytes, list[float], dict[str, str]]:
    return ("cfg", b"img%d" % i, [0.5, 0.5], {"service": "s"})


async def _delivered(worker: _Worker, count: int) -> None:
    await wait_until_async(lambda: sum(len(b) for b in worker.batches) >= count,
                           timeout_s=WAIT_S, message=f"{count} samples at the worker")


def test_samples_of_one_interval_go_in_one_call_in_order() -> None:
    async def scenario() -> _Worker:
        worker = _Worker()
        handoff = FeedbackHandoff(worker, interval_s=0.05, max_batch=100)
        for i in range(10):
            handoff.add(_sample(i))
        assert worker.batches == []  # nothing is sent on the request path
        await _delivered(worker, 10)
        return worker

    worker = asyncio.run(scenario())
    assert worker.batches == [[_sample(i) for i in range(10)]]


def test_a_full_batch_leaves_at_once() -> None:
    async def scenario() -> _Worker:
        worker = _Worker()
        handoff = FeedbackHandoff(worker, interval_s=60, max_batch=4)
        for i in range(9):
            handoff.add(_sample(i))
        await _delivered(worker, 8)  # the ninth waits for its interval, a minute
        return worker

    worker = asyncio.run(scenario())
    assert [len(b) for b in worker.batches] == [4, 4]


def test_a_stuck_worker_bounds_what_waits_and_counts_the_rest(caplog) -> None:
    async def scenario() -> tuple[_Worker, FeedbackHandoff]:
        gate = asyncio.Event()
        worker = _Worker(gate=gate)
        handoff = FeedbackHandoff(worker, interval_s=0.01, max_batch=5, max_pending=12)
        for i in range(30):
            handoff.add(_sample(i))
            await asyncio.sleep(0)  # one turn of the loop per sample, as requests come
        gate.set()
        await _delivered(worker, 12)
        return worker, handoff

    with caplog.at_level(logging.WARNING, logger="ray.serve.lis"):
        worker, handoff = asyncio.run(scenario())
    delivered = sum(len(b) for b in worker.batches)
    assert delivered == 12 and handoff.dropped == 18
    assert "1 sample(s) dropped" in caplog.text


def test_a_failing_worker_is_logged_and_never_raised(caplog) -> None:
    async def scenario() -> _Worker:
        worker = _Worker(fail=True)
        handoff = FeedbackHandoff(worker, interval_s=0.01)
        handoff.add(_sample(0))
        await _delivered(worker, 1)
        handoff.add(_sample(1))  # the hand-off still works after a failure
        await _delivered(worker, 2)
        return worker

    with caplog.at_level(logging.WARNING, logger="ray.serve.lis"):
        worker = asyncio.run(scenario())
    assert len(worker.batches) == 2
    assert "could not hand 1 feedback sample(s) to the worker" in caplog.text


@pytest.mark.parametrize("max_batch", [1, 3])
def test_nothing_is_left_behind(max_batch: int) -> None:
    async def scenario() -> _Worker:
        worker = _Worker()
        handoff = FeedbackHandoff(worker, interval_s=0.01, max_batch=max_batch)
        for i in range(7):
            handoff.add(_sample(i))
        await _delivered(worker, 7)
        return worker

    worker = asyncio.run(scenario())
    assert [s for b in worker.batches for s in b] == [_sample(i) for i in range(7)]
