"""`lis compile --rpc-tracker/--rpc-key`: tuning trials measured, and the build verified, on a
board reached over TVM's RPC.

The board is real TVM: a tracker (`python -m tvm.exec.rpc_tracker`) and an RPC server
registered with it (`python -m tvm.exec.rpc_server`), as on a Raspberry Pi or Jetson, here
on this machine's CPU. The network is the suite's tiny SageMaker classifier, tuned with a
budget of seconds. The aarch64 route (a cross-compiled build run on an emulated arm64 board)
is in docs/models.md, with what it measured.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelkit._device import DEFAULT_TRACKER_PORT, RemoteDevice
from modelkit._tune import CACHE_ENV
from modelkit.compile import RemoteDevice as ExportedRemoteDevice
from modelkit.compile import Tuning, compile_model
from serve_app import cli
from tests.modelkit._llvm import this_cpu_target
from tests.modelkit._onnx_models import tiny_nms_detector
from tests.waiting import wait_until
from vocabulary.errors import CompileError
from vocabulary.names import COMPILE_INFO_FILE, VM_EXECUTOR

pytestmark = pytest.mark.slow

_KEY = "lis-test-board"
_BUDGET_MINUTES = 0.1
_REGISTERED_WITHIN_S = 60


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _tvm(*arguments: str, log: Path, runtime_only: bool = False) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if runtime_only:  # as on a board: TVM's runtime library, no compiler, no LLVM
        environment["TVM_USE_RUNTIME_LIB"] = "1"
    with open(log, "ab") as out:
        # Its own session: TVM runs the tracker and the server in worker processes of their
        # own, which outlive a terminated parent; the whole group is stopped at the end.
        return subprocess.Popen([sys.executable, "-m", *arguments], stdout=out,
                                stderr=subprocess.STDOUT, env=environment,
                                start_new_session=True)


def _registered(port: int) -> str:
    """The tracker's own summary (TVM is never imported into the suite's process: DLR is)."""
    return subprocess.run([sys.executable, "-m", "tvm.exec.query_rpc_tracker", "--host",
                           "127.0.0.1", "--port", str(port)], capture_output=True, text=True,
                          timeout=60, check=False).stdout


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A TVM tracker and one RPC server registered with it under ``_KEY``, runtime-only as a
    board runs it."""
    folder = tmp_path_factory.mktemp("board")
    tracker_port, server_port = _free_port(), _free_port()
    tracker = _tvm("tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(tracker_port),
                   "--port-end", str(tracker_port + 1), log=folder / "tracker.log")
    server = _tvm("tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(server_port),
                  "--port-end", str(server_port + 1), "--tracker", f"127.0.0.1:{tracker_port}",
                  "--key", _KEY, log=folder / "server.log", runtime_only=True)
    def registered() -> bool:
        assert tracker.poll() is None and server.poll() is None, (
            (folder / "tracker.log").read_text() + (folder / "server.log").read_text())
        return f"server:{_KEY}" in _registered(tracker_port)

    try:
        # Each ask starts a TVM process (a second or so): asked every second.
        wait_until(registered, timeout_s=_REGISTERED_WITHIN_S, interval_s=1.0,
                   message="the RPC server registered with the tracker")
        yield {"tracker": f"127.0.0.1:{tracker_port}", "port": tracker_port,
               "log": folder / "server.log"}
    finally:
        for process in (server, tracker):
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)


def _sessions(log: Path) -> int:
    """How many sessions the board served (its server logs one line per connection)."""
    return log.read_text().count("connected from")


