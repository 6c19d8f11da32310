"""The SageMaker built-in image-classification artifact: read and write.

The layout (``model.tar.gz`` as SageMaker writes it, or a folder or ``.zip``)::

    image-classification-symbol.json     MXNet symbol; ends in a softmax
    image-classification-0010.params     weights; several epochs may be present
    model-shapes.json                    [{"name": "data", "shape": [1, 3, 224, 224]}]
    labels.txt                           optional, one class name per line (lis)
    preprocessing.json                   optional, ``Preprocessing.to_dict()`` (lis)

When several ``.params`` epochs are present, the highest is loaded, as
SageMaker's own inference container does. A missing ``model-shapes.json``
means the algorithm's default ``image_shape`` (3x224x224, batch 1).

Reading imports neither MXNet nor TVM (the serving path uses it); writing
imports MXNet inside ``write_classifier_artifact``.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployments.archive import materialize, store_artifact
from deployments.imaging import Preprocessing
from deployments.labels import read_labels, write_labels
from vocabulary.errors import ArtifactError
from vocabulary.names import LABELS_FILE, PREPROCESSING_FILE, SHAPES_FILE, SYMBOL_PREFIX

__all__ = [
    "DEFAULT_INPUT_SHAPE",
    "SYMBOL_FILE",
    "ClassifierArtifact",
    "read_classifier_artifact",
    "read_input_shape",
    "write_classifier_artifact",
]

SYMBOL_FILE = f"{SYMBOL_PREFIX}-symbol.json"
# The algorithm's default image_shape is 3,224,224; inference runs batch 1.
DEFAULT_INPUT_SHAPE = (1, 3, 224, 224)
_PARAMS_PATTERN = re.compile(rf"^{re.escape(SYMBOL_PREFIX)}-(\d+)\.params$")
_INPUT_NAME = "data"


@dataclass(frozen=True)
class ClassifierArtifact:
    """A validated image-classification artifact, extracted to ``directory``."""

    directory: Path
    symbol_file: Path
    params_file: Path
    epoch: int
    input_shape: tuple[int, ...]
    labels: tuple[str, ...] | None


# --- reading ---------------------------------------------------------------------

def read_classifier_artifact(source: Path) -> ClassifierArtifact:
    """Validate a SageMaker IC folder or archive and describe it.

    Raises ``ArtifactError`` naming the file that is missing, ambiguous or
    malformed (``UnsafeArchive`` for an archive that fails the safety checks).
    """
    directory = materialize(Path(source))
    symbol_file = _symbol_file(directory)
    epoch, params_file = _latest_params(directory)
    return ClassifierArtifact(
        directory=directory,
        symbol_file=symbol_file,
        params_file=params_file,
        epoch=epoch,
        input_shape=read_input_shape(directory / SHAPES_FILE),
        labels=read_labels(directory / LABELS_FILE),
    )


def _symbol_file(directory: Path) -> Path:
    path = directory / SYMBOL_FILE
    if not path.is_file():
        found = sorted(p.name for p in directory.glob("*-symbol.json"))
        hint = f" (found {', '.join(found)}: not a SageMaker IC name)" if found else ""
        raise ArtifactError(str(directory), f"missing {SYMBOL_FILE}{hint}")
    try:
        graph = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ArtifactError(str(path), f"unreadable symbol JSON: {error}") from error
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
        raise ArtifactError(str(path), "not an MXNet symbol (no 'nodes' list)")
    return path


def _latest_params(directory: Path) -> tuple[int, Path]:
    by_epoch: dict[int, list[Path]] = {}
    for path in directory.iterdir():
        match = _PARAMS_PATTERN.match(path.name)
        if match and path.is_file():
            by_epoch.setdefault(int(match.group(1)), []).append(path)
    if not by_epoch:
        raise ArtifactError(str(directory), f"missing {SYMBOL_PREFIX}-<epoch>.params")
    epoch = max(by_epoch)
    if len(by_epoch[epoch]) > 1:
        names = ", ".join(sorted(p.name for p in by_epoch[epoch]))
        raise ArtifactError(str(directory), f"ambiguous params for epoch {epoch}: {names}")
    return epoch, by_epoch[epoch][0]


def read_input_shape(path: Path) -> tuple[int, ...]:
    """The ``data`` shape a ``model-shapes.json`` declares (the default if absent)."""
    if not path.exists():
        return DEFAULT_INPUT_SHAPE
    try:
        shapes = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ArtifactError(str(path), f"unreadable JSON: {error}") from error
    return _data_shape(path, shapes)


def _data_shape(path: Path, shapes: Any) -> tuple[int, ...]:
    entries = shapes if isinstance(shapes, list) else []
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name") == _INPUT_NAME:
            shape = entry.get("shape")
            if (isinstance(shape, list) and len(shape) == 4
                    and all(isinstance(d, int) and d > 0 for d in shape)):
                return tuple(shape)
            raise ArtifactError(str(path), f"shape of 'data' must be 4 positive integers "
                                           f"(N, C, H, W), got {shape!r}")
    raise ArtifactError(str(path), 'expected a list like [{"name": "data", "shape": '
                                   '[1, 3, 224, 224]}]')


# --- writing ---------------------------------------------------------------------

def write_classifier_artifact(
    net: Any,
    dest: Path,
    *,
    input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE,
    epoch: int = 0,
    labels: Sequence[str] | None = None,
    preprocessing: Preprocessing | None = None,
    params: Mapping[str, Any] | None = None,
) -> Path:
    """Save a classifier in the SageMaker IC layout; return ``dest``.

    ``net`` is a hybridizable Gluon block (its parameters initialised), or an
    ``mx.sym.Symbol`` with ``params`` (``{"arg:name": NDArray, "aux:name": ...}``
    as ``mx.model.save_checkpoint`` writes, or unprefixed argument names). A
    softmax is appended unless the symbol already ends in one, so the artifact
    outputs probabilities as SageMaker's does. ``dest`` is a folder, or a
    ``.tar.gz``/``.tgz``/``.zip`` file written flat (no top-level folder).
    """
    dest = Path(dest)
    with tempfile.TemporaryDirectory(prefix="lis-ic-") as scratch:
        folder = Path(scratch) / "artifact"
        folder.mkdir()
        symbol, arrays = _symbol_and_params(net, params, input_shape, Path(scratch))
        _save_checkpoint(folder, _with_softmax(symbol), arrays, epoch)
        _write_metadata(folder, input_shape, labels, preprocessing)
        store_artifact(folder, dest)
    return dest


def _symbol_and_params(net: Any, params: Mapping[str, Any] | None,
                       input_shape: tuple[int, ...], scratch: Path) -> tuple[Any, dict[str, Any]]:
    import mxnet as mx  # noqa: PLC0415 - writing only; the serving path reads

    if isinstance(net, mx.sym.Symbol):
        if params is None:
            raise ValueError("a Symbol needs its params")
        return net, _prefixed(net, params)
    net.hybridize()
    net(mx.nd.zeros(input_shape))  # builds the cached graph export needs
    net.export(str(scratch / "net"), epoch=0)
    symbol = mx.sym.load(str(scratch / "net-symbol.json"))
    return symbol, dict(mx.nd.load(str(scratch / "net-0000.params")))


def _prefixed(symbol: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    aux_names = set(symbol.list_auxiliary_states())
    arrays = {}
    for name, array in params.items():
        if name.startswith(("arg:", "aux:")):
            arrays[name] = array
        else:
            arrays[f"{'aux' if name in aux_names else 'arg'}:{name}"] = array
    return arrays


def _with_softmax(symbol: Any) -> Any:
    import mxnet as mx  # noqa: PLC0415

    if len(symbol.list_outputs()) != 1:
        raise ValueError(f"a classifier has one output, this one has {symbol.list_outputs()}")
    last_op = json.loads(symbol.tojson())["nodes"][-1]["op"]
    if last_op in ("softmax", "SoftmaxOutput", "SoftmaxActivation"):
        return symbol
    return mx.sym.softmax(symbol, axis=1, name="prob")


def _save_checkpoint(folder: Path, symbol: Any, arrays: dict[str, Any], epoch: int) -> None:
    import mxnet as mx  # noqa: PLC0415

    symbol.save(str(folder / SYMBOL_FILE))
    mx.nd.save(str(folder / f"{SYMBOL_PREFIX}-{epoch:04d}.params"), arrays)


def _write_metadata(folder: Path, input_shape: tuple[int, ...],
                    labels: Sequence[str] | None, preprocessing: Preprocessing | None) -> None:
    shapes = [{"name": _INPUT_NAME, "shape": [int(d) for d in input_shape]}]
    (folder / SHAPES_FILE).write_text(json.dumps(shapes))
    if labels is not None:
        write_labels(folder / LABELS_FILE, labels)
    if preprocessing is not None:
        (folder / PREPROCESSING_FILE).write_text(json.dumps(preprocessing.to_dict(), indent=2))
