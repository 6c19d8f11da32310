"""A box's own Ray keeps its logs small (``cluster.ray_start.LOG_ROTATION_ENVIRONMENT``).

Ray's default keeps 3 GB a log file; without a dashboard its dashboard agent
logs a traceback every second, and each replica writes an access line per
request, so a box that runs for months needs every file bounded.
"""

from __future__ import annotations

import os
from typing import Any

import psutil
import pytest

from cluster.ray_start import LOG_ROTATION_ENVIRONMENT
from deployments.ray_internals import log_rotation

pytestmark = pytest.mark.slow

_BYTES = int(LOG_ROTATION_ENVIRONMENT["RAY_ROTATION_MAX_BYTES"])
_BACKUPS = int(LOG_ROTATION_ENVIRONMENT["RAY_ROTATION_BACKUP_COUNT"])


def _raylet() -> psutil.Process:
    [raylet] = [p for p in psutil.Process().children(recursive=True) if p.name() == "raylet"]
    return raylet


@pytest.fixture(autouse=True)
def _not_set_by_hand() -> None:
    if any(name in os.environ for name in LOG_ROTATION_ENVIRONMENT):
        pytest.skip("RAY_ROTATION_* set in this environment: Ray uses those")


def test_the_raylet_and_its_agent_rotate_at_lis_sizes(running_lis: Any) -> None:
    raylet = _raylet()
    environ = raylet.environ()
    assert environ["RAY_ROTATION_MAX_BYTES"] == str(_BYTES)
    assert environ["RAY_ROTATION_BACKUP_COUNT"] == str(_BACKUPS)
    [agent] = [arg for arg in raylet.cmdline() if arg.startswith("--dashboard_agent_command=")]
    assert f"--logging-rotate-bytes={_BYTES}" in agent.split()
    assert f"--logging-rotate-backup-count={_BACKUPS}" in agent.split()


def test_workers_where_replicas_run_see_the_same_rotation(running_lis: Any) -> None:
    import ray

    # A replica's access log takes these figures (deployments.service); a task
    # runs in the same kind of worker process.
    assert ray.get(ray.remote(log_rotation).remote(), timeout=60) == (_BYTES, _BACKUPS)
    assert log_rotation() == (_BYTES, _BACKUPS)


def test_the_drivers_environment_is_left_as_it_was(running_lis: Any) -> None:
    # Set only while the head started: a `ray start` this process runs later keeps Ray's own.
    assert not any(name in os.environ for name in LOG_ROTATION_ENVIRONMENT)