@pytest.fixture(scope="module")
def tuned_on_board(board: dict, tiny_classifier_artifact: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("rpc-tuned")
    device = RemoteDevice.parse(board["tracker"], _KEY)
    before = _sessions(board["log"])
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(CACHE_ENV, str(folder / "cache"))
        result = compile_model(tiny_classifier_artifact, None, folder / "neo",
                               target=this_cpu_target(), tuning=Tuning(_BUDGET_MINUTES),
                               device=device, progress=lines.append)
    return {"result": result, "lines": lines, "cache": folder / "cache",
            "sessions": _sessions(board["log"]) - before,
            "info": json.loads((folder / "neo" / COMPILE_INFO_FILE).read_text())}


def test_trials_are_measured_on_the_board(board: dict, tuned_on_board: dict) -> None:
    assert "libtvm_runtime.so" in board["log"].read_text()  # the board's runtime-only TVM
    summary = tuned_on_board["info"]["tuning"]
    assert summary["measured_on"] == f"rpc:{_KEY}"
    assert summary["trials"] >= summary["tasks_tuned"] >= 1
    # Each trial, the probe and the verification run are sessions on the board.
    assert tuned_on_board["sessions"] >= summary["trials"] + 2
    task_lines = [line for line in tuned_on_board["lines"] if "tuning task " in line]
    assert task_lines and all(line.endswith(f"on {_KEY!r}") for line in task_lines)
    records = [line for path in tuned_on_board["cache"].glob("*.log")
               for line in path.read_text().splitlines()]
    assert len(records) == summary["tasks_with_records"] == summary["tasks"]
    assert any(f"runs code built for {this_cpu_target()!r}" in line
               for line in tuned_on_board["lines"])


def test_the_build_is_verified_on_the_board_and_here(tuned_on_board: dict) -> None:
    info, result = tuned_on_board["info"], tuned_on_board["result"]
    assert info["verified_on_device"]["rpc_key"] == _KEY
    assert info["verified_on_device"]["max_abs_diff"] < 1e-3
    assert result.verified_by == ("DLR", f"TVM on {_KEY!r}")
    assert any(f"verified: TVM on {_KEY!r} vs MXNet" in line for line in tuned_on_board["lines"])


def test_the_cli_tunes_on_the_board_and_says_what_verified(
        board: dict, tuned_on_board: dict, tiny_classifier_artifact: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tuned_on_board["cache"]))  # all tasks known: no trials
    assert cli.main(["compile", str(tiny_classifier_artifact), "-o", str(tmp_path / "neo"),
                     "--target", this_cpu_target(), "--tune", "--tune-minutes", "0.1",
                     "--rpc-tracker", board["tracker"], "--rpc-key", _KEY]) == 0
    out = capsys.readouterr().out
    assert f"DLR and TVM on {_KEY!r} vs MXNet max abs difference" in out.splitlines()[-1]
    info = json.loads((tmp_path / "neo" / COMPILE_INFO_FILE).read_text())
    assert info["tuning"]["trials"] == 0 and info["tuning"]["tasks_known"] >= 1


def test_a_relay_vm_build_is_verified_here_only(board: dict, tmp_path: Path) -> None:
    """TVM's RPC runs graph-executor builds: an ONNX detector ending in NonMaxSuppression
    (the Relay VM) is said not to run on the board, and is verified here as always."""
    side = 64
    model = tiny_nms_detector(tmp_path / "tiny.onnx", side=side)
    lines: list[str] = []
    result = compile_model(model, None, tmp_path / "vm", preprocessing="detector",
                           target=this_cpu_target(),
                           device=RemoteDevice.parse(board["tracker"], _KEY),
                           progress=lines.append)
    assert result.executor == VM_EXECUTOR
    assert result.verified_by == ("the TVM runtime",)
    assert any(f"not run on {_KEY!r}: a Relay VM artifact is verified on this machine only"
               in line for line in lines)
    assert "verified_on_device" not in json.loads((tmp_path / "vm" / COMPILE_INFO_FILE)
                                                  .read_text())


def test_a_key_no_board_has_is_one_line(board: dict, tiny_classifier_artifact: Path,
                                        tmp_path: Path) -> None:
    with pytest.raises(CompileError, match=rf"no RPC server with key 'nobody' at tracker "
                                           rf"{board['tracker']} \(keys there: {_KEY}\); on "
                                           r"the board run: TVM_USE_RUNTIME_LIB=1 python -m "
                                           r"tvm.exec.rpc_server"):
        compile_model(tiny_classifier_artifact, None, tmp_path / "neo", target=this_cpu_target(),
                      device=RemoteDevice.parse(board["tracker"], "nobody"), progress=None)


