"""Which device this is, read from the files Linux exposes.

The answer decides which connector's services a node hosts: Greengrass
shipped each connector for three platforms, and lis keeps their suffixes as
the names of Ray's placement resources (``connector-platform:<suffix>``).

- ``x86-64``: any x86_64 machine.
- ``Aarch64JTX2``: every NVIDIA Jetson (TX2, Xavier, Orin, Nano), found by
  ``/etc/nv_tegra_release`` or a device tree naming ``nvidia,tegra``/Jetson.
  A Jetson's integrated GPU is invisible to NVML, so Ray cannot count it:
  ``gpus`` is 1 here and ``lis node`` passes it to Ray.
- ``ARMv7``: a Raspberry Pi. Ray publishes no wheels for 32-bit armv7, so a
  Pi joins the cluster only with a 64-bit OS (aarch64), where it hosts the
  ARMv7 connector's services.

Every read goes through ``root`` so tests point it at captured files.
"""

from __future__ import annotations

import platform as _host
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vocabulary.connectors import Platform

__all__ = [
    "DeviceKind",
    "DevicePlatform",
    "detect_platform",
]

DeviceKind = Literal["x86_64", "jetson", "raspberry-pi", "aarch64", "armv7", "unknown"]

# /proc/device-tree is a link to /sys/firmware/devicetree/base; captured trees
# (and some containers) have only one of them.
_DEVICE_TREE_DIRS = ("proc/device-tree", "sys/firmware/devicetree/base")
_TEGRA_RELEASE = "etc/nv_tegra_release"
_MEMINFO = "proc/meminfo"
_CPUINFO = "proc/cpuinfo"
_JETSON_GPUS = 1  # every Jetson module has exactly one integrated GPU


@dataclass(frozen=True)
class DevicePlatform:
    """What ``lis node`` needs to know about the device it runs on."""

    kind: DeviceKind
    machine: str  # the kernel's architecture name (``uname -m``)
    connector_suffix: Platform
    model: str | None  # the board's own name, from the device tree or /proc/cpuinfo
    jetson_model: str | None  # e.g. "NVIDIA Jetson TX2"; None when not a Jetson
    l4t_release: str | None  # Jetson Linux release, e.g. "R32.7.1"
    memory_bytes: int  # MemTotal; 0 when /proc/meminfo is unreadable
    gpus: int  # GPUs Ray must be told about (Jetson); 0 lets Ray detect its own
    evidence: tuple[str, ...]  # the files and values the answer rests on

    @property
    def ray_supported(self) -> bool:
        """Whether Ray publishes wheels for this architecture."""
        return self.machine in ("x86_64", "aarch64")

    @property
    def memory_mib(self) -> int:
        return self.memory_bytes // (1024 * 1024)

    @property
    def name(self) -> str:
        """The board's name and architecture, for people."""
        return f"{self.model or self.kind} ({self.machine})"


def detect_platform(root: Path = Path("/"), machine: str | None = None) -> DevicePlatform:
    """Recognise the device whose files live under ``root``.

    ``machine`` is ``uname -m``; it defaults to this host's, so pass it
    together with a ``root`` of captured files.
    """
    machine = _normalise_machine(machine or _host.machine())
    tree = _device_tree(root)
    memory = _memory_bytes(root)
    if machine == "x86_64":
        return _platform("x86_64", machine, "x86-64", memory, _cpu_model(root),
                         evidence=(f"machine {machine}",))
    tegra = _read_text(root / _TEGRA_RELEASE)
    if tegra is not None or _is_jetson_tree(tree):
        return _jetson(machine, tree, tegra, memory)
    if _is_raspberry_pi(tree, root):
        model = tree.get("model") or _cpuinfo_field(root, "Model")
        kind: DeviceKind = "raspberry-pi" if machine == "aarch64" else "armv7"
        return _platform(kind, machine, "ARMv7", memory, model,
                         evidence=(f"machine {machine}", f"device tree model {model!r}"))
    if machine == "aarch64":
        # A generic arm64 board runs the aarch64 connector's CPU services.
        return _platform("aarch64", machine, "Aarch64JTX2", memory, tree.get("model"),
                         evidence=(f"machine {machine}", "no Jetson or Raspberry Pi markers"))
    if machine.startswith("armv7"):
        return _platform("armv7", machine, "ARMv7", memory, tree.get("model"),
                         evidence=(f"machine {machine}",))
    return _platform("unknown", machine, "x86-64", memory, None,
                     evidence=(f"machine {machine} is not one lis knows",))


def _platform(kind: DeviceKind, machine: str, suffix: Platform, memory: int,
              model: str | None, *, evidence: tuple[str, ...]) -> DevicePlatform:
    return DevicePlatform(kind=kind, machine=machine, connector_suffix=suffix, model=model,
                          jetson_model=None, l4t_release=None, memory_bytes=memory, gpus=0,
                          evidence=evidence)


def _jetson(machine: str, tree: dict[str, str], tegra: str | None,
            memory: int) -> DevicePlatform:
    release = _l4t_release(tegra) if tegra is not None else None
    model = tree.get("model") or "NVIDIA Jetson"
    evidence = [f"machine {machine}"]
    if tegra is not None:
        evidence.append(f"/etc/nv_tegra_release {release or 'present'}")
    if tree:
        evidence.append(f"device tree {model!r}")
    return DevicePlatform(kind="jetson", machine=machine, connector_suffix="Aarch64JTX2",
                          model=model, jetson_model=model, l4t_release=release,
                          memory_bytes=memory, gpus=_JETSON_GPUS, evidence=tuple(evidence))


def _normalise_machine(machine: str) -> str:
    aliases = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}
    return aliases.get(machine.lower(), machine.lower())


def _device_tree(root: Path) -> dict[str, str]:
    """``model`` and ``compatible`` from the device tree; empty without one."""
    for relative in _DEVICE_TREE_DIRS:
        base = root / relative
        entries = {name: _read_strings(base / name) for name in ("model", "compatible")}
        found = {name: value for name, value in entries.items() if value}
        if found:
            return found
    return {}


def _read_strings(path: Path) -> str | None:
    # Device-tree properties are NUL-terminated string lists
    # ("nvidia,p2771-0000\0nvidia,tegra186\0"): keep them as one line.
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    parts = [part.decode("utf-8", "replace").strip() for part in raw.split(b"\0")]
    return "; ".join(part for part in parts if part) or None


def _is_jetson_tree(tree: dict[str, str]) -> bool:
    text = " ".join(tree.values()).lower()
    return "nvidia,tegra" in text or "jetson" in text


def _is_raspberry_pi(tree: dict[str, str], root: Path) -> bool:
    text = " ".join(tree.values()).lower()
    if "raspberrypi" in text or "raspberry pi" in text:
        return True
    return "raspberry pi" in (_cpuinfo_field(root, "Model") or "").lower()


def _l4t_release(text: str) -> str | None:
    # "# R32 (release), REVISION: 7.1, GCID: ..." -> "R32.7.1"
    match = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"R{match.group(1)}.{match.group(2)}" if match else None


def _memory_bytes(root: Path) -> int:
    text = _read_text(root / _MEMINFO) or ""
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def _cpu_model(root: Path) -> str | None:
    return _cpuinfo_field(root, "model name")


def _cpuinfo_field(root: Path, field: str) -> str | None:
    text = _read_text(root / _CPUINFO) or ""
    match = re.search(rf"^{re.escape(field)}\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
