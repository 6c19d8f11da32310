"""One service's inference path without Ray: bytes in, connector output out.

decode -> preprocess -> runtime -> output format. This is what a replica
runs per request and what ``make bench`` measures as the raw path, so the
serving overhead is the difference between the two.

Which runtime serves a model (``_make_runtime``): a SageMaker
image-classification artifact runs on MXNet. A compiled (Neo/DLR layout)
model, detector or classifier, runs on DLR when the installed DLR has a native
library or the artifact bundles one (``deployments.dlr_runtime`` says which);
else, when ``lis compile`` built it, on TVM's runtime; else the error says what
to install. A ``lis compile`` artifact for TVM's Relay VM (an ONNX detector
ending in NonMaxSuppression) runs on TVM's runtime everywhere: DLR cannot.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deployments import output
from deployments._dlr import installed_libdlr
from deployments.archive import materialize
from deployments.imaging import (
    CLASSIFIER_PREPROCESSING,
    DETECTOR_PREPROCESSING,
    Preprocessing,
    prepare_image,
    read_preprocessing,
    tensor_batch,
)
from deployments.labels import read_labels
from deployments.neo import is_vm_artifact
from deployments.runtime import ModelRuntime, keep_large_buffers
from deployments.tvm_runtime import INSTALL_TVM
from vocabulary.connectors import Algorithm
from vocabulary.errors import ArtifactError, InferenceFailed, LisError
from vocabulary.limits import DEFAULT_MAX_PIXELS
from vocabulary.names import COMPILE_INFO_FILE, LABELS_FILE, LIBDLR_FILE
from vocabulary.tensors import TENSOR_CONTENT_TYPE

__all__ = ["InferencePipeline", "PipelineOptions", "Prediction"]

log = logging.getLogger("lis.runtime")

_NO_RUNTIME = (f"no runtime here can serve this compiled model: the installed DLR has no "
               f"native library ({LIBDLR_FILE}) and the artifact bundles none; install a DLR "
               f"build with {LIBDLR_FILE} for this machine")

_DEFAULT_PREPROCESSING: dict[str, Preprocessing] = {
    "image-classification": CLASSIFIER_PREPROCESSING,
    "object-detection": DETECTOR_PREPROCESSING,
}


@dataclass(frozen=True)
class PipelineOptions:
    """What a service configures about its inference path."""

    algorithm: Algorithm
    threads: int = 1
    device: str = "cpu"
    # With device "gpu": run on the CPU when the runtime has no GPU support.
    allow_cpu_fallback: bool = False
    preprocessing_overrides: dict[str, object] = field(default_factory=dict)
    score_threshold: float | None = None
    top_k: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class Prediction:
    """A connector answer plus what feedback sampling needs."""

    body: str
    content_type: str
    # What ML Feedback samples on, in the SDK's ModelPrediction shapes: a list
    # of probabilities (classification) or {"prediction": rows} (detection).
    values: list[float] | dict[str, list[list[float | int]]]


def _make_runtime(model_dir: Path, options: PipelineOptions) -> ModelRuntime:
    # Imported here: a process serving only detectors never loads MXNet's
    # 100 MB library, and one serving only classifiers never loads DLR.
    settings = {"threads": options.threads, "device": options.device,
                "allow_cpu_fallback": options.allow_cpu_fallback}
    folder = materialize(model_dir)
    if options.algorithm == "image-classification" and not _is_compiled(folder):
        from deployments.mxnet_runtime import MXNetClassifierRuntime

        return MXNetClassifierRuntime(model_dir, **settings)
    return _compiled_runtime(model_dir, folder, settings)


def _is_compiled(folder: Path) -> bool:
    # A Neo/DLR artifact holds a compiled library; SageMaker IC's MXNet checkpoint never does.
    return any(path.suffix == ".so" for path in folder.iterdir())


def _compiled_runtime(model_dir: Path, folder: Path, settings: dict[str, Any]) -> ModelRuntime:
    if is_vm_artifact(folder):
        return _virtual_machine_runtime(model_dir, folder, settings)
    if installed_libdlr() is not None or (folder / LIBDLR_FILE).is_file():
        from deployments.dlr_runtime import DLRRuntime

        return DLRRuntime(model_dir, **settings)
    # No DLR library here (PyPI's dlr==1.6.0 for aarch64 has none). TVM's own runtime
    # runs what `lis compile` built: the TVM pinned for serving is the one that compiled it.
    if not (folder / COMPILE_INFO_FILE).is_file():
        raise ArtifactError(str(model_dir), _NO_RUNTIME + "; or compile the model with "
                            "`lis compile` and install the TVM runtime "
                            "(xtc-tvm-python-bindings) to serve it")
    if importlib.util.find_spec("tvm") is None:
        raise ArtifactError(str(model_dir), _NO_RUNTIME + "; or, since `lis compile` built it, "
                            + INSTALL_TVM)
    from deployments.tvm_runtime import TVMGraphRuntime

    log.info("TVM runtime for %s: no DLR native library here, and `lis compile` built it",
             folder)
    return TVMGraphRuntime(model_dir, **settings)


def _virtual_machine_runtime(model_dir: Path, folder: Path,
                             settings: dict[str, Any]) -> ModelRuntime:
    # DLR 1.6's VM loader refuses TVM 0.19's bytecode: TVM's own runtime serves it, or nothing.
    if importlib.util.find_spec("tvm") is None:
        raise ArtifactError(str(model_dir), "this model was compiled for TVM's Relay VM, "
                            "which only the TVM runtime serves: " + INSTALL_TVM)
    from deployments.tvm_runtime import TVMVirtualMachineRuntime

    log.info("TVM runtime (Relay VM) for %s: `lis compile` built it for the VM", folder)
    return TVMVirtualMachineRuntime(model_dir, **settings)


class InferencePipeline:
    """A loaded model and the steps around it, for one service."""

    def __init__(self, model_dir: Path, options: PipelineOptions) -> None:
        self.model_dir = Path(model_dir)
        self.options = options
        keep_large_buffers()
        self.runtime = _make_runtime(self.model_dir, options)
        self.runtime.load()
        self.preprocessing = self._resolve_preprocessing()
        self.labels = read_labels(self.model_dir / LABELS_FILE)

    def _resolve_preprocessing(self) -> Preprocessing:
        # Precedence: the service's overrides > what the model folder
        # documents > the algorithm's convention; the size always defaults to
        # what the model's input takes.
        base = read_preprocessing(self.model_dir) or _DEFAULT_PREPROCESSING[self.options.algorithm]
        _, _, height, width = self.runtime.input_shape
        base = base.with_overrides(width=width, height=height)
        return base.with_overrides(**self.options.preprocessing_overrides)

    def warm_up(self) -> None:
        """Run one blank input so the first caller doesn't pay for lazy init."""
        spec = self.preprocessing
        self.runtime.predict(np.zeros((1, 3, spec.height, spec.width), dtype=np.float32))

    def prepare(self, body: bytes, content_type: str | None) -> np.ndarray:
        """Decode and preprocess a request body into the model's input batch.

        A body that is already the model's input (``TENSOR_CONTENT_TYPE``) is
        only checked against the input's shape.
        """
        if (content_type or "").split(";")[0].strip().lower() == TENSOR_CONTENT_TYPE:
            return tensor_batch(body, content_type or "", self.runtime.input_shape)
        return prepare_image(body, content_type, self.preprocessing, self.options.max_pixels)

    def run(self, body: bytes, content_type: str | None) -> Prediction:
        return self.run_batch(self.prepare(body, content_type))

    def run_batch(self, batch: np.ndarray) -> Prediction:
        """Run the model on a preprocessed batch and format its answer."""
        try:
            outputs = self.runtime.predict(batch)
        except LisError:
            raise
        except Exception as error:  # a runtime's own failure, e.g. an MXNet shape error
            raise InferenceFailed(str(self.model_dir.name), f"{type(error).__name__}: {error}") \
                from error
        if self.options.algorithm == "image-classification":
            return self._classification(outputs)
        return self._detection(outputs)

    def _classification(self, outputs: list[np.ndarray]) -> Prediction:
        probabilities = output.softmax_if_needed(outputs[0])
        return Prediction(output.format_classification(probabilities),
                          output.CLASSIFICATION_CONTENT_TYPE,
                          [float(p) for p in probabilities])

    def _detection(self, outputs: list[np.ndarray]) -> Prediction:
        if len(outputs) < 3:
            raise ArtifactError(str(self.model_dir),
                                f"a detector must have 3 outputs (ids, scores, boxes), "
                                f"this one has {len(outputs)}")
        rows = output.detections(outputs[0], outputs[1], outputs[2],
                                 self.preprocessing.width, self.preprocessing.height,
                                 score_threshold=self.options.score_threshold,
                                 top_k=self.options.top_k)
        return Prediction(output.format_detection(rows), output.DETECTION_CONTENT_TYPE,
                          {"prediction": rows})
