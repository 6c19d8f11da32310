"""The local path between ingress and replicas: real Unix sockets, no Ray.

The end-to-end tests (test_service_e2e.py) show HTTP requests taking it on a
running lis; here each rule of the path is shown on its own.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from waiting import wait_until, wait_until_async

import serve_app._local as local_module
from deployments.local_socket import (
    LOCAL_ONGOING_METRIC,
    LocalServer,
    socket_path,
    sweep_stale_sockets,
)
from deployments.service import stuck_reason
from serve_app._local import (
    LocalLimits,
    LocalRoute,
    LocalUnavailable,
    local_aware_policy,
)
from vocabulary.errors import (
    AlgorithmMismatch,
    ClientClosedRequest,
    InferenceFailed,
    InferenceTimeout,
    ServiceUnavailable,
)
from vocabulary.wire import InferenceResult

SERVICE = "svc"
# Generous: these wait on threads and sockets of this process, on a busy 2-core box.
WAIT_S = 10


@pytest.fixture
def node() -> Iterator[str]:
    """A node id of this test's own: its socket folder, removed afterwards."""
    name = f"test-{uuid.uuid4().hex}"
    yield name
    shutil.rmtree(socket_path(name, SERVICE, "any").parent, ignore_errors=True)


def _folders(path: Path) -> Path:
    """The root and node folders of a socket at ``path``, as lis makes them (0700); ``path``."""
    for folder in (path.parent.parent, path.parent):
        folder.mkdir(mode=0o700, exist_ok=True)
    return path


def _echo(body: bytes, content_type: str | None, algo_type: str | None) -> Any:
    if body == b"mismatch":
        raise AlgorithmMismatch(SERVICE, algo_type or "", "image-classification")
    if body == b"boom":
        raise RuntimeError("the model fell over")
    return InferenceResult(f"{body.decode()}|{content_type}", "application/json")


def _server(node: str, replica: str, handler: Callable[..., Any] = _echo,
            max_running: int = 10) -> LocalServer:
    server = LocalServer(socket_path(node, SERVICE, replica), handler, SERVICE, max_running)
    server.start()
    return server


def _route(node: str, max_ongoing: int = 5, max_queued: int = -1) -> LocalRoute:
    route = LocalRoute(SERVICE, node, LocalLimits(max_ongoing, max_queued))
    assert route.covers(0)
    return route


def test_answers_and_errors_cross_the_socket(node: str) -> None:
    async def scenario() -> None:
        server = _server(node, "r1")
        route = _route(node)
        answer = await route.call(b"frame", "image/jpeg", None, 5)
        assert answer == InferenceResult("frame|image/jpeg", "application/json")
        with pytest.raises(AlgorithmMismatch) as mismatch:
            await route.call(b"mismatch", "image/jpeg", "object-detection", 5)
        assert "object-detection" in mismatch.value.message
        assert int(mismatch.value.status) == 409
        with pytest.raises(InferenceFailed, match="RuntimeError: the model fell over"):
            await route.call(b"boom", "image/jpeg", None, 5)
        assert server.answered == 3  # over one pooled connection
        await asyncio.to_thread(server.stop, 1)

    asyncio.run(scenario())


def test_a_stopping_replica_refuses_and_is_forgotten(node: str) -> None:
    async def scenario() -> None:
        server = _server(node, "r1")
        route = _route(node)
        await route.call(b"first", None, None, 5)  # leaves a pooled connection
        await asyncio.to_thread(server.stop, 1)
        assert not server.path.exists()
        with pytest.raises(LocalUnavailable):  # refused on the pooled connection
            await route.call(b"late", None, None, 5)
        assert server.answered == 1
        assert not route.covers(0)

    asyncio.run(scenario())


def test_a_stale_socket_sends_the_request_through_ray(node: str) -> None:
    async def scenario() -> None:
        path = _folders(socket_path(node, SERVICE, "dead"))
        with socket.socket(socket.AF_UNIX) as left_behind:  # bound, nobody listening
            left_behind.bind(str(path))
        route = _route(node)
        with pytest.raises(LocalUnavailable):
            await route.call(b"frame", None, None, 5)
        assert not path.exists()  # removed, so no later scan finds it again
        assert not route.covers(0)

    asyncio.run(scenario())


