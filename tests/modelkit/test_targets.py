"""`lis compile --target`: boards by name, `-mcpu=native`, and a CPU LLVM does not know.

TVM builds for ``-mcpu=generic`` when LLVM does not know the CPU a target names,
and only logs it; lis names the CPU, or refuses the target in one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployments.neo import library_machine
from modelkit._device import BOARDS, RemoteDevice, check_device_target
from modelkit.compile import compile_model
from tests.modelkit._llvm import llvm_value
from vocabulary.errors import CompileError
from vocabulary.names import COMPILE_INFO_FILE, LIBRARY_FILE

pytestmark = pytest.mark.slow


def test_each_board_names_a_cpu_llvm_knows() -> None:
    known = {name: llvm_value(f"{target.split('-mcpu=')[1].split()[0]!r} in "
                         f"codegen.llvm_get_cpu_archlist(tvm.target.Target({target!r}))")
             for name, target in BOARDS.items()}
    assert known == {name: "True" for name in BOARDS}
    assert all("-mtriple=aarch64-linux-gnu" in target and "-model=" in target
               for target in BOARDS.values())


def test_a_board_by_name_cross_compiles_for_its_cpu(tiny_classifier_artifact: Path,
                                                    tmp_path: Path) -> None:
    lines: list[str] = []
    result = compile_model(tiny_classifier_artifact, None, tmp_path / "neo", target="rasp4b",
                           progress=lines.append)
    assert result.target == BOARDS["rasp4b"]
    assert "-mcpu=cortex-a72" in result.target
    assert json.loads((tmp_path / "neo" / COMPILE_INFO_FILE).read_text())["target"] == (
        BOARDS["rasp4b"])
    assert library_machine(tmp_path / "neo" / LIBRARY_FILE) == "aarch64"
    assert result.max_abs_diff is None
    assert any("not verified: the artifact is for aarch64" in line for line in lines)


def test_native_is_this_cpu_by_name(tiny_classifier_artifact: Path, tmp_path: Path) -> None:
    result = compile_model(tiny_classifier_artifact, None, tmp_path / "neo",
                           target="llvm -mcpu=native", progress=None)
    cpu = llvm_value("codegen.llvm_get_system_cpu()")
    assert result.target == f"llvm -mcpu={cpu}" and cpu != "native"
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-3


@pytest.mark.parametrize(("target", "message"), [
    ("llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a27",
     r"LLVM \d+ knows no CPU 'cortex-a27' for aarch64-linux-gnu \(close: .*cortex-a7"),
    ("llvm -mcpu=skylake-avx52", r"LLVM \d+ knows no CPU 'skylake-avx52' for this machine "
                                 r"\(close: skylake-avx512"),
    ("llvm -mtriple=aarch64-linux-gnu -mcpu=native",
     r"LLVM \d+ knows no CPU 'native' for aarch64-linux-gnu"),
])
def test_a_cpu_llvm_does_not_know_is_one_line(tiny_classifier_artifact: Path, tmp_path: Path,
                                              target: str, message: str) -> None:
    with pytest.raises(CompileError, match=rf"compile failed: --target '{target}': {message}"):
        compile_model(tiny_classifier_artifact, None, tmp_path / "neo", target=target,
                      progress=None)
    assert not (tmp_path / "neo").exists()


def test_a_board_by_name_names_its_cpu_for_the_rpc_board() -> None:
    device = RemoteDevice("127.0.0.1", 9190, "pi4")
    for name in BOARDS:
        check_device_target(device, name)
    with pytest.raises(CompileError, match="with --rpc-tracker give the board"):
        check_device_target(device, "aarch64")
