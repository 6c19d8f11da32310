"""The board ``lis compile`` measures and verifies on, over TVM's RPC (``--rpc-tracker``).

TVM's own route to a device it cannot compile on: the board runs TVM's RPC
server (``TVM_USE_RUNTIME_LIB=1 python -m tvm.exec.rpc_server --tracker HOST:PORT
--key KEY``, from the TVM wheel lis installs on aarch64; runtime-only, so no LLVM
on the board), which registers with a tracker; this machine asks the tracker for a board of that
key, uploads a cross-compiled library and runs it there. ``lis compile`` uses
it twice: ``--tune`` measures each trial on the board (``modelkit._tune``), and
the finished graph-executor build runs the verification input there, so an
artifact for another machine is still compared with its source framework.

The parent process only parses and checks the arguments (``RemoteDevice.parse``);
everything that talks RPC runs in the TVM child, which imports TVM lazily here.
"""

from __future__ import annotations

import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vocabulary.errors import CompileError

__all__ = ["BOARDS", "DEFAULT_TRACKER_PORT", "RemoteDevice", "check_device_target", "linker"]

DEFAULT_TRACKER_PORT = 9190
# How long a session asks the tracker for a free board before it gives up.
_SESSION_TIMEOUT_S = 600
# TVM's tracker client retries a refused connection for a minute; one try says enough.
_CONNECT_TIMEOUT_S = 5
_AARCH64 = "llvm -mtriple=aarch64-linux-gnu -mattr=+neon"
# ``--target`` by board, for the boards the connectors' users run (64-bit OS): each names its
# CPU core for LLVM (its scheduling model and extensions) and its chip as TVM's ``-model``, so
# tuning records of one board are never applied to another. Neo's device names where it has
# one (rasp4b, jetson_nano, jetson_tx2, jetson_xavier).
BOARDS = {
    "rasp4b": f"{_AARCH64} -mcpu=cortex-a72 -model=bcm2711",        # Raspberry Pi 4
    "rasp5": f"{_AARCH64} -mcpu=cortex-a76 -model=bcm2712",         # Raspberry Pi 5
    "jetson_nano": f"{_AARCH64} -mcpu=cortex-a57 -model=tegra210",  # Jetson Nano, TX1
    "jetson_tx2": f"{_AARCH64} -mcpu=cortex-a57 -model=tegra186",   # its Cortex-A57 cluster
    "jetson_xavier": f"{_AARCH64} -mcpu=carmel -model=tegra194",
    "jetson_orin": f"{_AARCH64} -mcpu=cortex-a78ae -model=tegra234",
}
_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class RemoteDevice:
    """A board registered with a TVM RPC tracker under ``key``."""

    host: str
    port: int
    key: str

    @classmethod
    def parse(cls, tracker: str | None, key: str | None) -> RemoteDevice | None:
        """From ``--rpc-tracker HOST[:PORT]`` and ``--rpc-key KEY``: both or neither."""
        if tracker is None and key is None:
            return None
        if not tracker or not key:
            raise CompileError("--rpc-tracker and --rpc-key name the board together: give both")
        if not _KEY.match(key):
            raise CompileError(f"--rpc-key {key!r}: letters, digits, '_', '.' and '-' only")
        host, _, port = tracker.rpartition(":") if ":" in tracker else (tracker, "", "")
        host = host.strip("[]")
        try:
            number = int(port) if port else DEFAULT_TRACKER_PORT
        except ValueError:
            number = -1
        if not host or not 0 < number < 65536:
            raise CompileError(f"--rpc-tracker {tracker!r}: expected HOST:PORT, e.g. "
                               f"192.168.1.20:{DEFAULT_TRACKER_PORT}")
        return cls(host, number, key)

    def __str__(self) -> str:
        return f"{self.key!r} at tracker {self.host}:{self.port}"

    def arguments(self) -> list[str]:
        return ["--rpc-tracker", f"{self.host}:{self.port}", "--rpc-key", self.key]

    def servers(self) -> int:
        """How many boards of this key the tracker knows; a clear error if none or no tracker."""
        from tvm import rpc  # noqa: PLC0415

        try:
            socket.create_connection((self.host, self.port), _CONNECT_TIMEOUT_S).close()
            summary = rpc.connect_tracker(self.host, self.port).summary()
        except (OSError, RuntimeError) as error:
            raise CompileError(
                f"RPC tracker {self.host}:{self.port}: cannot connect ({_reason(error)}); start "
                f"one with: python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port "
                f"{self.port}") from error
        keys = sorted({item["key"].split(":", 1)[-1] for item in summary["server_info"]})
        count = sum(1 for item in summary["server_info"] if item["key"] == f"server:{self.key}")
        if count == 0:
            raise CompileError(
                f"no RPC server with key {self.key!r} at tracker {self.host}:{self.port} "
                f"(keys there: {', '.join(keys) or 'none'}); on the board run: "
                f"TVM_USE_RUNTIME_LIB=1 python -m tvm.exec.rpc_server --tracker "
                f"{self.host}:{self.port} --key {self.key}")
        return count

    def check_runs(self, target: str, cross_compiler: str | None) -> None:
        """Build a one-line kernel for ``target``, run it on the board: a board of another
        architecture, or without TVM's random fill, fails here in one line, not in every
        tuning trial."""
        import tvm  # noqa: PLC0415
        from tvm import te  # noqa: PLC0415

        link = linker(cross_compiler)
        size = 8
        data = te.placeholder((size,), name="data")
        plus_one = te.compute((size,), lambda i: data[i] + 1.0, name="plus_one")
        kernel = tvm.build(te.create_schedule(plus_one.op), [data, plus_one], target=target,
                           name="lis_probe")
        with tempfile.TemporaryDirectory() as folder:
            library = Path(folder) / "lis_probe.so"
            kernel.export_library(str(library), fcompile=link)
            session = self.session()
            try:
                session.upload(str(library))
                loaded = session.load_module(library.name)
                session.get_function("tvm.contrib.random.random_fill")
            except (tvm.error.TVMError, AttributeError) as error:
                raise CompileError(
                    f"the RPC board {self.key!r} cannot run code built for {target!r} "
                    f"({_reason(error)}): is its CPU what --target names, and its TVM "
                    "runtime built with RPC and random fill (the TVM wheel lis installs "
                    "is)? Its server's log says more") from error
            cpu = session.cpu()
            given = tvm.nd.array(np.arange(size, dtype="float32"), cpu)
            result = tvm.nd.empty((size,), "float32", cpu)
            loaded["lis_probe"](given, result)
            if not np.array_equal(result.numpy(), np.arange(size, dtype="float32") + 1):
                raise CompileError(f"the RPC board {self.key!r} ran a kernel built for "
                                   f"{target!r} and answered wrong values")

    def session(self) -> Any:
        """An RPC session on a free board of this key (waits for one)."""
        from tvm import rpc  # noqa: PLC0415

        tracker = rpc.connect_tracker(self.host, self.port)
        return tracker.request(self.key, priority=1, session_timeout=_SESSION_TIMEOUT_S)