def test_slots_per_replica_and_the_queue_follow_ray_serves_limits(node: str) -> None:
    async def scenario() -> None:
        release = threading.Event()
        peak = 0

        def held(body: bytes, content_type: str | None, algo_type: str | None) -> Any:
            nonlocal peak
            peak = max(peak, server.ongoing)
            release.wait(30)
            return InferenceResult(body.decode(), "text/plain")

        server = _server(node, "r1", held)
        route = _route(node, max_ongoing=2, max_queued=1)
        calls = [asyncio.create_task(route.call(str(i).encode(), None, None, 30))
                 for i in range(3)]
        await wait_until_async(lambda: server.ongoing == 2 and route._waiting == 1,
                               timeout_s=WAIT_S, message="two running, one in the queue")
        with pytest.raises(ServiceUnavailable, match="overloaded"):
            await route.call(b"one too many", None, None, 30)
        release.set()
        answers = await asyncio.gather(*calls)
        assert sorted(a.body for a in answers) == ["0", "1", "2"]
        assert peak == 2
        await asyncio.to_thread(server.stop, 1)

    asyncio.run(scenario())


def test_a_queued_request_whose_caller_left_is_dropped_and_passes_its_turn_on(
        node: str) -> None:
    async def scenario() -> None:
        release = threading.Event()
        seen: list[bytes] = []

        def held(body: bytes, content_type: str | None, algo_type: str | None) -> Any:
            seen.append(body)
            if body == b"first":
                release.wait(30)
            return InferenceResult(body.decode(), "text/plain")

        hung_up = False

        async def gone_after_queueing() -> bool:
            return hung_up

        async def stays() -> bool:
            return False

        server = _server(node, "r1", held)
        route = _route(node, max_ongoing=1)
        # No queue, no question: an idle service never asks.
        assert (await route.call(b"warm", None, None, 30, gone=None)).body == "warm"
        first = asyncio.create_task(route.call(b"first", None, None, 30, stays))
        await wait_until_async(lambda: server.ongoing == 1, timeout_s=WAIT_S,
                               message="the first request to run")
        dropped = asyncio.create_task(route.call(b"dropped", None, None, 30,
                                                 gone_after_queueing))
        await wait_until_async(lambda: route._waiting == 1, timeout_s=WAIT_S,
                               message="the second request to queue")
        kept = asyncio.create_task(route.call(b"kept", None, None, 30, stays))
        await wait_until_async(lambda: route._waiting == 2, timeout_s=WAIT_S,
                               message="the third request to queue behind it")
        hung_up = True  # the first queued caller hangs up
        release.set()
        assert (await first).body == "first"
        with pytest.raises(ClientClosedRequest, match="'svc' was queued"):
            await dropped
        assert (await kept).body == "kept"  # the slot went on to the next caller
        assert seen == [b"warm", b"first", b"kept"]
        await asyncio.to_thread(server.stop, 1)

    asyncio.run(scenario())


def test_a_waiter_cancelled_as_a_slot_is_offered_passes_the_slot_on(node: str) -> None:
    async def scenario() -> None:
        server = _server(node, "r1")
        route = _route(node, max_ongoing=1)
        held = await route._acquire(None)  # the only slot
        first = asyncio.create_task(route._acquire(None))
        second = asyncio.create_task(route._acquire(None))
        await wait_until_async(lambda: route._waiting == 2, timeout_s=WAIT_S,
                               message="both queued, first in line")
        async with route._freed:  # the slot is released and offered to the first...
            held.ongoing -= 1
            route._freed.notify()
        first.cancel()  # ...which is cancelled before it can take it
        assert await asyncio.wait_for(second, 5) is held
        assert first.cancelled()
        await asyncio.to_thread(server.stop, 1)

    asyncio.run(scenario())


def test_the_least_busy_replica_gets_the_next_request(node: str) -> None:
    async def scenario() -> None:
        release = threading.Event()

        def held(body: bytes, content_type: str | None, algo_type: str | None) -> Any:
            release.wait(30)
            return InferenceResult(body.decode(), "text/plain")

        servers = [_server(node, f"r{i}", held) for i in range(2)]
        route = _route(node)
        assert route.covers(2) and not route.covers(3)  # both replicas are on this node
        calls = [asyncio.create_task(route.call(b"x", None, None, 30)) for _ in range(4)]
        await wait_until_async(lambda: [s.ongoing for s in servers] == [2, 2],
                               timeout_s=WAIT_S, message="two requests running on each replica")
        release.set()
        await asyncio.gather(*calls)
        for server in servers:
            await asyncio.to_thread(server.stop, 1)

    asyncio.run(scenario())


