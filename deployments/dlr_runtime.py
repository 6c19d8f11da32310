"""DLR runtime for Neo-compiled models (the object-detection connector's format).

``load()`` validates the artifact (``deployments.neo``), then gives DLR a private
folder holding only the three model files: DLR 1.6 finds files by extension
and refuses a folder with any extra ``.json`` (our ``preprocessing.json``).

Which ``libdlr.so``: Neo artifacts may ship one, and DLR prefers it by default
(``DLRModel(..., use_default_dlr=False)``). lis uses the pip-installed libdlr
instead (``use_default_dlr=True``), the one whose telemetry ``deployments._dlr``
switched off and whose version the project pins; pass
``prefer_bundled_libdlr=True`` to use the artifact's own.

Threads: the TVM runtime inside libdlr sizes its pool from ``TVM_NUM_THREADS``
when its first model runs; ``load()`` sets it (``set_thread_count``). A
process that already ran a DLR model keeps the pool it has.
"""

from __future__ import annotations

import mmap
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from deployments._dlr import import_dlr
from deployments.neo import NeoArtifact, host_machine, read_neo_artifact
from deployments.runtime import (
    DEFAULT_THREADS,
    ModelRuntime,
    select_device,
    set_thread_count,
)
from vocabulary.errors import ArtifactError, InvalidArgument, LisError

__all__ = ["DLRRuntime"]

_DEVICES = ("cpu", "gpu")
_CUDA_MARKERS = (b"libcudart", b"cudaMalloc", b"cuModuleLoad")
_NO_CUDA = ("the DLR runtime {libdlr} has no CUDA support (the pip dlr==1.6.0 wheel is "
            "CPU-only; use device 'cpu' or a GPU build of DLR)")


class DLRRuntime(ModelRuntime):
    """A Neo/DLR-compiled model; ``predict`` returns the model's raw outputs.

    For GluonCV detectors those are ``[class_ids (1,N,1), scores (1,N,1),
    boxes (1,N,4) in input pixels]``; rows with class id -1 are padding.
    """

    def __init__(self, artifact_dir: Path, *, threads: int = DEFAULT_THREADS,
                 device: str = "cpu", prefer_bundled_libdlr: bool = False,
                 allow_cpu_fallback: bool = False) -> None:
        super().__init__(artifact_dir, threads=threads, device=device)
        self.allow_cpu_fallback = allow_cpu_fallback
        self.prefer_bundled_libdlr = prefer_bundled_libdlr
        self.artifact: NeoArtifact | None = None
        self._model: Any = None
        self._input_name = "data"
        self._input_shape: tuple[int, ...] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self._input_shape is None:  # read once: the graph JSON can be megabytes
            self._input_shape = self._artifact().input_shape(self._input_name)
        return self._input_shape

    @property
    def labels(self) -> tuple[str, ...] | None:
        return self._artifact().labels

    def _artifact(self) -> NeoArtifact:
        if self.artifact is None:
            self.artifact = read_neo_artifact(self.artifact_dir)
        return self.artifact

    def load(self) -> None:
        artifact = self.artifact = read_neo_artifact(self.artifact_dir)
        _check_machine(artifact)
        if self.device not in _DEVICES:
            raise LisError(f"unknown device {self.device!r}: expected 'cpu' or 'gpu'")
        set_thread_count(self.threads)
        dlr = import_dlr()
        use_bundled = self.prefer_bundled_libdlr and artifact.libdlr is not None
        if self.device == "gpu":
            libdlr = _libdlr_path(dlr, artifact, use_bundled)
            self.device = select_device(self.device, _has_cuda(libdlr),
                                        allow_cpu_fallback=self.allow_cpu_fallback,
                                        unsupported=_NO_CUDA.format(libdlr=libdlr))
        self._model = self._create(dlr, artifact, use_bundled)
        names = self._model.get_input_names()
        self._input_name = names[0] if names else self._input_name
        self._input_shape = artifact.input_shape(self._input_name)

    def _create(self, dlr: Any, artifact: NeoArtifact, use_bundled: bool) -> Any:
        staging = Path(tempfile.mkdtemp(prefix="lis-dlr-"))
        try:
            for path in (artifact.library, artifact.params, artifact.graph):
                os.symlink(path, staging / path.name)
            if use_bundled:
                os.symlink(artifact.libdlr, staging / artifact.libdlr.name)  # type: ignore[union-attr]
            return dlr.DLRModel(str(staging), dev_type=self.device, dev_id=0,
                                use_default_dlr=not use_bundled)
        except Exception as error:  # DLR raises bare Exception/DLRError subclasses
            raise ArtifactError(str(artifact.directory),
                                f"DLR could not load the model: {_first_line(error)}") from error
        finally:
            # The library is mapped and the weights are copied in: the folder can go.
            shutil.rmtree(staging, ignore_errors=True)

    def predict(self, batch: np.ndarray) -> list[np.ndarray]:
        if self._model is None:
            raise LisError("the DLR runtime is not loaded (call load() first)")
        if tuple(batch.shape) != self.input_shape:
            raise InvalidArgument("input batch shape", tuple(batch.shape), str(self.input_shape))
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return list(self._model.run({self._input_name: batch}))


def _check_machine(artifact: NeoArtifact) -> None:
    built_for, host = artifact.machine, host_machine()
    if built_for != host:
        raise ArtifactError(str(artifact.library),
                            f"compiled for {built_for}, but this machine is {host}")


def _libdlr_path(dlr: Any, artifact: NeoArtifact, use_bundled: bool) -> Path:
    if use_bundled and artifact.libdlr is not None:
        return artifact.libdlr
    return Path(dlr.libpath.find_lib_path(use_default_dlr=True))


def _has_cuda(libdlr: Path) -> bool:
    with open(libdlr, "rb") as stream, mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return any(data.find(marker) >= 0 for marker in _CUDA_MARKERS)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
