"""Issue #17, door 4: the Ray that ``lis up`` starts for one box, reached from the LAN.

On the code before this change ``lis up`` started Ray with ``ray.init()``:
Ray's GCS, raylet and agents listened on every interface, and Ray 2.60 turned
token authentication on by default with a token it wrote to
``~/.ray/auth_token`` with the umask's mode (0644 here: any local user could
read it and drive the Ray, running code as lis's user). Each test here fails
there: the listening sockets are on the LAN address, lis's token file does
not exist, and a token file readable by others is not looked at.

Now a box's Ray binds and advertises 127.0.0.1 only (Ray Serve's
inter-deployment gRPC servers bind every interface, Ray's code, and check the
token), and every call must carry lis's own token, kept 0600.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import pytest
from waiting import wait_for_line

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 240
SERVICES = """\
services:
  - LocalInferenceServiceName: guarded
    ConnectorArn: arn:aws:greengrass:us-west-2::/connectors/ImageClassificationx86-64/versions/2
    model: {model}
    num_cpus: 0.25
"""
LIS = str(Path(sys.executable).with_name("lis"))
# Ray's processes of the stack, by the name psutil reads.
RAY_CORE = ("gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent")
REFUSED = "Authentication token is missing or incorrect"


@dataclass
class Box:
    home: Path
    process: subprocess.Popen[bytes]
    log: Path

    def stack(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def gcs_address(self) -> str:
        gcs = next(p for p in self.stack() if p.name() == "gcs_server")
        port = next(a.laddr.port for a in gcs.net_connections("tcp")
                    if a.status == psutil.CONN_LISTEN)
        return f"127.0.0.1:{port}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _environment(home: Path) -> dict[str, str]:
    """A user of its own: lis's token files under ``home``, none of Ray's own."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_AUTH")}
    return {**env, "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def box(tiny_classifier_artifact: Path, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Box]:
    folder = tmp_path_factory.mktemp("box")
    config = folder / "services.yaml"
    config.write_text(SERVICES.format(model=tiny_classifier_artifact))
    log = folder / "lis-up.log"
    with log.open("wb") as out:
        process = subprocess.Popen([LIS, "up", str(config), "--port", str(_free_port())],
                                   stdout=out, stderr=subprocess.STDOUT,
                                   env=_environment(folder / "home"))
    started = Box(folder / "home", process, log)
    try:
        wait_for_line(process, log, "lis: serving on", timeout_s=START_TIMEOUT_S, what="lis up")
        yield started
    finally:
        stack = started.stack()
        process.terminate()
        _, alive = psutil.wait_procs([psutil.Process(process.pid), *stack], timeout=40)
        for leftover in alive:
            leftover.kill()


def _listening(process: psutil.Process) -> list[tuple[str, int]]:
    try:
        return [(a.laddr.ip, a.laddr.port) for a in process.net_connections("tcp")
                if a.status == psutil.CONN_LISTEN]
    except psutil.Error:
        return []  # an idle worker that ended meanwhile


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def test_rays_own_ports_listen_on_loopback_only(box: Box) -> None:
    core = [p for p in box.stack() if p.name() in RAY_CORE]
    assert {p.name() for p in core} == set(RAY_CORE)
    sockets = {p.name(): _listening(p) for p in core}
    assert all(sockets.values()), sockets
    exposed = {name: [s for s in found if not _loopback(s[0])] for name, found in sockets.items()}
    assert not any(exposed.values()), exposed


def test_the_token_file_is_the_owners_alone(box: Box) -> None:
    token = box.home / ".config" / "lis" / "local-ray-token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    assert len(token.read_text().strip()) == 64
    assert not (box.home / ".ray" / "auth_token").exists()  # Ray's readable default is not used


def _driver(address: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = ("import ray; ray.init(address=%r, log_to_driver=False); "
            "print('nodes', len(ray.nodes()))" % address)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}, timeout=120)


def test_a_driver_without_the_token_is_refused(box: Box, tmp_path: Path) -> None:
    # A local user who cannot read the owner's file: no token of their own either.
    refused = _driver(box.gcs_address(), _environment(tmp_path))
    assert refused.returncode != 0 and REFUSED in refused.stderr, refused.stderr[-2000:]
    token = box.home / ".config" / "lis" / "local-ray-token"
    allowed = _driver(box.gcs_address(), {**_environment(tmp_path), "RAY_AUTH_MODE": "token",
                                          "RAY_AUTH_TOKEN_PATH": str(token)})
    assert allowed.returncode == 0 and "nodes 1" in allowed.stdout, allowed.stderr[-2000:]


def test_serve_grpc_ports_on_every_interface_require_the_token(box: Box) -> None:
    replicas = [p for p in box.stack() if p.name().startswith("ray::ServeRepli")]
    open_ports = [port for p in replicas for ip, port in _listening(p) if not _loopback(ip)]
    assert open_ports, "expected Ray Serve's inter-deployment gRPC servers"
    for port in open_ports:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/ray.serve.ASGIService/HandleRequest")
            with pytest.raises(grpc.RpcError) as refused:
                call(b"", timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value


@pytest.mark.parametrize(("text", "mode", "problem"), [
    ("0" * 64, 0o644, "readable by other users (mode 644): chmod 600 it"),
    ("", 0o600, "the file is empty"),
    ("abc123", 0o600, "the token is 6 characters: at least 32 are needed"),
], ids=["world-readable", "empty", "short"])
def test_an_unusable_token_file_stops_lis_up_before_ray_starts(
        tmp_path: Path, tiny_classifier_artifact: Path, text: str, mode: int,
        problem: str) -> None:
    token = tmp_path / ".config" / "lis" / "local-ray-token"
    token.parent.mkdir(parents=True, mode=0o700)
    token.write_text(text)
    token.chmod(mode)
    config = tmp_path / "services.yaml"
    config.write_text(SERVICES.format(model=tiny_classifier_artifact))
    run = subprocess.run([LIS, "up", str(config), "--port", str(_free_port())],
                         capture_output=True, text=True, env=_environment(tmp_path), timeout=120)
    assert run.returncode != 0
    assert f"{token}: {problem}" in run.stderr + run.stdout, run.stderr[-2000:]
    assert "Connected to Ray" not in run.stderr + run.stdout