def _held_until(release: threading.Event) -> Callable[..., Any]:
    def held(body: bytes, content_type: str | None, algo_type: str | None) -> Any:
        release.wait(30)
        return InferenceResult(body.decode(), "text/plain")

    return held


def test_two_callers_never_run_more_than_the_replicas_limit_in_it(node: str) -> None:
    # The ingress and a user's process each count only their own requests; the
    # replica, which sees both, keeps Ray Serve's limit.
    async def scenario() -> None:
        release = threading.Event()
        server = LocalServer(socket_path(node, SERVICE, "r1"), _held_until(release), SERVICE,
                             max_running=10, max_ongoing=2)
        server.start()
        ingress, driver = _route(node, max_ongoing=2), _route(node, max_ongoing=2)
        calls = [asyncio.create_task(route.call(f"{who}{i}".encode(), None, None, 30))
                 for who, route in (("i", ingress), ("d", driver)) for i in range(3)]
        # Whichever caller came second was told "busy", and asks again every few ms.
        await wait_until_async(lambda: server.ongoing == 2 and server.busy >= 3,
                               timeout_s=WAIT_S, message="two running, the others refused busy")
        assert server.ongoing == 2
        release.set()
        answers = await asyncio.gather(*calls)
        assert sorted(a.body for a in answers) == ["d0", "d1", "d2", "i0", "i1", "i2"]
        assert server.most_ongoing == 2
        assert server.answered == 6  # a busy answer starts nothing
        await asyncio.to_thread(server.stop, 1)

    asyncio.run(scenario())


def test_a_replica_busy_with_another_callers_requests_sends_them_to_another(
        node: str) -> None:
    async def scenario() -> None:
        release = threading.Event()
        servers = [LocalServer(socket_path(node, SERVICE, f"r{i}"), _held_until(release),
                               SERVICE, max_running=10, max_ongoing=2) for i in range(2)]
        for server in servers:
            server.start()
        other, route = _route(node, max_ongoing=2), _route(node, max_ongoing=2)
        r1 = other._replicas[servers[0].path]
        other._replicas = {r1.path: r1}  # the other caller fills the first replica
        held = [asyncio.create_task(other.call(b"other", None, None, 30)) for _ in range(2)]
        await wait_until_async(lambda: servers[0].ongoing == 2, timeout_s=WAIT_S,
                               message="the first replica full")
        calls = [asyncio.create_task(route.call(b"mine", None, None, 30)) for _ in range(2)]
        await wait_until_async(lambda: servers[1].ongoing == 2, timeout_s=WAIT_S,
                               message="this caller's requests on the second replica")
        assert servers[0].ongoing == 2 and route._waiting == 0
        release.set()
        await asyncio.gather(*held, *calls)
        for server in servers:
            await asyncio.to_thread(server.stop, 1)

    asyncio.run(scenario())


def test_timeout_then_the_route_still_serves(node: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_module, "GUARD_SECONDS", 0.1)

    async def scenario() -> None:
        timed_out = threading.Event()

        def slow_once(body: bytes, content_type: str | None, algo_type: str | None) -> Any:
            if body == b"slow":
                timed_out.wait(30)  # answers only once its caller has given up
            return InferenceResult(body.decode(), "text/plain")

        server = _server(node, "r1", slow_once)
        route = _route(node)
        with pytest.raises(InferenceTimeout, match="0.1 s"):
            await route.call(b"slow", None, None, 0.1)
        timed_out.set()
        # The timed-out connection was closed, not pooled: the answer that
        # arrives on it later cannot be taken for the next request's.
        assert (await route.call(b"next", None, None, 5)).body == "next"
        await asyncio.to_thread(server.stop, 5)

    asyncio.run(scenario())


def test_a_hung_model_fills_the_replica_then_requests_are_refused_not_piled_up(
        node: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_module, "GUARD_SECONDS", 0.1)
    unstuck = threading.Event()

    def hangs(body: bytes, content_type: str | None, algo_type: str | None) -> Any:
        if body == b"hang":
            unstuck.wait()
        return InferenceResult(body.decode(), "text/plain")

    async def scenario() -> None:
        server = _server(node, "r1", hangs, max_running=2)
        route = _route(node)
        for _ in range(2):  # each times out; its thread runs on, holding a place
            with pytest.raises(InferenceTimeout):
                await route.call(b"hang", None, None, 0.1)
        assert server.ongoing == 2
        with pytest.raises(ServiceUnavailable) as refused:
            await route.call(b"frame", None, None, 5)
        assert int(refused.value.status) == 503
        assert "still running 2 requests" in refused.value.message
        assert server.ongoing == 2  # refused at once: no third thread waits on the model
        unstuck.set()
        await wait_until_async(lambda: server.ongoing == 0, timeout_s=WAIT_S,
                               message="the hung requests to end")
        assert (await route.call(b"frame", None, None, 5)).body == "frame"
        await asyncio.to_thread(server.stop, 5)

    asyncio.run(scenario())


