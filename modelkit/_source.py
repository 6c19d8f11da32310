"""What ``lis compile`` compiles: its input resolved into files and facts.

An MXNet symbol with params, a checkpoint prefix, a SageMaker IC artifact
(folder or archive) or an ONNX file becomes one ``Source``: the model file,
its weights, the input shape the model states, labels and preprocessing it
carries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from deployments.archive import is_archive
from deployments.imaging import Preprocessing, read_preprocessing
from deployments.sagemaker_ic import read_classifier_artifact, read_input_shape
from vocabulary.errors import ArtifactError, CompileError
from vocabulary.names import SHAPES_FILE

__all__ = ["ONNX_SUFFIX", "Source", "resolve_source"]

ONNX_SUFFIX = ".onnx"


@dataclass(frozen=True)
class Source:
    """What ``lis compile`` was given, resolved: files, input, labels, preprocessing."""

    model: Path                   # the symbol JSON, or the .onnx file
    params: Path | None           # None for ONNX (its weights are inside)
    input_shape: tuple[int | None, ...] | None  # None where the model leaves a dimension open
    labels: tuple[str, ...] | None
    preprocessing: Preprocessing | None
    is_classifier: bool = False   # a SageMaker IC artifact
    input_name: str = "data"

    @property
    def framework(self) -> str:
        return "ONNX Runtime" if self.params is None else "MXNet"


def resolve_source(symbol: Path, params: Path | None) -> Source:
    if params is None and symbol.suffix.lower() == ONNX_SUFFIX:
        return _onnx_source(symbol)
    if params is not None:
        return Source(symbol, params, _shape_beside(symbol), None, None)
    if symbol.is_dir() or is_archive(symbol):
        try:
            artifact = read_classifier_artifact(symbol)
        except ArtifactError as error:
            raise CompileError(str(error)) from error
        return Source(artifact.symbol_file, artifact.params_file, artifact.input_shape,
                       artifact.labels, read_preprocessing(artifact.directory),
                       is_classifier=True)
    return _checkpoint(symbol)


def _checkpoint(prefix: Path) -> Source:
    """``X`` -> ``X-symbol.json`` and the highest-epoch ``X-NNNN.params``."""
    symbol = prefix.with_name(f"{prefix.name}-symbol.json")
    pattern = re.compile(rf"^{re.escape(prefix.name)}-(\d+)\.params$")
    epochs = sorted((int(m.group(1)), p) for p in prefix.parent.glob(f"{prefix.name}-*.params")
                    if (m := pattern.match(p.name)))
    if not symbol.is_file() or not epochs:
        raise CompileError(f"{prefix} is not a SageMaker IC artifact nor a checkpoint prefix "
                           f"({symbol.name} and {prefix.name}-NNNN.params); or pass "
                           "--symbol and --params")
    return Source(symbol, epochs[-1][1], _shape_beside(symbol), None, None)


def _onnx_source(path: Path) -> Source:
    """The ONNX model's one image input: its name and shape (open dimensions as None)."""
    try:
        import onnx  # noqa: PLC0415 - the compile extra's; only for ONNX input
    except ImportError as error:
        raise CompileError("ONNX input needs the onnx package: install the compile extra "
                           "(pip install -r requirements-compile.txt)") from error
    if not path.is_file():
        raise CompileError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # noqa: BLE001 - protobuf raises its own DecodeError and more
        raise CompileError(f"{path}: not a valid ONNX model ({_first_line(error)})") from error
    weights = {initializer.name for initializer in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    if len(inputs) != 1:
        raise CompileError(f"{path}: lis serves models with one image input; this one takes "
                           f"{len(inputs)} ({', '.join(i.name for i in inputs) or 'none'})")
    tensor = inputs[0].type.tensor_type
    if tensor.elem_type != onnx.TensorProto.FLOAT:
        raise CompileError(f"{path}: input {inputs[0].name!r} is "
                           f"{onnx.TensorProto.DataType.Name(tensor.elem_type)}, not FLOAT")
    shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                  for d in tensor.shape.dim)
    return Source(path, None, shape, None, None, input_name=inputs[0].name)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def _shape_beside(symbol: Path) -> tuple[int, ...] | None:
    shapes = symbol.parent / SHAPES_FILE
    if not shapes.is_file():
        return None
    try:
        return read_input_shape(shapes)
    except ArtifactError as error:
        raise CompileError(str(error)) from error
