"""The model runtime interface: one base class, one small subclass per format.

A runtime owns a loaded model and turns a preprocessed batch into raw outputs.
It knows nothing of HTTP, Ray or output formats, so it can be tested and
benchmarked on its own (see ``deployments.mxnet_runtime`` and
``deployments.dlr_runtime``).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

__all__ = ["DEFAULT_THREADS", "ModelRuntime", "set_thread_count", "thread_environment"]

DEFAULT_THREADS = 1

# Each runtime reads its own variable, once, when its native library loads.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "TVM_NUM_THREADS", "MXNET_CPU_WORKER_NTHREADS",
                     "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_environment(threads: int) -> dict[str, str]:
    """The environment that caps every native thread pool at ``threads``."""
    return {name: str(threads) for name in _THREAD_VARIABLES}


def set_thread_count(threads: int) -> None:
    """Fix the thread pools of MXNet, TVM/DLR and OpenMP before they load.

    On a 2-core box a runtime that spawns one thread per core in every replica
    fights Ray's own processes; a replica's threads equal its CPUs instead.
    """
    os.environ.update(thread_environment(threads))


class ModelRuntime(ABC):
    """A model loaded from an artifact folder, ready to run batches."""

    def __init__(self, artifact_dir: Path, *, threads: int = DEFAULT_THREADS,
                 device: str = "cpu") -> None:
        self.artifact_dir = Path(artifact_dir)
        self.threads = threads
        self.device = device

    @property
    @abstractmethod
    def input_shape(self) -> tuple[int, ...]:
        """The NCHW shape the model takes, e.g. (1, 3, 224, 224)."""

    @abstractmethod
    def load(self) -> None:
        """Load the model; raise ``ArtifactError`` if the artifact is unusable."""

    @abstractmethod
    def predict(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run one preprocessed NCHW float32 batch; return the model's raw outputs."""
