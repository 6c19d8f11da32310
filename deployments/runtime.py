"""The model runtime interface: one base class, one small subclass per format.

A runtime owns a loaded model and turns a preprocessed batch into raw outputs.
It knows nothing of HTTP, Ray or output formats, so it can be tested and
benchmarked on its own (see ``deployments.mxnet_runtime`` and
``deployments.dlr_runtime``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np

from vocabulary.errors import LisError
from vocabulary.names import FAKE_GPU_SUPPORT_ENV

__all__ = ["DEFAULT_THREADS", "FAKE_GPU_SUPPORT_ENV", "ModelRuntime", "keep_large_buffers",
           "refuse_mixed_tvm_runtimes", "select_device", "set_thread_count",
           "thread_environment"]

DEFAULT_THREADS = 1
# FAKE_GPU_SUPPORT_ENV, TEST ONLY: "1" makes a GPU request run on the CPU as if the
# runtime had GPU support, so placement on GPU nodes can be tested without a GPU.
_DEVICES = ("cpu", "gpu")

log = logging.getLogger("lis.runtime")

# Each runtime reads its own variable, once, when its native library loads.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "TVM_NUM_THREADS", "MXNET_CPU_WORKER_NTHREADS",
                     "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# Idle pool threads sleep instead of spinning. A spinning TVM or OpenMP pool
# keeps its cores busy between model runs, taking them from decoding, from
# Ray's processes and from the other replicas: on the 2-core reference box the
# demo SSD used 28 ms of CPU per request spinning and 18 ms not.
_NO_SPIN = {"TVM_THREAD_POOL_SPIN_COUNT": "0", "OMP_WAIT_POLICY": "PASSIVE"}
# TVM (inside DLR) pins its pool threads to cores and the thread that calls
# the model to core 0, for good. In a replica that thread is a request worker,
# which decodes the next image on core 0 too, as does every DLR replica on the
# box: with one runtime thread, four requests at a time left one of the two
# cores idle (raw SSD: 77-83 req/s pinned, 124-137 not). The OS places them.
_NO_PINNING = {"TVM_BIND_THREADS": "0"}


def thread_environment(threads: int) -> dict[str, str]:
    """The environment that caps every native thread pool at ``threads``: asleep when idle,
    not pinned to cores."""
    return {**{name: str(threads) for name in _THREAD_VARIABLES}, **_NO_SPIN, **_NO_PINNING}


def set_thread_count(threads: int) -> None:
    """Fix the thread pools of MXNet, TVM/DLR and OpenMP before they load.

    On a 2-core box a runtime that spawns one thread per core in every replica
    fights Ray's own processes; a replica's threads equal its CPUs instead.
    """
    os.environ.update(thread_environment(threads))


# glibc hands every freed buffer above its mmap threshold back to the kernel,
# so each request's decode and preprocess buffers (about 12 MB for a 1280x720
# frame into a 512x512 detector) arrive as fresh pages the next time: about
# 2,300 page faults per request, a third of the demo SSD's 20 ms p50 on the
# 2-core reference box. Buffers up to 32 MB (glibc's maximum) stay in the heap
# for the next request instead; up to 128 MB of free heap is kept before glibc
# returns any.
_MMAP_THRESHOLD_BYTES = 32 << 20
_TRIM_THRESHOLD_BYTES = 128 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h


def keep_large_buffers() -> bool:
    """Let this process reuse its large buffers instead of mapping them anew each request.

    Process-wide and idempotent; whether it applied (glibc on Linux only).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    applied = (mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES) == 1
               and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES) == 1)
    if not applied:
        log.warning("mallopt refused the buffer thresholds: large buffers are mapped per request")
    return applied


def select_device(requested: str, gpu_supported: bool, *, allow_cpu_fallback: bool,
                  unsupported: str = "this runtime has no GPU support") -> str:
    """The device a runtime should use for ``requested`` ("cpu" or "gpu").

    A GPU request on a runtime without GPU support fails with ``unsupported``
    as the reason, or runs on the CPU when the service allows the fallback.
    ``LIS_FAKE_GPU_SUPPORT=1`` (tests only: never set it on a real node) treats
    the runtime as GPU-capable and runs the request on the CPU.
    """
    if requested not in _DEVICES:
        raise LisError(f"unknown device {requested!r}: expected 'cpu' or 'gpu'")
    if requested == "cpu" or gpu_supported:
        return requested
    if os.environ.get(FAKE_GPU_SUPPORT_ENV) == "1":
        log.warning("%s=1: running a GPU request on the CPU (test only)", FAKE_GPU_SUPPORT_ENV)
        return "cpu"
    if allow_cpu_fallback:
        log.warning("device 'gpu' requested, but %s: running on the CPU (allow_cpu_fallback)",
                    unsupported)
        return "cpu"
    raise LisError(f"device 'gpu' requested, but {unsupported} "
                   "(or set allow_cpu_fallback to run on the CPU)")


# DLR's libdlr.so and TVM's own library each carry a TVM runtime; a process that
# loaded both crashed (see docs/architecture.md). A process serves compiled models
# with one of the two only; each name below maps to the other.
_OTHER_TVM_CARRIER = {"dlr": "tvm", "tvm": "dlr"}


def refuse_mixed_tvm_runtimes(loading: str) -> None:
    """Refuse to load ``loading`` ("dlr" or "tvm") into a process that imported the other.

    A name blocked with ``sys.modules[name] = None`` counts as not imported.
    """
    other = _OTHER_TVM_CARRIER[loading]
    if sys.modules.get(other) is not None:
        raise LisError(f"cannot load the {loading.upper()} runtime: this process already "
                       f"imported {other!r}, and DLR and TVM each carry a TVM runtime that "
                       "crash a process holding both; serve this model from another process "
                       "(its own service), never beside the other runtime")


class ModelRuntime(ABC):
    """A model loaded from an artifact folder, ready to run batches."""

    # What serves the model, as the Open Inference Protocol's model metadata names it.
    platform: ClassVar[str]

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
