"""What `lis node` decides on each captured device, and what it refuses."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from cluster import _token
from cluster.node import NodeOptions, NodePlan, plan_node
from cluster.platform import detect_platform
from serve_app.cli import main as lis
from vocabulary.errors import ConfigError

MiB = 1024 * 1024


def plan_for(device, name: str, role: str = "head", **options) -> NodePlan:
    captured = device(name)
    address = "10.0.0.1" if role == "join" else None
    return plan_node(NodeOptions(role=role, address=address, **options),  # type: ignore[arg-type]
                     detect_platform(captured.root, captured.machine))


def flag(plan: NodePlan, name: str) -> str | None:
    """The value of ``--name=value`` in the ray command, None when absent."""
    values = [arg.split("=", 1)[1] for arg in plan.command if arg.startswith(f"{name}=")]
    assert len(values) <= 1
    return values[0] if values else None


def decision(plan: NodePlan, setting: str) -> str:
    return next(d.value for d in plan.decisions if d.setting == setting)


@pytest.mark.parametrize("name, suffix", [
    ("x86_64", "x86-64"), ("jetson-tx2", "Aarch64JTX2"),
    ("jetson-orin-nano", "Aarch64JTX2"), ("pi4-64bit", "ARMv7"),
])
def test_each_device_advertises_its_connector_platform(device, name: str, suffix: str) -> None:
    plan = plan_for(device, name)
    assert json.loads(flag(plan, "--resources") or "") == {f"connector-platform:{suffix}": 1}


@pytest.mark.parametrize("name, gpus", [
    ("x86_64", None), ("jetson-tx2", "1"), ("jetson-orin-nano", "1"), ("pi4-64bit", None),
])
def test_only_jetsons_are_told_their_gpu_count(device, token_file: Path, name: str,
                                               gpus: str | None) -> None:
    plan = plan_for(device, name, role="join", token_file=token_file)
    assert flag(plan, "--num-gpus") == gpus


@pytest.mark.parametrize("name, object_store_mib", [
    ("x86_64", None),  # Ray's default: 30 % of 15.5 GiB is harmless
    ("jetson-tx2", 1177),  # 15 % of 7849 MiB: the GPU shares this RAM
    ("jetson-orin-nano", 1116),
    ("pi4-64bit", 455),  # 12 % of 3793 MiB instead of Ray's 1138
])
def test_object_store_is_sized_for_the_board(device, name: str,
                                             object_store_mib: int | None) -> None:
    size = flag(plan_for(device, name), "--object-store-memory")
    assert (int(size) // MiB if size else None) == object_store_mib


def test_object_store_never_goes_below_rays_minimum(copy_device) -> None:
    pi = copy_device("pi4-64bit")
    (pi.root / "proc" / "meminfo").write_text("MemTotal:         444152 kB\n")  # a 512 MB board
    plan = plan_node(NodeOptions(role="head"), detect_platform(pi.root, pi.machine))
    assert int(flag(plan, "--object-store-memory") or 0) == 75 * MiB


def test_object_store_below_75_mib_is_refused(device) -> None:
    with pytest.raises(ConfigError, match="--object-store-mib: 50 is below Ray's minimum"):
        plan_for(device, "pi4-64bit", object_store_mib=50)


@pytest.mark.parametrize("name, include, host", [
    ("x86_64", "true", "127.0.0.1"), ("jetson-tx2", "true", "127.0.0.1"),
    ("pi4-64bit", "false", None),
])
def test_head_dashboard_is_off_on_small_boards_and_loopback_elsewhere(
        device, name: str, include: str, host: str | None) -> None:
    plan = plan_for(device, name)
    assert (flag(plan, "--include-dashboard"), flag(plan, "--dashboard-host")) == (include, host)


def test_dashboard_can_be_switched_off_on_a_large_head(device) -> None:
    assert flag(plan_for(device, "x86_64", dashboard="off"), "--include-dashboard") == "false"


def test_platform_override_and_any_platform(device) -> None:
    override = plan_for(device, "jetson-tx2", platform="x86-64")
    assert json.loads(flag(override, "--resources") or "") == {"connector-platform:x86-64": 1}
    every = plan_for(device, "pi4-64bit", any_platform=True)
    assert set(json.loads(flag(every, "--resources") or "")) == {
        "connector-platform:x86-64", "connector-platform:ARMv7", "connector-platform:Aarch64JTX2"}


def test_gpu_count_override_wins_over_detection(device) -> None:
    assert flag(plan_for(device, "jetson-orin-nano", num_gpus=0), "--num-gpus") == "0"


def test_every_node_turns_token_auth_and_usage_stats_off(device, token_file: Path) -> None:
    for role in ("head", "join"):
        plan = plan_for(device, "x86_64", role=role, token_file=token_file)
        assert plan.environment["RAY_AUTH_MODE"] == "token"
        assert plan.environment["RAY_AUTH_TOKEN_PATH"] == str(token_file)
        assert plan.environment["RAY_USAGE_STATS_ENABLED"] == "0"
        # Every node's Ray processes start with Ray Serve's high-throughput settings.
        assert plan.environment["RAY_SERVE_USE_GRPC_BY_DEFAULT"] == "1"
        assert plan.environment["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
        assert "--disable-usage-stats" in plan.command


def test_join_without_a_token_is_refused_before_anything_starts(device, capsys) -> None:
    code = lis(["node", "join", "--address", "10.0.0.1", *device("pi4-64bit").cli_args()])
    err = capsys.readouterr().err
    assert code == 1
    assert "no cluster token here" in err and "cluster-token" in err


def test_join_refuses_a_token_file_others_can_read(device, token_file: Path) -> None:
    token_file.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by other users .* chmod 600"):
        plan_for(device, "x86_64", role="join", token_file=token_file)


def test_join_takes_the_token_from_the_environment(device, monkeypatch, capsys) -> None:
    secret = "f" * 64
    monkeypatch.setenv("RAY_AUTH_TOKEN", secret)
    code = lis(["node", "plan", "--address", "10.0.0.1", *device("x86_64").cli_args()])
    out = capsys.readouterr().out
    assert code == 0
    assert "token: the RAY_AUTH_TOKEN environment variable" in out
    assert secret not in out
    plan = plan_for(device, "x86_64", role="join")
    assert plan.environment["RAY_AUTH_MODE"] == "token"
    assert "RAY_AUTH_TOKEN_PATH" not in plan.environment
    assert all(secret not in arg for arg in plan.command)


def test_the_token_is_never_on_the_command_line_or_printed(device, token_file: Path,
                                                           capsys) -> None:
    secret = token_file.read_text()
    code = lis(["node", "plan", "--address", "10.0.0.1:6380", "--token-file", str(token_file),
                *device("jetson-tx2").cli_args()])
    out = capsys.readouterr().out
    assert code == 0
    assert "--address=10.0.0.1:6380" in out
    assert secret not in out
    plan = plan_for(device, "jetson-tx2", role="join", token_file=token_file)
    assert all(secret not in arg for arg in plan.command)


def test_a_token_file_wins_over_a_token_in_the_environment(device, token_file: Path,
                                                          monkeypatch) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", "stale")
    plan = plan_for(device, "x86_64", role="join", token_file=token_file)
    env = plan.child_environment(os.environ)
    assert "RAY_AUTH_TOKEN" not in env  # Ray would prefer it over the file
    assert env["RAY_AUTH_TOKEN_PATH"] == str(token_file)


def test_plan_for_a_new_head_writes_no_token(device, no_real_token: Path, capsys) -> None:
    assert lis(["node", "plan", *device("x86_64").cli_args()]) == 0
    assert f"token: new, {no_real_token}" in capsys.readouterr().out
    assert not no_real_token.exists()


def test_head_makes_a_private_token_then_starts_ray(device, no_real_token: Path,
                                                    monkeypatch, capsys) -> None:
    started: list[tuple[list[str], dict[str, str]]] = []

    def fake_exec(program: str, argv: list[str], env: dict[str, str]) -> None:
        started.append((argv, env))

    monkeypatch.setattr("cluster.node.os.execvpe", fake_exec)
    assert lis(["node", "head", "--block", *device("x86_64").cli_args()]) == 0
    assert stat.S_IMODE(no_real_token.stat().st_mode) == 0o600
    assert len(no_real_token.read_text()) == 64
    (argv, env), = started
    assert argv[1:4] == ["start", "--head", "--port=6379"] and "--block" in argv
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == str(no_real_token)
    assert "lis node join --address" in capsys.readouterr().out
    # A restart (reboot, systemd) reuses the token the workers already hold.
    token = no_real_token.read_text()
    assert lis(["node", "head", *device("x86_64").cli_args()]) == 0
    assert no_real_token.read_text() == token


def test_a_32_bit_pi_is_refused_with_the_reason(device, capsys) -> None:
    code = lis(["node", "plan", "--device-root", str(device("pi4-64bit").root),
                "--machine", "armv7l"])
    assert code == 1
    assert "Ray publishes no wheels for armv7l: install a 64-bit OS" in capsys.readouterr().err


def test_every_node_keeps_rays_logs_small_unless_the_environment_says(
        device, token_file: Path) -> None:
    captured = device("x86_64")
    platform = detect_platform(captured.root, captured.machine)
    options = NodeOptions(role="head", token_file=token_file)
    plan = plan_node(options, platform, environ={})
    assert plan.environment["RAY_ROTATION_MAX_BYTES"] == str(16 * MiB)
    assert plan.environment["RAY_ROTATION_BACKUP_COUNT"] == "2"
    assert decision(plan, "logs") == f"{16 * MiB} bytes and 2 old per file"
    own = plan_node(options, platform, environ={"RAY_ROTATION_MAX_BYTES": "1000"})
    assert "RAY_ROTATION_MAX_BYTES" not in own.environment
    assert own.child_environment({"RAY_ROTATION_MAX_BYTES": "1000"})[
        "RAY_ROTATION_MAX_BYTES"] == "1000"
    assert decision(own, "logs") == "1000 bytes and 2 old per file"


def test_tls_dir_sets_rays_tls_variables(device, tmp_path: Path) -> None:
    certs = tmp_path / "tls"
    certs.mkdir()
    for name in ("ca.crt", "node.crt", "node.key"):
        (certs / name).write_text("PEM")
    plan = plan_for(device, "x86_64", tls_dir=certs)
    assert plan.environment["RAY_USE_TLS"] == "1"
    assert plan.environment["RAY_TLS_CA_CERT"] == str(certs / "ca.crt")
    assert plan.environment["RAY_TLS_SERVER_KEY"] == str(certs / "node.key")
    (certs / "node.key").unlink()
    with pytest.raises(ConfigError, match="node.key: --tls-dir: missing"):
        plan_for(device, "x86_64", tls_dir=certs)


def test_join_address_gets_the_default_port_and_bad_ones_are_refused(device,
                                                                     token_file: Path) -> None:
    plan = plan_node(NodeOptions(role="join", address="head.local", token_file=token_file),
                     detect_platform(device("x86_64").root, "x86_64"))
    assert "--address=head.local:6379" in plan.command
    with pytest.raises(ConfigError, match="--address"):
        plan_node(NodeOptions(role="join", address="head:port", token_file=token_file),
                  detect_platform(device("x86_64").root, "x86_64"))


def test_extra_ray_arguments_after_double_dash_pass_through(device, capsys) -> None:
    assert lis(["node", "plan", *device("x86_64").cli_args(), "--",
                "--temp-dir", "/var/tmp/ray"]) == 0
    assert "--disable-usage-stats --temp-dir /var/tmp/ray" in capsys.readouterr().out


def test_every_decision_is_printed_on_its_own_line(device, capsys) -> None:
    assert lis(["node", "plan", *device("jetson-tx2").cli_args()]) == 0
    lines = capsys.readouterr().out.splitlines()
    settings = [line.split(":")[1].strip() for line in lines if " -- " in line]
    assert settings == ["device", "role", "resources", "gpus", "object store", "dashboard",
                        "token", "tls", "usage stats", "serve", "logs"]
    assert any("Jetson's integrated GPU is invisible to NVML" in line for line in lines)


def test_token_helper_for_drivers(no_real_token: Path) -> None:
    assert _token.cluster_auth_environment({}) == {}
    _token.write_new_token(no_real_token)
    assert _token.cluster_auth_environment({}) == {
        "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(no_real_token)}


def test_a_node_advertises_its_cameras_for_pipelines(device, capsys) -> None:
    plan = plan_for(device, "pi4-64bit", cameras=("door", "yard"))
    assert json.loads(flag(plan, "--resources") or "") == {
        "connector-platform:ARMv7": 1, "camera:door": 1, "camera:yard": 1}
    assert "--camera: door, yard" in next(d.reason for d in plan.decisions
                                          if d.setting == "resources")
    with pytest.raises(SystemExit):
        lis(["node", "plan", "--camera", "front door"])
    assert "is not a camera name" in capsys.readouterr().err
