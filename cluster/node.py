"""``lis node head|join|plan``: start or join a Ray cluster with this device's settings.

A node is one ``ray start`` whose flags depend on the board it runs on; this
module turns a ``DevicePlatform`` and the user's options into a ``NodePlan``
(the command, the environment, and one ``Decision`` per setting with its
reason), prints the decisions, then replaces itself with ``ray start``.

Secure by default: every node runs with Ray's token authentication
(``RAY_AUTH_MODE=token``); the head makes the token file if it is missing, a
worker refuses to start without one, and the token travels in a file or an
environment variable, never on the command line (where ``ps`` shows it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cluster import _token
from cluster.platform import DevicePlatform, detect_platform
from cluster.ray_start import (
    LOG_ROTATION_ENVIRONMENT,
    PLATFORM_UNITS,
    SERVE_THROUGHPUT_ENVIRONMENT,
    log_rotation_environment,
)
from vocabulary.connectors import PLATFORMS
from vocabulary.errors import ConfigError, ConfigIssue
from vocabulary.names import CAMERA_NAME_PATTERN, camera_resource, platform_resource

__all__ = [
    "DEFAULT_GCS_PORT",
    "JETSON_OBJECT_STORE_FRACTION",
    "RAY_DEFAULT_OBJECT_STORE_FRACTION",
    "RAY_MIN_OBJECT_STORE_BYTES",
    "SMALL_BOARD_OBJECT_STORE_FRACTION",
    "SMALL_MEMORY_BYTES",
    "TLS_FILES",
    "DashboardChoice",
    "Decision",
    "GiB",
    "MiB",
    "NodeOptions",
    "NodePlan",
    "Role",
    "add_arguments",
    "plan_node",
    "run",
]

MiB = 1024 * 1024
GiB = 1024 * MiB
DEFAULT_GCS_PORT = 6379
# At or below this, a board is "small": Pi 4 (1-8 GB), Jetson Nano (4 GB).
SMALL_MEMORY_BYTES = 4 * GiB
# Ray caps its object store at 30 % of memory by default; a small board
# needs that memory for the models themselves (and Ray counts the store
# against the node's schedulable memory).
SMALL_BOARD_OBJECT_STORE_FRACTION = 0.12
# A Jetson's GPU allocates from the same RAM as its CPU.
JETSON_OBJECT_STORE_FRACTION = 0.15
RAY_DEFAULT_OBJECT_STORE_FRACTION = 0.30
RAY_MIN_OBJECT_STORE_BYTES = 75 * MiB  # ray start refuses less
TLS_FILES = {"RAY_TLS_CA_CERT": "ca.crt", "RAY_TLS_SERVER_CERT": "node.crt",
             "RAY_TLS_SERVER_KEY": "node.key"}

_PLATFORM_REASONS = {
    "x86_64": "an x86_64 machine",
    "jetson": "every Jetson hosts the Aarch64JTX2 connector's services",
    "raspberry-pi": "a Pi hosts the ARMv7 connector's services, on a 64-bit OS "
                    "because Ray has no armv7 wheels",
    "aarch64": "an arm64 board that is no Jetson: the aarch64 connector's CPU services",
    "armv7": "a 32-bit ARM board",
    "unknown": "unrecognised architecture",
}

Role = Literal["head", "join"]
DashboardChoice = Literal["auto", "off", "loopback"]


@dataclass(frozen=True)
class Decision:
    """One setting ``lis node`` chose, and why."""

    setting: str
    value: str
    reason: str

    def __str__(self) -> str:
        return f"{self.setting}: {self.value} -- {self.reason}"


@dataclass(frozen=True)
class NodeOptions:
    """What the user asked for; ``None`` means "decide for this device"."""

    role: Role
    address: str | None = None  # join: the head's HOST[:PORT]
    platform: str | None = None  # a connector suffix overriding detection
    any_platform: bool = False
    cameras: tuple[str, ...] = ()  # cameras on this node, each advertised as camera:<name>
    num_gpus: int | None = None
    num_cpus: int | None = None
    object_store_mib: int | None = None
    dashboard: DashboardChoice = "auto"
    port: int = DEFAULT_GCS_PORT
    node_ip_address: str | None = None
    token_file: Path | None = None
    tls_dir: Path | None = None
    block: bool = False
    ray_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodePlan:
    """Everything needed to start the node, decided but not done."""

    role: Role
    command: tuple[str, ...]
    environment: dict[str, str]  # set on top of the caller's environment
    unset: tuple[str, ...]  # removed from it (a token that must not win)
    decisions: tuple[Decision, ...]
    token: _token.TokenSource
    generate_token: bool = False  # head: the token file is made before starting
    join_hint: str | None = None  # head: how workers join it

    def child_environment(self, environ: Mapping[str, str]) -> dict[str, str]:
        env = {k: v for k, v in environ.items() if k not in self.unset}
        env.update(self.environment)
        return env


def plan_node(options: NodeOptions, device: DevicePlatform,
              environ: Mapping[str, str] | None = None) -> NodePlan:
    """Decide every ``ray start`` setting for ``device``; starts nothing, writes nothing."""
    environ = os.environ if environ is None else environ
    _check_supported(device)
    decisions = [Decision("device", device.name, "; ".join(device.evidence))]
    args: list[str] = _role_args(options, decisions)
    args += _resource_args(options, device, decisions)
    args += _gpu_args(options, device, decisions)
    args += _cpu_args(options, decisions)
    args += _object_store_args(options, device, decisions)
    args += _dashboard_args(options, device, decisions)
    token, generate = _token_decision(options, environ, decisions)
    tls_env = _tls_environment(options, environ, decisions)
    rotation = log_rotation_environment(environ)
    env = {"RAY_USAGE_STATS_ENABLED": "0", **token.environment(), **tls_env,
           **SERVE_THROUGHPUT_ENVIRONMENT, **rotation}
    decisions.append(Decision("usage stats", "off", "RAY_USAGE_STATS_ENABLED=0 and "
                              "--disable-usage-stats: Ray sends no usage statistics"))
    decisions.append(Decision("serve", "high-throughput", "gRPC between deployments, user "
                              "code on each replica's event loop, GC frozen after start-up, "
                              "replica logs to files only, a calmer controller loop and "
                              "metrics export "
                              "(" + ", ".join(sorted(SERVE_THROUGHPUT_ENVIRONMENT)) + ")"))
    decisions.append(_logs_decision(environ, rotation))
    args.append("--disable-usage-stats")
    if options.block:
        args.append("--block")
    args += list(options.ray_args)
    unset = (_token.TOKEN_ENV,) if token.kind == "file" else ()
    return NodePlan(role=options.role, command=(_ray_executable(), "start", *args),
                    environment=env, unset=unset, decisions=tuple(decisions), token=token,
                    generate_token=generate, join_hint=_join_hint(options, token))


def _logs_decision(environ: Mapping[str, str], rotation: dict[str, str]) -> Decision:
    values = {name: environ.get(name, value) for name, value in LOG_ROTATION_ENVIRONMENT.items()}
    reason = ("Ray's default keeps 3 GB a file, and its dashboard agent without a dashboard "
              "logs every second" if rotation else "from the environment")
    return Decision("logs", f"{values['RAY_ROTATION_MAX_BYTES']} bytes and "
                    f"{values['RAY_ROTATION_BACKUP_COUNT']} old per file", reason)


def _check_supported(device: DevicePlatform) -> None:
    if device.ray_supported:
        return
    problem = f"Ray publishes no wheels for {device.machine}: a node needs x86_64 or aarch64"
    if device.connector_suffix == "ARMv7":
        problem = (f"Ray publishes no wheels for {device.machine}: install a 64-bit OS "
                   "(aarch64) on this board, where it hosts the ARMv7 connector's services, "
                   "or place those services on another node")
    raise ConfigError("lis node", [ConfigIssue("this device", None, problem)])


def _role_args(options: NodeOptions, decisions: list[Decision]) -> list[str]:
    args: list[str] = []
    if options.role == "head":
        args += ["--head", f"--port={options.port}"]
        decisions.append(Decision("role", "head", f"GCS on port {options.port}; workers join it"))
    else:
        address = _join_address(options.address)
        args.append(f"--address={address}")
        decisions.append(Decision("role", "worker", f"joins the head at {address}"))
    if options.node_ip_address:
        args.append(f"--node-ip-address={options.node_ip_address}")
        decisions.append(Decision("node address", options.node_ip_address, "--node-ip-address"))
    return args


def _join_address(address: str | None) -> str:
    if not address:
        raise ConfigError("lis node join", [ConfigIssue("command line", "--address",
                                                        "required: the head's HOST[:PORT]")])
    host, _, port = address.rpartition(":") if ":" in address else (address, "", "")
    if not port:
        return f"{address}:{DEFAULT_GCS_PORT}"
    if not port.isdigit() or not host:
        raise ConfigError("lis node join", [ConfigIssue("command line", "--address",
                                                        f"{address!r} is not HOST[:PORT]")])
    return address


def _resource_args(options: NodeOptions, device: DevicePlatform,
                   decisions: list[Decision]) -> list[str]:
    if options.any_platform:
        suffixes, reason = PLATFORMS, "--any-platform: hosts every connector's services"
    elif options.platform:
        suffixes, reason = (options.platform,), f"--platform overrides detected {device.connector_suffix}"
    else:
        suffixes, reason = (device.connector_suffix,), _PLATFORM_REASONS[device.kind]
    resources = {platform_resource(suffix): PLATFORM_UNITS for suffix in suffixes}
    if options.cameras:
        # A pipeline naming one of these cameras runs on this node (docs/pipelines.md).
        resources.update({camera_resource(name): PLATFORM_UNITS for name in options.cameras})
        reason += f"; --camera: {', '.join(options.cameras)}"
    decisions.append(Decision("resources", json.dumps(resources),
                              f"{reason}; logical only: Ray does not check the hardware"))
    return [f"--resources={json.dumps(resources, separators=(',', ':'))}"]


def _gpu_args(options: NodeOptions, device: DevicePlatform,
              decisions: list[Decision]) -> list[str]:
    if options.num_gpus is not None:
        decisions.append(Decision("gpus", str(options.num_gpus), "--num-gpus"))
        return [f"--num-gpus={options.num_gpus}"]
    if device.gpus:
        decisions.append(Decision("gpus", str(device.gpus), "a Jetson's integrated GPU is "
                                  "invisible to NVML, so Ray would count 0"))
        return [f"--num-gpus={device.gpus}"]
    decisions.append(Decision("gpus", "Ray detects", "Ray counts NVIDIA GPUs through NVML"))
    return []


def _cpu_args(options: NodeOptions, decisions: list[Decision]) -> list[str]:
    if options.num_cpus is None:
        return []
    decisions.append(Decision("cpus", str(options.num_cpus), "--num-cpus"))
    return [f"--num-cpus={options.num_cpus}"]


def _object_store_args(options: NodeOptions, device: DevicePlatform,
                       decisions: list[Decision]) -> list[str]:
    size, reason = _object_store_bytes(options, device)
    if size is None:
        decisions.append(Decision("object store", "Ray default", reason))
        return []
    decisions.append(Decision("object store", f"{size // MiB} MiB", reason))
    return [f"--object-store-memory={size}"]


def _object_store_bytes(options: NodeOptions, device: DevicePlatform) -> tuple[int | None, str]:
    if options.object_store_mib is not None:
        size = options.object_store_mib * MiB
        if size < RAY_MIN_OBJECT_STORE_BYTES:
            raise ConfigError("lis node", [ConfigIssue("command line", "--object-store-mib",
                                                       f"{options.object_store_mib} is below "
                                                       "Ray's minimum of 75 MiB")])
        return size, "--object-store-mib"
    memory_gib = f"{device.memory_bytes / GiB:.1f} GiB"
    if device.memory_bytes == 0:
        return None, f"memory unknown: {RAY_DEFAULT_OBJECT_STORE_FRACTION:.0%} of memory"
    if device.memory_bytes <= SMALL_MEMORY_BYTES:
        fraction, why = SMALL_BOARD_OBJECT_STORE_FRACTION, f"small board ({memory_gib})"
    elif device.kind == "jetson":
        fraction, why = JETSON_OBJECT_STORE_FRACTION, f"Jetson: GPU shares the {memory_gib} RAM"
    else:
        return None, f"{RAY_DEFAULT_OBJECT_STORE_FRACTION:.0%} of {memory_gib}"
    size = max(RAY_MIN_OBJECT_STORE_BYTES, int(device.memory_bytes * fraction))
    return size, (f"{why}: {fraction:.0%} instead of Ray's "
                  f"{RAY_DEFAULT_OBJECT_STORE_FRACTION:.0%}, at least 75 MiB")


def _dashboard_args(options: NodeOptions, device: DevicePlatform,
                    decisions: list[Decision]) -> list[str]:
    if options.role != "head":
        decisions.append(Decision("dashboard", "none", "only a head runs the dashboard"))
        return []
    choice, reason = options.dashboard, f"--dashboard {options.dashboard}"
    if choice == "auto":
        small = 0 < device.memory_bytes <= SMALL_MEMORY_BYTES
        choice = "off" if small else "loopback"
        reason = ("saves the dashboard's memory on a small board" if small
                  else "never reachable from the network")
    decisions.append(Decision("dashboard", choice if choice == "off" else "127.0.0.1", reason))
    if choice == "off":
        return ["--include-dashboard=false"]
    return ["--include-dashboard=true", "--dashboard-host=127.0.0.1"]


def _token_decision(options: NodeOptions, environ: Mapping[str, str],
                    decisions: list[Decision]) -> tuple[_token.TokenSource, bool]:
    source = _token.find_token(options.token_file, environ)
    where = str(source.path) if source.path else source.origin
    if options.role == "head" and not source.exists:
        decisions.append(Decision("token", f"new, {where}",
                                  f"{source.origin} does not exist yet: the head makes it (0600)"))
        return source, True
    _token.require(source)
    decisions.append(Decision("token", where, f"from {source.origin}; RAY_AUTH_MODE=token: "
                              "nodes and drivers without it are refused"))
    return source, False


def _tls_environment(options: NodeOptions, environ: Mapping[str, str],
                     decisions: list[Decision]) -> dict[str, str]:
    if options.tls_dir is None:
        if environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            decisions.append(Decision("tls", "on", "RAY_USE_TLS and RAY_TLS_* from the environment"))
        else:
            decisions.append(Decision("tls", "off", "gRPC is authenticated by the token but not "
                                      "encrypted; --tls-dir (cluster/make-certs.sh) encrypts it"))
        return {}
    env = {name: str((options.tls_dir / filename).resolve()) for name, filename in TLS_FILES.items()}
    missing = [ConfigIssue(path, "--tls-dir", "missing") for path in env.values()
               if not Path(path).is_file()]
    if missing:
        raise ConfigError("lis node", missing)
    decisions.append(Decision("tls", "on", f"certificates from {options.tls_dir}"))
    return {"RAY_USE_TLS": "1", **env}


def _join_hint(options: NodeOptions, token: _token.TokenSource) -> str | None:
    if options.role != "head":
        return None
    where = str(token.path) if token.path else "$RAY_AUTH_TOKEN"
    return (f"workers: copy {where} to ~/.config/lis/cluster-token (mode 0600) on each, then "
            f"run: lis node join --address <this host>:{options.port}")


def _ray_executable() -> str:
    # The `ray` installed next to this interpreter, so a venv's lis never
    # starts some other Ray found first on PATH.
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.is_file() else "ray"


# -- command line -------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions = {
        "head": "start this device as the cluster's head",
        "join": "join this device to a head as a worker",
        "plan": "print the decisions and the ray command, start nothing "
                "(a join with --address, else a head)",
    }
    for action, help_text in actions.items():
        _add_node_options(sub.add_parser(action, help=help_text, description=help_text), action)


def _camera_name(value: str) -> str:
    if not re.fullmatch(CAMERA_NAME_PATTERN, value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a camera name (letters, digits, "
                                         "_ . -, at most 63)")
    return value


def _add_node_options(parser: argparse.ArgumentParser, action: str) -> None:
    add = parser.add_argument
    if action != "head":
        add("--address", required=action == "join", metavar="HOST[:PORT]",
            help="the head to join (port 6379 if left out)")
    add("--platform", choices=PLATFORMS,
        help="advertise this connector platform instead of the detected one")
    add("--any-platform", action="store_true",
        help="advertise all three connector platforms (a development box)")
    add("--camera", action="append", default=[], metavar="NAME", type=_camera_name,
        help="a camera on this device: pipelines with camera: NAME run here (repeatable)")
    add("--num-gpus", type=int, metavar="N",
        help="GPUs to advertise (default: 1 on a Jetson, else Ray counts them)")
    add("--num-cpus", type=int, metavar="N", help="CPUs to advertise (default: Ray counts them)")
    add("--object-store-mib", type=int, metavar="MIB",
        help="object store size, at least 75 (default: 12%% of RAM up to 4 GiB, "
             "15%% on a Jetson, else Ray's 30%%)")
    if action != "join":
        add("--dashboard", choices=("auto", "off", "loopback"), default="auto",
            help="head: no dashboard, or one on 127.0.0.1 only (auto: off at 4 GiB or less)")
        add("--port", type=int, default=DEFAULT_GCS_PORT, help="head: the GCS port (6379)")
    add("--node-ip-address", metavar="IP", help="the address other nodes reach this one at")
    add("--token-file", type=Path, metavar="PATH",
        help="the cluster token (default: $RAY_AUTH_TOKEN, else $RAY_AUTH_TOKEN_PATH, else "
             "~/.config/lis/cluster-token); a head makes the file if it is missing")
    add("--tls-dir", type=Path, metavar="DIR",
        help="encrypt Ray's gRPC with DIR/ca.crt, node.crt, node.key (cluster/make-certs.sh)")
    if action != "plan":
        add("--block", action="store_true", help="stay in the foreground (for systemd)")
    add("--device-root", type=Path, default=Path("/"), metavar="DIR",
        help="read the device's files under DIR instead of / (captured files)")
    add("--machine", metavar="ARCH", help="the architecture to assume (uname -m)")
    add("ray_args", nargs=argparse.REMAINDER, metavar="-- RAY_START_ARGS",
        help="passed to `ray start` unchanged")


def run(args: argparse.Namespace) -> int:
    device = detect_platform(args.device_root, args.machine)
    address = getattr(args, "address", None)
    role: Role = "join" if address else "head"
    plan = plan_node(_options(args, role), device)
    _print_decisions(plan)
    if args.action == "plan":
        _print_command(plan)
        return 0
    return _start(plan)


def _options(args: argparse.Namespace, role: Role) -> NodeOptions:
    ray_args = list(args.ray_args)
    if ray_args[:1] == ["--"]:
        ray_args = ray_args[1:]
    return NodeOptions(
        role=role, address=getattr(args, "address", None), platform=args.platform,
        any_platform=args.any_platform, cameras=tuple(args.camera), num_gpus=args.num_gpus,
        num_cpus=args.num_cpus,
        object_store_mib=args.object_store_mib, dashboard=getattr(args, "dashboard", "auto"),
        port=getattr(args, "port", DEFAULT_GCS_PORT), node_ip_address=args.node_ip_address,
        token_file=args.token_file, tls_dir=args.tls_dir, block=getattr(args, "block", False),
        ray_args=tuple(ray_args))


def _print_decisions(plan: NodePlan) -> None:
    for decision in plan.decisions:
        print(f"lis node: {decision}")


def _print_command(plan: NodePlan) -> None:
    shown_env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(plan.environment.items()))
    print(f"lis node: would run: {shown_env} {shlex.join(plan.command)}")
    unset = [name for name in plan.unset if name in os.environ]
    if unset:
        print(f"lis node: with {', '.join(unset)} removed from the environment")
    if plan.join_hint:
        print(f"lis node: {plan.join_hint}")


def _start(plan: NodePlan) -> int:
    if plan.generate_token:
        assert plan.token.path is not None
        _token.write_new_token(plan.token.path)
        print(f"lis node: token: wrote {plan.token.path} (0600)")
    if plan.join_hint:
        print(f"lis node: {plan.join_hint}")
    sys.stdout.flush()
    env = plan.child_environment(os.environ)
    # exec, not a child: signals (systemd's stop, Ctrl-C) reach `ray start`
    # directly, and with --block it stops the node's processes itself.
    os.execvpe(plan.command[0], list(plan.command), env)
    return 0  # not reached