def test_a_request_running_ten_timeouts_long_makes_the_replica_unhealthy() -> None:
    assert stuck_reason(0.0, 10) is None
    assert stuck_reason(99.0, 10) is None  # slow, not stuck: it answers 504 and runs on
    reason = stuck_reason(101.0, 10)
    assert reason is not None
    assert "101 s" in reason and "timeout of 10 s" in reason and "replaced" in reason


def test_a_replica_that_dies_mid_request_is_an_inference_failure(node: str) -> None:
    async def scenario() -> None:
        path = _folders(socket_path(node, SERVICE, "dying"))

        async def die(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1)  # takes the request, then its process "dies"
            writer.close()

        dying = await asyncio.start_unix_server(die, path=str(path))
        route = _route(node)
        with pytest.raises(InferenceFailed, match="died while handling the request"):
            await route.call(b"frame", None, None, 5)
        dying.close()

    asyncio.run(scenario())


def test_stop_waits_for_the_requests_under_way(node: str) -> None:
    async def scenario() -> None:

        def runs_past_the_stop(body: bytes, content_type: str | None,
                               algo_type: str | None) -> Any:
            # Under way when ``stop`` begins (it removes the socket first)...
            wait_until(lambda: not server.path.exists(), timeout_s=WAIT_S,
                       message="stop to remove the socket")
            # ...and for a while after, on purpose: a stop that did not wait returns meanwhile.
            time.sleep(0.3)
            return InferenceResult("done", "text/plain")

        server = _server(node, "r1", runs_past_the_stop)
        route = _route(node)
        call = asyncio.create_task(route.call(b"x", None, None, 30))
        await wait_until_async(lambda: server.ongoing == 1, timeout_s=WAIT_S,
                               message="the request to run")
        await asyncio.to_thread(server.stop, 10)
        assert server.ongoing == 0
        assert (await call).body == "done"

    asyncio.run(scenario())


def test_autoscaling_counts_local_requests_with_rays() -> None:
    context = SimpleNamespace(
        current_num_replicas=2, target_num_replicas=2, total_num_requests=2.0,
        aggregated_metrics={LOCAL_ONGOING_METRIC: {"r1": 3.0, "r2": 3.0}},
        config=SimpleNamespace(get_target_ongoing_requests=lambda: 2.0))
    assert local_aware_policy(context)[0] == 4.0  # (2 + 6) / 2
    context.aggregated_metrics = None  # no replica has reported yet
    assert local_aware_policy(context)[0] == 1.0
    context.current_num_replicas = 0  # scaled to zero: Ray's cold start decides
    assert local_aware_policy(context)[0] == 2


def _left_behind(path: Path, age_s: float) -> Path:
    """A socket bound and never listened on, as a killed replica leaves it, ``age_s`` old."""
    _folders(path)
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))
    _age(path, age_s)
    return path


def _age(path: Path, age_s: float) -> None:
    then = time.time() - age_s
    os.utime(path, (then, then))


def test_a_sweep_removes_what_killed_nodes_left_and_nothing_else() -> None:
    # Its own short root: a socket path must fit in 108 bytes.
    root = Path(f"/tmp/lis-sweep-{uuid.uuid4().hex[:8]}")
    try:
        killed = _left_behind(root / "killednode" / "a-1.sock", 120)
        live = LocalServer(root / "livenode" / "b-1.sock", _echo, SERVICE, 10)
        live.start()
        _age(live.path, 120)
        young = _left_behind(root / "livenode" / "c-1.sock", 5)  # between bind and listen
        for folder in ("killednode", "livenode"):
            _age(root / folder, 120)
        assert sweep_stale_sockets(root) == 1
        assert not killed.exists() and not killed.parent.exists()
        assert live.path.exists() and young.exists()
        live.stop(1)
        # An old folder whose sockets are all gone goes too; a young one stays.
        young.unlink()
        _age(root / "livenode", 120)
        (root / "newnode").mkdir()
        sweep_stale_sockets(root)
        assert sorted(p.name for p in root.iterdir()) == ["newnode"]
    finally:
        shutil.rmtree(root, ignore_errors=True)