def linker(cross_compiler: str | None) -> Any:
    """What links a library for the target on this machine (TVM's ``fcompile``): its own
    compiler, or the target's cross compiler, which must be installed."""
    from tvm.contrib import cc  # noqa: PLC0415

    if cross_compiler is None:
        return cc.create_shared
    if shutil.which(cross_compiler) is None:
        raise CompileError(f"cross compiler {cross_compiler} not found "
                           "(Debian: apt-get install g++-aarch64-linux-gnu)")
    return cc.cross_compiler(cross_compiler)


def check_device_target(device: RemoteDevice | None, target: str) -> None:
    """Records tuned on a board are keyed by the target string: it must name the board."""
    if device is None or target in BOARDS:
        return
    parts = target.split()
    if not parts or parts[0] != "llvm" or not any(
            part.startswith(("-mcpu=", "-model=")) for part in parts):
        raise CompileError(
            f"--target {target!r}: with --rpc-tracker give the board ({', '.join(BOARDS)}) or "
            "an LLVM target string that names its CPU (-mcpu=) or model (-model=), so its "
            "tuning records and artifact are the board's, e.g. 'llvm "
            "-mtriple=aarch64-linux-gnu -mattr=+neon -mcpu=cortex-a72'")


def run_graph(device: RemoteDevice, build: Path, input_name: str,
              batch: np.ndarray) -> list[np.ndarray]:
    """The outputs of the graph-executor build in ``build`` for ``batch``, run on the board."""
    import tvm  # noqa: PLC0415
    from tvm.contrib import graph_executor  # noqa: PLC0415

    session = device.session()
    session.upload(str(build / "compiled.so"))
    library = session.load_module("compiled.so")
    cpu = session.cpu()
    module = graph_executor.create((build / "compiled_model.json").read_text(), library, cpu)
    module.load_params((build / "compiled.params").read_bytes())
    module.set_input(input_name, tvm.nd.array(batch, cpu))
    module.run()
    return [module.get_output(i).numpy() for i in range(module.get_num_outputs())]


def _reason(error: BaseException) -> str:
    """The line of a TVM or socket error that says what failed (TVM's C++ frames left out;
    an error raised on the board itself may arrive without its text)."""
    lines = [line.strip() for line in str(error).strip().splitlines()]
    said = [line for line in lines if line and not line[:1].isdigit()
            and not line.startswith(("Traceback", "File ", "Stack trace"))]
    text = said[-1].removesuffix("Error caught from RPC call:").strip() if said else ""
    # What is left may be only the error's class ("RPCError:"): that says nothing.
    return text if text.rstrip(":").find(" ") > 0 else "the board gave no reason"
