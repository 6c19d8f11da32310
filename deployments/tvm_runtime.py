"""TVM runtime for artifacts built by ``lis compile``, where DLR has no native library.

``lis compile`` builds a Neo/DLR artifact with TVM (``compiled.so``,
``compiled.params``, ``compiled_model.json``, plus ``lis-compile.json``) and
bundles no ``libdlr.so``. Where the installed DLR has no native library
either (PyPI's dlr==1.6.0 for aarch64 is pure Python), TVM's own graph
executor runs the same three files (``deployments.inference`` decides).

A model whose output shapes depend on its data (an ONNX detector ending in
``NonMaxSuppression``) is built by ``lis compile`` for TVM's Relay VM
(``compiled.so`` + ``compiled.ro``, ``deployments.neo.read_vm_artifact``).
DLR 1.6 cannot run TVM 0.19's VM bytecode (its loader checks for version
0.8.dev0), so ``TVMVirtualMachineRuntime`` serves those on every machine.

TVM loads runtime-only: with ``TVM_USE_RUNTIME_LIB=1`` while ``tvm`` is first
imported, its Python package loads ``libtvm_runtime.so`` instead of the
compiler's ``libtvm.so``, which needs libLLVM (absent on a device) and is not
needed to run a compiled model. The variable is put back after the import, so
a ``lis compile`` started from this process still gets the compiler.

TVM refuses to load into a process that imported ``dlr``, as DLR refuses one
that imported ``tvm``: both carry a TVM runtime, and a process that loaded
both crashed (``deployments.runtime.refuse_mixed_tvm_runtimes``).

Threads: the TVM thread pool sizes itself from ``TVM_NUM_THREADS`` when the
first model runs; ``load()`` sets it (``set_thread_count``), as for DLR.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from deployments.compiled_runtime import (
    DEFAULT_INPUT_NAME,
    CompiledModelRuntime,
    NeoModelRuntime,
    first_line,
)
from deployments.neo import NeoArtifact, VMArtifact, read_vm_artifact
from deployments.runtime import (
    DEFAULT_THREADS,
    refuse_mixed_tvm_runtimes,
    select_device,
    set_thread_count,
)
from vocabulary.errors import ArtifactError, InvalidArgument, LisError

__all__ = ["INSTALL_TVM", "TVMGraphRuntime", "TVMVirtualMachineRuntime"]

_RUNTIME_ONLY_ENV = "TVM_USE_RUNTIME_LIB"
INSTALL_TVM = ("install the TVM runtime: pip install xtc-tvm-python-bindings==0.19.0.12 "
               "(the pin in requirements-compile.txt)")
# `lis compile` builds LLVM code for a CPU (x86_64 or aarch64), never for CUDA.
_CPU_ONLY = "an artifact built by `lis compile` runs on the CPU only"


@contextmanager
def _runtime_only() -> Iterator[None]:
    saved = os.environ.get(_RUNTIME_ONLY_ENV)
    os.environ[_RUNTIME_ONLY_ENV] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(_RUNTIME_ONLY_ENV, None)
        else:
            os.environ[_RUNTIME_ONLY_ENV] = saved


def _import_tvm_runtime() -> tuple[ModuleType, ModuleType]:
    """``tvm`` and its graph executor; runtime-only unless ``tvm`` was already imported."""
    try:
        with _runtime_only():
            import tvm  # noqa: PLC0415 - only here, after the guard and the thread count
            from tvm.contrib import graph_executor  # noqa: PLC0415
    except (ImportError, OSError, RuntimeError) as error:
        raise LisError(f"the TVM runtime cannot load ({first_line(error)}): "
                       f"{INSTALL_TVM}") from error
    return tvm, graph_executor


def _prepare_cpu(device: str, threads: int, allow_cpu_fallback: bool) -> str:
    """The device a TVM runtime runs on (the CPU), in a process without DLR, threads set."""
    refuse_mixed_tvm_runtimes("tvm")
    device = select_device(device, False, allow_cpu_fallback=allow_cpu_fallback,
                           unsupported=_CPU_ONLY)
    set_thread_count(threads)
    return device


class TVMGraphRuntime(NeoModelRuntime):
    """A ``lis compile`` artifact run by TVM's graph executor, on the CPU.

    ``predict`` returns the same raw outputs as ``DLRRuntime`` on that artifact.
    """

    platform = "tvm"

    def __init__(self, artifact_dir: Path, *, threads: int = DEFAULT_THREADS,
                 device: str = "cpu", allow_cpu_fallback: bool = False) -> None:
        super().__init__(artifact_dir, threads=threads, device=device,
                         allow_cpu_fallback=allow_cpu_fallback)
        self._executor: Any = None

    def load(self) -> None:
        artifact = self._read_for_this_machine()
        self.device = _prepare_cpu(self.device, self.threads, self.allow_cpu_fallback)
        tvm, graph_executor = _import_tvm_runtime()
        self._executor, self._input_name = _create(tvm, graph_executor, artifact)
        self._input_shape = artifact.input_shape(self._input_name)

    def predict(self, batch: np.ndarray) -> list[np.ndarray]:
        if self._executor is None:
            raise LisError("the TVM runtime is not loaded (call load() first)")
        if tuple(batch.shape) != self.input_shape:
            raise InvalidArgument("input batch shape", tuple(batch.shape), str(self.input_shape))
        self._executor.set_input(self._input_name, np.ascontiguousarray(batch, dtype=np.float32))
        self._executor.run()
        return [self._executor.get_output(i).numpy()
                for i in range(self._executor.get_num_outputs())]


def _create(tvm: ModuleType, graph_executor: ModuleType, artifact: NeoArtifact) -> tuple[Any, str]:
    """The graph executor holding the weights, and the name of the model's input."""
    try:
        graph = artifact.graph.read_text()
        executor = graph_executor.create(graph, tvm.runtime.load_module(str(artifact.library)),
                                         tvm.cpu(0))
        params = tvm.runtime.load_param_dict(artifact.params.read_bytes())
        executor.set_input(**params)
    except (tvm.TVMError, OSError, ValueError) as error:
        raise ArtifactError(str(artifact.directory),
                            f"TVM could not load the model: {first_line(error)}") from error
    return executor, _input_name(json.loads(graph), params)


