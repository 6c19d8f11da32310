"""A real two-node Ray cluster started by `lis node`, guarded by its token.

One head and one worker on this machine (Ray needs distinct ports, nothing
else). Shows what an operator relies on: a node or a driver without the
cluster's token is turned away by the head, one with it joins.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from waiting import wait_for_line

from cluster import _token

pytestmark = pytest.mark.slow

LIS = str(Path(sys.executable).with_name("lis"))
RAY = str(Path(sys.executable).with_name("ray"))
STARTED = "Ray runtime started"
START_TIMEOUT_S = 90
REFUSAL_TIMEOUT_S = 60
_COUNT_NODES = ("import ray, json; ray.init(address='{address}', log_to_driver=False); "
                "print(json.dumps([n['Resources'] for n in ray.nodes() if n['Alive']]))")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def without_token(environ: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if not k.startswith("RAY_AUTH")}


def start_node(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`lis node ... --block`, which becomes `ray start --block`; waits until it is up."""
    with log.open("wb") as out:
        process = subprocess.Popen([LIS, "node", *args, "--block"], stdout=out,
                                   stderr=subprocess.STDOUT, env=env)

    try:
        wait_for_line(process, log, STARTED, timeout_s=START_TIMEOUT_S, what="lis node")
    except AssertionError:
        stop(process)
        raise
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    # `ray start --block` stops the node's own processes on SIGTERM.
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def base_env() -> dict[str, str]:
    env = without_token(dict(os.environ))
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_ADDRESS="")
    return env


@pytest.fixture
def head(tmp_path: Path, base_env: dict[str, str]) -> Iterator[tuple[str, Path]]:
    """A head on free ports with a fresh token; yields (address, token file)."""
    # Ray's session folder holds unix sockets: keep its path short.
    ray_tmp = Path(tempfile.mkdtemp(prefix="lisray-", dir="/tmp"))
    token_file = tmp_path / "head" / "cluster-token"
    port = free_port()
    process = start_node(
        ["head", "--token-file", str(token_file), "--port", str(port), "--num-cpus", "1",
         "--object-store-mib", "80", "--dashboard", "off", "--",
         "--temp-dir", str(ray_tmp), "--ray-client-server-port", str(free_port()),
         "--dashboard-agent-listen-port", str(free_port())],
        tmp_path / "head.log", base_env)
    try:
        yield f"127.0.0.1:{port}", token_file
    finally:
        stop(process)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_only_nodes_and_drivers_with_the_token_get_in(head, tmp_path: Path,
                                                       base_env: dict[str, str]) -> None:
    address, head_token = head
    assert oct(head_token.stat().st_mode & 0o777) == "0o600"

    # lis itself will not even try without a token.
    refused = subprocess.run([LIS, "node", "join", "--address", address],
                             capture_output=True, text=True, env=base_env,
                             timeout=REFUSAL_TIMEOUT_S)
    assert refused.returncode == 1 and "no cluster token here" in refused.stderr

    # A plain `ray start` without the token is turned away by the head, and
    # so is a driver. (Each client retries for ~20 s first: run them together.)
    intruder = subprocess.Popen(
        [RAY, "start", f"--address={address}", "--num-cpus=1",
         f"--object-store-memory={80 * 1024 * 1024}", "--block"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=base_env)
    driver = subprocess.Popen([sys.executable, "-c", _COUNT_NODES.format(address=address)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=base_env)
    for client, error in ((intruder, "Authentication token is missing or incorrect"),
                          (driver, "AuthenticationError")):
        try:
            output, _ = client.communicate(timeout=REFUSAL_TIMEOUT_S)
        finally:
            stop(client)  # a client that got in must not outlive the test
        assert client.returncode != 0 and error in output

    # With the head's token copied over, `lis node join` gets in.
    worker_token = tmp_path / "worker" / "cluster-token"
    worker_token.parent.mkdir()
    shutil.copy(head_token, worker_token)
    worker = start_node(
        ["join", "--address", address, "--token-file", str(worker_token), "--platform", "ARMv7",
         "--num-cpus", "1", "--object-store-mib", "80", "--",
         "--dashboard-agent-listen-port", str(free_port())],
        tmp_path / "worker.log", base_env)
    try:
        with_token = {**base_env, **_token.TokenSource("file", worker_token, "test", True)
                      .environment()}
        nodes = subprocess.run([sys.executable, "-c", _COUNT_NODES.format(address=address)],
                               capture_output=True, text=True, env=with_token,
                               timeout=REFUSAL_TIMEOUT_S, check=True)
        resources = nodes.stdout.strip().splitlines()[-1]
        assert resources.count("connector-platform:") == 2  # head x86-64, worker ARMv7
        assert '"connector-platform:ARMv7": 1.0' in resources
    finally:
        stop(worker)
