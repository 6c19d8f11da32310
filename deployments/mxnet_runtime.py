"""MXNet runtime for SageMaker image-classification artifacts.

Loads ``image-classification-symbol.json`` + the highest-epoch ``.params``
(``deployments.sagemaker_ic``), binds an inference executor for the artifact's
input shape, and returns the class probabilities.

Threads: MXNet sizes its OpenMP pool when its library loads, from
``OMP_NUM_THREADS``; ``load()`` sets that (``set_thread_count``) before the
first ``import mxnet``. If MXNet is already imported in the process, the
OpenMP pool is resized through ``MXSetNumOMPThreads`` instead, but MXNet's
engine worker threads keep the count they started with.

Where MXNet cannot load (on aarch64 its wheel needs the Arm Performance
Libraries), ``load()`` raises an ``ArtifactError`` giving the ``lis compile``
command that turns the artifact into one the DLR or TVM runtime serves.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from deployments.runtime import (
    DEFAULT_THREADS,
    ModelRuntime,
    select_device,
    set_thread_count,
)
from deployments.sagemaker_ic import ClassifierArtifact, read_classifier_artifact
from vocabulary.errors import ArtifactError, InvalidArgument, LisError

__all__ = ["MXNetClassifierRuntime"]

_INPUT_NAME = "data"
_NO_MXNET = ("MXNet cannot load on this machine ({reason}), so this SageMaker "
             "image-classification artifact cannot be served as it is: compile it with "
             "`lis compile {artifact} -o <out>` (where MXNet and TVM are installed; add "
             "`--target aarch64` for an ARM device) and point the service's `model` at <out>")


def _import_mxnet(threads: int, source: Path) -> ModuleType:
    already_loaded = "mxnet" in sys.modules
    if not already_loaded:
        set_thread_count(threads)
    try:
        with _scipy_hidden():
            import mxnet as mx  # noqa: PLC0415 - only after the thread count is fixed
    except (ImportError, OSError) as error:
        raise ArtifactError(str(source), _NO_MXNET.format(reason=_first_line(error),
                                                          artifact=source)) from error

    if already_loaded:
        mx.base._LIB.MXSetNumOMPThreads(ctypes.c_int(threads))
    return mx


@contextlib.contextmanager
def _scipy_hidden() -> Iterator[None]:
    """MXNet loads without SciPy, which stays importable afterwards.

    MXNet imports SciPy when it is installed (TVM's compiler requires it, so a
    compile-level install has it) only to accept SciPy's sparse matrices, which
    lis never passes: 49 MB of a classifier replica's memory. A process that has
    loaded SciPy already keeps it.
    """
    hidden = "scipy" not in sys.modules
    if hidden:
        sys.modules["scipy"] = None  # type: ignore[assignment]  # import fails: ImportError
    try:
        yield
    finally:
        if hidden:
            sys.modules.pop("scipy", None)


class MXNetClassifierRuntime(ModelRuntime):
    """A SageMaker image-classification model run by MXNet.

    ``predict(batch)`` returns ``[probabilities]`` of shape ``(N, classes)``.
    """

    platform = "mxnet"

    def __init__(self, artifact_dir: Path, *, threads: int = DEFAULT_THREADS,
                 device: str = "cpu", allow_cpu_fallback: bool = False) -> None:
        super().__init__(artifact_dir, threads=threads, device=device)
        self.allow_cpu_fallback = allow_cpu_fallback
        self.artifact: ClassifierArtifact | None = None
        self._executor: Any = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.artifact is None:
            self.artifact = read_classifier_artifact(self.artifact_dir)
        return self.artifact.input_shape

    @property
    def labels(self) -> tuple[str, ...] | None:
        return self.artifact.labels if self.artifact is not None else None

    def load(self) -> None:
        self.artifact = read_classifier_artifact(self.artifact_dir)
        mx = _import_mxnet(self.threads, self.artifact_dir)
        self._executor = self._bind(mx, self.artifact, self._context(mx))

    def _context(self, mx: ModuleType) -> Any:
        gpu_supported = self.device == "gpu" and mx.runtime.Features().is_enabled("CUDA")
        self.device = select_device(
            self.device, gpu_supported, allow_cpu_fallback=self.allow_cpu_fallback,
            unsupported="this MXNet build has no CUDA support (install an mxnet-cu* wheel, "
                        "or use device 'cpu')")
        return mx.gpu(0) if self.device == "gpu" else mx.cpu()

    def _bind(self, mx: ModuleType, artifact: ClassifierArtifact, context: Any) -> Any:
        try:
            symbol = mx.sym.load(str(artifact.symbol_file))
            saved = mx.nd.load(str(artifact.params_file))
        except mx.base.MXNetError as error:
            raise ArtifactError(str(artifact.directory), _first_line(error)) from error
        executor = symbol.simple_bind(context, grad_req="null",
                                      **{_INPUT_NAME: artifact.input_shape})
        _copy_params(artifact, executor.arg_dict, saved, "arg:", skip_missing=_is_input)
        _copy_params(artifact, executor.aux_dict, saved, "aux:", skip_missing=lambda _: False)
        return executor

    def predict(self, batch: np.ndarray) -> list[np.ndarray]:
        if self._executor is None:
            raise LisError("the MXNet runtime is not loaded (call load() first)")
        if tuple(batch.shape) != self.input_shape:
            raise InvalidArgument("input batch shape", tuple(batch.shape), str(self.input_shape))
        outputs = self._executor.forward(is_train=False, **{_INPUT_NAME: batch})
        return [outputs[0].asnumpy()]


def _is_input(name: str) -> bool:
    # SageMaker's symbol ends in SoftmaxOutput, whose label is an unused input.
    return name == _INPUT_NAME or name.endswith("_label")


def _copy_params(artifact: ClassifierArtifact, targets: dict[str, Any], saved: dict[str, Any],
                 prefix: str, skip_missing: Any) -> None:
    for name, array in targets.items():
        value = saved.get(prefix + name, saved.get(name))
        if value is None:
            if skip_missing(name):
                continue
            raise ArtifactError(str(artifact.params_file), f"has no weights for {name!r}")
        if value.shape != array.shape:
            raise ArtifactError(str(artifact.params_file),
                                f"weights {name!r} have shape {value.shape}, the symbol "
                                f"needs {array.shape} for input {artifact.input_shape}")
        value.copyto(array)


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