def _input_name(graph: dict[str, Any], params: dict[str, Any]) -> str:
    # The graph's arguments are its inputs and its weights; DLR names the first
    # argument that is not a weight, and so do we.
    names = [graph["nodes"][i]["name"] for i in graph["arg_nodes"]]
    return next((name for name in names if name not in params), DEFAULT_INPUT_NAME)


class TVMVirtualMachineRuntime(CompiledModelRuntime[VMArtifact]):
    """A ``lis compile`` Relay VM artifact (``compiled.so`` + ``compiled.ro``), on the CPU.

    ``predict`` returns the model's outputs as they come: a detector whose
    number of rows depends on the data answers as many as it found.
    """

    platform = "tvm"
    _machine: Any = None  # TVM's VirtualMachine, once loaded

    def _read(self) -> VMArtifact:
        artifact = read_vm_artifact(self.artifact_dir)
        self._input_name = artifact.input_name
        return artifact

    def load(self) -> None:
        artifact = self._read_for_this_machine()
        self.device = _prepare_cpu(self.device, self.threads, self.allow_cpu_fallback)
        self._machine = _create_vm(_import_tvm_runtime()[0], artifact)

    def predict(self, batch: np.ndarray) -> list[np.ndarray]:
        if self._machine is None:
            raise LisError("the TVM runtime is not loaded (call load() first)")
        if tuple(batch.shape) != self.input_shape:
            raise InvalidArgument("input batch shape", tuple(batch.shape), str(self.input_shape))
        import tvm  # noqa: PLC0415 - loaded runtime-only by load()

        result = self._machine.invoke("main", tvm.nd.array(
            np.ascontiguousarray(batch, dtype=np.float32)))
        outputs = result if isinstance(result, tvm.runtime.container.ADT) else [result]
        return [output.numpy() for output in outputs]


def _create_vm(tvm: ModuleType, artifact: VMArtifact) -> Any:
    """TVM's Relay VM holding the compiled model, on the CPU."""
    try:
        with _runtime_only():
            from tvm.runtime import vm  # noqa: PLC0415
        executable = vm.Executable.load_exec(artifact.code.read_bytes(),
                                             tvm.runtime.load_module(str(artifact.library)))
        return vm.VirtualMachine(executable, tvm.cpu(0))
    except (tvm.TVMError, OSError, ValueError) as error:
        raise ArtifactError(str(artifact.directory), "TVM could not load the Relay VM model: "
                            f"{first_line(error)}") from error
