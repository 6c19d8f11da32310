"""DLR runtime for Neo-compiled models (the object-detection connector's format).

``load()`` validates the artifact (``deployments.neo``), then gives DLR a private
folder holding only the three model files: DLR 1.6 finds files by extension
and refuses a folder with any extra ``.json`` (our ``preprocessing.json``).

Which ``libdlr.so`` serves, logged once at load on ``lis.runtime``:

1. the installed DLR's own (found where ``dlr.libpath`` looks), the one whose
   version the project pins;
2. else the artifact's bundled ``libdlr.so``: PyPI's dlr==1.6.0 for aarch64 is
   pure Python, and a Neo artifact for a device ships the library it needs;
3. else an ``ArtifactError`` naming both.

With device ``gpu`` only a library with CUDA counts; with none, the request
fails or runs on the CPU (``allow_cpu_fallback``). ``prefer_bundled_libdlr=True``
puts the artifact's own first. Either way DLR's Python side is imported
through ``deployments._dlr``, so its telemetry is off whichever library serves.

DLR refuses to load into a process that imported ``tvm``: both carry a TVM
runtime (``deployments.runtime.refuse_mixed_tvm_runtimes``).

Threads: the TVM runtime inside libdlr sizes its pool from ``TVM_NUM_THREADS``
when its first model runs; ``load()`` sets it (``set_thread_count``). A
process that already ran a DLR model keeps the pool it has.
"""

from __future__ import annotations

import logging
import mmap
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deployments._dlr import import_dlr, installed_libdlr
from deployments.compiled_runtime import (
    NeoModelRuntime,
    first_line,
)
from deployments.neo import NeoArtifact
from deployments.runtime import (
    DEFAULT_THREADS,
    refuse_mixed_tvm_runtimes,
    select_device,
    set_thread_count,
)
from vocabulary.errors import ArtifactError, InvalidArgument, LisError
from vocabulary.names import LIBDLR_FILE

__all__ = ["DLRRuntime"]

_DEVICES = ("cpu", "gpu")
_CUDA_MARKERS = (b"libcudart", b"cudaMalloc", b"cuModuleLoad")
_NO_CUDA = ("{libraries} (the pip dlr==1.6.0 wheel is CPU-only; use device 'cpu' or a GPU "
            "build of DLR)")
_NO_LIBDLR = ("no DLR native library can run it: the installed DLR has none (dlr.libpath finds "
              "no {name}; PyPI's dlr==1.6.0 for aarch64 ships none) and the artifact bundles "
              "no {bundled}; install a DLR build with {name} for this machine, or serve a model "
              "built by `lis compile` on the TVM runtime")

log = logging.getLogger("lis.runtime")


@dataclass(frozen=True)
class _Libdlr:
    """A native DLR library that could serve: the installed one or the artifact's."""

    path: Path
    bundled: bool


class DLRRuntime(NeoModelRuntime):
    """A Neo/DLR-compiled model; ``predict`` returns the model's raw outputs.

    For GluonCV detectors those are ``[class_ids (1,N,1), scores (1,N,1),
    boxes (1,N,4) in input pixels]``; rows with class id -1 are padding.
    """

    platform = "dlr"

    def __init__(self, artifact_dir: Path, *, threads: int = DEFAULT_THREADS,
                 device: str = "cpu", prefer_bundled_libdlr: bool = False,
                 allow_cpu_fallback: bool = False) -> None:
        super().__init__(artifact_dir, threads=threads, device=device,
                         allow_cpu_fallback=allow_cpu_fallback)
        self.prefer_bundled_libdlr = prefer_bundled_libdlr
        self._model: Any = None

    def load(self) -> None:
        refuse_mixed_tvm_runtimes("dlr")
        artifact = self._read_for_this_machine()
        if self.device not in _DEVICES:
            raise LisError(f"unknown device {self.device!r}: expected 'cpu' or 'gpu'")
        set_thread_count(self.threads)
        installed = installed_libdlr()
        libdlr = self._choose_libdlr(artifact, installed)
        log.info("DLR runtime for %s: %s serves, %s", artifact.directory, libdlr.path,
                 _why(libdlr, installed, self.prefer_bundled_libdlr))
        self._model = self._create(import_dlr(), artifact, libdlr.bundled)
        names = self._model.get_input_names()
        self._input_name = names[0] if names else self._input_name
        self._input_shape = artifact.input_shape(self._input_name)

    def _choose_libdlr(self, artifact: NeoArtifact, installed: Path | None) -> _Libdlr:
        candidates = _candidates(installed, artifact.libdlr, self.prefer_bundled_libdlr)
        if not candidates:
            raise ArtifactError(str(artifact.directory), _NO_LIBDLR.format(
                name=LIBDLR_FILE, bundled=artifact.directory / LIBDLR_FILE))
        if self.device == "gpu":
            with_cuda = [libdlr for libdlr in candidates if _has_cuda(libdlr.path)]
            self.device = select_device(self.device, bool(with_cuda),
                                        allow_cpu_fallback=self.allow_cpu_fallback,
                                        unsupported=_no_cuda(candidates))
            candidates = with_cuda or candidates
        return candidates[0]

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
                                f"DLR could not load the model: {first_line(error)}") from error
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



def _candidates(installed: Path | None, bundled: Path | None,
                prefer_bundled: bool) -> list[_Libdlr]:
    """The libraries that could serve, best first."""
    own = _Libdlr(bundled, bundled=True) if bundled is not None else None
    pip = _Libdlr(installed, bundled=False) if installed is not None else None
    order = (own, pip) if prefer_bundled else (pip, own)
    return [libdlr for libdlr in order if libdlr is not None]


def _why(libdlr: _Libdlr, installed: Path | None, prefer_bundled: bool) -> str:
    if not libdlr.bundled:
        return "the installed DLR's own library"
    if prefer_bundled:
        return "the artifact's own library, which this runtime was told to prefer"
    if installed is None:
        return "the artifact's own library: the installed DLR has no native library"
    return f"the artifact's own library: the installed {installed} has no CUDA"


def _no_cuda(candidates: list[_Libdlr]) -> str:
    return _NO_CUDA.format(libraries="; ".join(
        f"the {'bundled' if c.bundled else 'installed'} {c.path} has no CUDA support"
        for c in candidates))


def _has_cuda(libdlr: Path) -> bool:
    with open(libdlr, "rb") as stream, mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return any(data.find(marker) >= 0 for marker in _CUDA_MARKERS)