def test_no_tracker_is_one_line(tiny_classifier_artifact: Path, tmp_path: Path) -> None:
    port = _free_port()
    with pytest.raises(CompileError, match=rf"RPC tracker 127.0.0.1:{port}: cannot connect"):
        compile_model(tiny_classifier_artifact, None, tmp_path / "neo", target=this_cpu_target(),
                      device=RemoteDevice("127.0.0.1", port, _KEY), progress=None)


def test_a_board_that_cannot_run_the_target_fails_before_tuning(
        board: dict, tiny_classifier_artifact: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An aarch64 build sent to this x86_64 board: the probe says so, no trial is spent."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    target = "llvm -mtriple=aarch64-linux-gnu -mattr=+neon -mcpu=cortex-a72"
    lines: list[str] = []
    with pytest.raises(CompileError, match=re.escape(f"the RPC board {_KEY!r} cannot run code "
                                                     f"built for {target!r}")):
        compile_model(tiny_classifier_artifact, None, tmp_path / "neo", target=target,
                      tuning=Tuning(1.0), device=RemoteDevice.parse(board["tracker"], _KEY),
                      progress=lines.append)
    assert not any("tuning task" in line for line in lines)
    assert not (tmp_path / "cache").exists()


def test_a_target_that_does_not_name_the_board_is_refused(tiny_classifier_artifact: Path,
                                                          tmp_path: Path) -> None:
    for target in ("aarch64", "x86_64", "llvm -mtriple=aarch64-linux-gnu -mattr=+neon"):
        with pytest.raises(CompileError, match=r"with --rpc-tracker give the board \(rasp4b, .*\) "
                                               r"or an LLVM target string that names its CPU "
                                               r"\(-mcpu=\)"):
            compile_model(tiny_classifier_artifact, None, tmp_path / "neo", target=target,
                          device=RemoteDevice("127.0.0.1", 9190, _KEY), progress=None)


@pytest.mark.parametrize(("tracker", "key", "message"), [
    ("127.0.0.1:9190", None, "--rpc-tracker and --rpc-key name the board together"),
    (None, "pi4", "--rpc-tracker and --rpc-key name the board together"),
    ("127.0.0.1:port", "pi4", "--rpc-tracker '127.0.0.1:port': expected HOST:PORT"),
    (":9190", "pi4", "--rpc-tracker ':9190': expected HOST:PORT"),
    ("127.0.0.1:70000", "pi4", "--rpc-tracker '127.0.0.1:70000': expected HOST:PORT"),
    ("127.0.0.1:9190", "pi 4", "--rpc-key 'pi 4': letters, digits"),
])
def test_bad_board_arguments_are_one_line(tracker: str | None, key: str | None,
                                          message: str) -> None:
    with pytest.raises(CompileError, match=rf"^{message}"):
        RemoteDevice.parse(tracker, key)


def test_board_arguments_parse() -> None:
    assert RemoteDevice.parse(None, None) is None
    assert RemoteDevice.parse("10.0.0.2:9191", "pi4") == RemoteDevice("10.0.0.2", 9191, "pi4")
    assert RemoteDevice.parse("tracker.lan", "orin") == RemoteDevice(
        "tracker.lan", DEFAULT_TRACKER_PORT, "orin")
    assert RemoteDevice.parse("[::1]:9190", "pi4") == RemoteDevice("::1", 9190, "pi4")
    assert ExportedRemoteDevice is RemoteDevice


def test_cli_refuses_a_key_without_a_tracker(tiny_classifier_artifact: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["compile", str(tiny_classifier_artifact), "-o", str(tmp_path / "neo"),
                     "--rpc-key", "pi4"]) != 0
    assert capsys.readouterr().err.strip() == (
        "lis compile: --rpc-tracker and --rpc-key name the board together: give both")
