"""The one-box Ray head that ``lis up`` starts (``deployments.ray_internals.start_lean_head``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]

# Run in a process of its own: the head ends with it (Ray's reaper), and this
# test process's Ray, if any, is left alone.
_PROBE = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
from ray._raylet import NodeID
from ray._private.node import Node
from deployments import ray_internals

seen = {}
original = ray_internals._wait_until_registered
def recording(gcs_client, node_id_hex, *args):
    seen["answer"] = original(gcs_client, node_id_hex, *args)
    seen["node"] = node_id_hex
    seen["unknown"] = original(gcs_client, NodeID.from_random().hex(), 0.2)
    return seen["answer"]
ray_internals._wait_until_registered = recording
address = ray_internals.start_lean_head(num_cpus=1, resources={}, log_monitor=False,
                                        outlive_caller=False)
import psutil
from tests.waiting import WaitTimeout, wait_until
# The agent renames itself (ray::DashboardAgent); the raylet's flags say how it is run.
agents = [part for p in psutil.Process().children(recursive=True) if p.name() == "raylet"
          for part in p.cmdline() if part.startswith("--dashboard_agent_command=")]
# The raylet's two agents, once both run: they must end when this process does.
def agent_pids():
    return [p.pid for p in psutil.Process().children(recursive=True)
            if p.name() in ("ray::DashboardAgent", "ray::RuntimeEnvAgent")]
def both_agents():
    pids = agent_pids()
    return pids if len(pids) == 2 else None
try:
    running = wait_until(both_agents, timeout_s=60, message="the raylet's two agents")
except WaitTimeout:
    running = agent_pids()   # the test says how many there were
print(json.dumps({**seen, "address": address, "agents": agents, "agent_pids": running}))
"""


@pytest.fixture(scope="module")
def started() -> dict[str, Any]:
    """What the probe saw while it started a head, and the head's address."""
    done = subprocess.run([sys.executable, "-c", _PROBE, str(ROOT)], capture_output=True,
                          text=True, timeout=120, env={"RAY_USAGE_STATS_ENABLED": "0",
                                                       "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_the_head_waits_for_its_own_raylet_and_no_other(started: dict[str, Any]) -> None:
    # lis asks the GCS for its raylet itself (Ray asks once a second): the
    # question must name the raylet just started, find it, and not find a
    # node that is not there.
    assert started["answer"] is True and started["unknown"] is False, started
    assert len(started["node"]) == 56, started


@pytest.mark.slow
def test_the_head_runs_its_dashboard_agent_minimal(started: dict[str, Any]) -> None:
    # No dashboard, metrics pipeline or job server on a box: the agent runs
    # without its gRPC and HTTP servers (deployments.ray_internals).
    [agent] = started["agents"]
    assert "--minimal" in agent.split(), agent


def _running_agents(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).name().startswith("ray::"):
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.mark.slow
def test_the_head_stops_with_the_process_that_started_it(started: dict[str, Any]) -> None:
    # Ray's fate sharing SIGKILLs the raylet; its agents took that for a crash and waited
    # for ever on the dead GCS to report it (deployments.ray_internals._stop_at_exit).
    assert len(started["agent_pids"]) == 2, started
    wait_until(lambda: not _running_agents(started["agent_pids"]), timeout_s=60,
               message="the raylet's agents to exit with the process that started the head")
