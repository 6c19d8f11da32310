from __future__ import annotations

import pytest

from cluster.platform import detect_platform

DEVICES = ("jetson-tx2", "jetson-orin-nano", "pi4-64bit", "x86_64")

# device -> (kind, connector suffix, model, L4T release, GPUs, MemTotal in MiB)
EXPECTED = {
    "jetson-tx2": ("jetson", "Aarch64JTX2", "NVIDIA Jetson TX2", "R32.7.1", 1, 7849),
    "jetson-orin-nano": ("jetson", "Aarch64JTX2", "NVIDIA Jetson Orin Nano Developer Kit",
                         "R36.3.0", 1, 7441),
    "pi4-64bit": ("raspberry-pi", "ARMv7", "Raspberry Pi 4 Model B Rev 1.4", None, 0, 3793),
    "x86_64": ("x86_64", "x86-64", "11th Gen Intel(R) Core(TM) i5-1135G7 @ 2.40GHz", None, 0,
               15867),
}


@pytest.mark.parametrize("name", DEVICES)
def test_each_captured_device_is_recognised(device, name: str) -> None:
    captured = device(name)
    found = detect_platform(captured.root, captured.machine)
    kind, suffix, model, release, gpus, memory_mib = EXPECTED[name]
    assert (found.kind, found.connector_suffix, found.model) == (kind, suffix, model)
    assert (found.l4t_release, found.gpus, found.memory_mib) == (release, gpus, memory_mib)
    assert found.ray_supported


def test_jetson_model_is_only_set_on_jetsons(device) -> None:
    models = {name: detect_platform(device(name).root, device(name).machine).jetson_model
              for name in DEVICES}
    assert models == {"jetson-tx2": "NVIDIA Jetson TX2",
                      "jetson-orin-nano": "NVIDIA Jetson Orin Nano Developer Kit",
                      "pi4-64bit": None, "x86_64": None}


def test_a_jetson_is_found_by_its_device_tree_alone(copy_device) -> None:
    # Containers often lack /etc/nv_tegra_release but see the host's tree.
    orin = copy_device("jetson-orin-nano")
    (orin.root / "etc" / "nv_tegra_release").unlink()
    found = detect_platform(orin.root, orin.machine)
    assert (found.kind, found.connector_suffix, found.gpus) == ("jetson", "Aarch64JTX2", 1)
    assert found.l4t_release is None


def test_a_jetson_is_found_by_nv_tegra_release_alone(copy_device) -> None:
    tx2 = copy_device("jetson-tx2")
    for name in ("model", "compatible"):
        (tx2.root / "proc" / "device-tree" / name).unlink()
    found = detect_platform(tx2.root, tx2.machine)
    assert (found.kind, found.l4t_release, found.gpus) == ("jetson", "R32.7.1", 1)


def test_the_sysfs_device_tree_is_read_when_proc_has_none(copy_device) -> None:
    pi = copy_device("pi4-64bit")
    sysfs = pi.root / "sys" / "firmware" / "devicetree"
    sysfs.mkdir(parents=True)
    (pi.root / "proc" / "device-tree").rename(sysfs / "base")
    found = detect_platform(pi.root, pi.machine)
    assert (found.kind, found.model) == ("raspberry-pi", "Raspberry Pi 4 Model B Rev 1.4")


def test_a_pi_with_a_32_bit_os_is_armv7_and_unsupported_by_ray(device) -> None:
    found = detect_platform(device("pi4-64bit").root, "armv7l")
    assert (found.kind, found.connector_suffix) == ("armv7", "ARMv7")
    assert not found.ray_supported


def test_an_arm64_board_that_is_no_jetson_or_pi_hosts_aarch64_without_gpu(tmp_path) -> None:
    found = detect_platform(tmp_path, "arm64")
    assert (found.kind, found.machine, found.connector_suffix, found.gpus) == (
        "aarch64", "aarch64", "Aarch64JTX2", 0)


def test_unreadable_meminfo_gives_zero_memory(tmp_path) -> None:
    assert detect_platform(tmp_path, "x86_64").memory_bytes == 0


def test_this_host_is_detected_without_arguments() -> None:
    assert detect_platform().connector_suffix in ("x86-64", "Aarch64JTX2", "ARMv7")


def test_a_jetson_whose_tree_names_only_the_carrier_board_is_found_by_compatible(
        copy_device) -> None:
    # Some L4T R32 trees call a TX2 "quill" (its carrier board): the SoC is in compatible.
    tx2 = copy_device("jetson-tx2")
    (tx2.root / "etc" / "nv_tegra_release").unlink()
    (tx2.root / "proc" / "device-tree" / "model").write_bytes(b"quill\0")
    found = detect_platform(tx2.root, tx2.machine)
    assert (found.kind, found.connector_suffix, found.model, found.gpus) == (
        "jetson", "Aarch64JTX2", "quill", 1)
