"""The Neo/DLR compiled-model artifact: validate, describe, write.

What SageMaker Neo produces and DLR loads: one folder (or ``.tar.gz``/``.zip``)
holding

    compiled.so            the compiled operators (any ``*.so`` but ``libdlr.so``)
    compiled.params        the weights (``*.params``)
    compiled_model.json    the TVM graph (the one ``*.json`` not listed below)
    libdlr.so              optional: a DLR runtime shipped with the model
    labels.txt             optional (lis): class names, one per line
    preprocessing.json     optional (lis): ``Preprocessing.to_dict()``
    lis-compile.json       optional (lis): how ``lis compile`` built it

A model whose output shapes depend on its data (an ONNX detector ending in
``NonMaxSuppression``) cannot run on a graph executor: ``lis compile`` builds
it for TVM's Relay VM instead, and writes ``compiled.so`` with the VM's
bytecode ``compiled.ro`` in place of the params and graph
(``read_vm_artifact``). Its input name and shape are in ``lis-compile.json``
(required there). DLR 1.6 cannot run TVM 0.19's VM bytecode, so only TVM's
own runtime serves it (``deployments.tvm_runtime``).

DLR itself finds the files by extension and stops at the first ambiguity with
a bare message; ``read_neo_artifact`` checks the same rules first and names
the missing or duplicate files. Note that DLR 1.6 refuses a folder with any
extra ``.json`` besides ``model-shapes.json``, ``hyperparams.json`` and
``version.json``: ``deployments.dlr_runtime`` therefore hands DLR a folder
holding only the three model files.

This module imports neither TVM nor DLR: the serving path uses it.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployments.archive import materialize, store_artifact
from deployments.imaging import Preprocessing
from deployments.labels import read_labels, write_labels
from vocabulary.errors import ArtifactError
from vocabulary.names import (
    AUXILIARY_JSON_FILES,
    COMPILE_INFO_FILE,
    GRAPH_FILE,
    LABELS_FILE,
    LIBDLR_FILE,
    LIBRARY_FILE,
    PARAMS_FILE,
    PREPROCESSING_FILE,
    VM_CODE_FILE,
)

__all__ = [
    "NeoArtifact",
    "VMArtifact",
    "graph_input_shape",
    "host_machine",
    "is_vm_artifact",
    "library_machine",
    "read_neo_artifact",
    "read_vm_artifact",
    "write_neo_artifact",
    "write_vm_artifact",
]


_ELF_MAGIC = b"\x7fELF"
# ELF e_machine values -> the names `platform.machine()` uses.
_ELF_MACHINES = {3: "i686", 40: "armv7l", 62: "x86_64", 183: "aarch64"}
_HOST_ALIASES = {"amd64": "x86_64", "arm64": "aarch64", "armv7": "armv7l", "armv8l": "armv7l"}


@dataclass(frozen=True)
class NeoArtifact:
    """A validated Neo/DLR artifact, extracted to ``directory``."""

    directory: Path
    library: Path
    params: Path
    graph: Path
    libdlr: Path | None
    labels: tuple[str, ...] | None

    @property
    def machine(self) -> str:
        """The CPU architecture the compiled library is for, e.g. ``x86_64``."""
        return library_machine(self.library)

    def input_shape(self, input_name: str = "data") -> tuple[int, ...]:
        """The shape the graph was compiled for, read from the graph JSON."""
        return graph_input_shape(self.graph, input_name)


@dataclass(frozen=True)
class VMArtifact:
    """A validated ``lis compile`` artifact for TVM's Relay VM, extracted to ``directory``."""

    directory: Path
    library: Path
    code: Path
    input_name: str
    shape: tuple[int, ...]
    labels: tuple[str, ...] | None

    @property
    def machine(self) -> str:
        return library_machine(self.library)

    def input_shape(self, input_name: str = "data") -> tuple[int, ...]:
        """The shape the model was compiled for (its one input, ``lis-compile.json``'s)."""
        if input_name != self.input_name:
            raise ArtifactError(str(self.directory), f"no input {input_name!r}")
        return self.shape


def is_vm_artifact(directory: Path) -> bool:
    """Whether an extracted artifact folder holds Relay VM bytecode (``compiled.ro``)."""
    return (directory / VM_CODE_FILE).is_file()


def read_vm_artifact(source: Path) -> VMArtifact:
    """Validate a Relay VM artifact folder or archive and describe it."""
    directory = materialize(Path(source))
    library, code = directory / LIBRARY_FILE, directory / VM_CODE_FILE
    for path in (library, code, directory / COMPILE_INFO_FILE):
        if not path.is_file():
            raise ArtifactError(str(directory), f"a Relay VM artifact needs {path.name}")
    _check_library(library)
    _check_readable(code)
    input_name, shape = _compiled_input(directory / COMPILE_INFO_FILE)
    return VMArtifact(directory=directory, library=library, code=code, input_name=input_name,
                      shape=shape, labels=read_labels(directory / LABELS_FILE))


def _compiled_input(info_file: Path) -> tuple[str, tuple[int, ...]]:
    info = _load_json(info_file)
    try:
        shape = tuple(int(d) for d in info["input_shape"])
        return str(info.get("input_name", "data")), shape
    except (KeyError, TypeError, ValueError) as error:
        raise ArtifactError(str(info_file), "no 'input_shape' for the model's input") from error


def read_neo_artifact(source: Path) -> NeoArtifact:
    """Validate a Neo/DLR folder or archive and describe it.

    Raises ``ArtifactError`` naming the missing, duplicate or unreadable file.
    """
    directory = materialize(Path(source))
    files = sorted(p for p in directory.iterdir() if p.is_file())
    libdlr = directory / LIBDLR_FILE
    library = _exactly_one(directory, [p for p in files if p.suffix == ".so"
                                       and p.name != LIBDLR_FILE], "compiled library (*.so)")
    params = _exactly_one(directory, [p for p in files if p.suffix == ".params"], "*.params")
    graph = _exactly_one(directory, [p for p in files if p.suffix == ".json"
                                     and p.name not in AUXILIARY_JSON_FILES], "graph (*.json)")
    _check_library(library)
    _check_readable(params)
    _check_graph(graph)
    if libdlr.is_file():
        _check_library(libdlr)
    return NeoArtifact(directory=directory, library=library, params=params, graph=graph,
                       libdlr=libdlr if libdlr.is_file() else None,
                       labels=read_labels(directory / LABELS_FILE))


def _exactly_one(directory: Path, candidates: list[Path], what: str) -> Path:
    if not candidates:
        raise ArtifactError(str(directory), f"missing the {what} file")
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise ArtifactError(str(directory), f"more than one {what} file: {names}")
    return candidates[0]


def _read_head(path: Path, size: int) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read(size)
    except OSError as error:
        raise ArtifactError(str(path), f"unreadable: {error.strerror}") from error


def _check_readable(path: Path) -> None:
    if not _read_head(path, 1):
        raise ArtifactError(str(path), "file is empty")


def _check_library(path: Path) -> None:
    if _read_head(path, 4) != _ELF_MAGIC:
        raise ArtifactError(str(path), "not a shared library (no ELF header)")


def _check_graph(path: Path) -> None:
    graph = _load_json(path)
    if not isinstance(graph, dict) or not {"nodes", "arg_nodes", "heads"} <= graph.keys():
        raise ArtifactError(str(path), "not a TVM graph (needs 'nodes', 'arg_nodes', 'heads')")


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ArtifactError(str(path), f"unreadable JSON: {error}") from error


def graph_input_shape(graph_file: Path, input_name: str = "data") -> tuple[int, ...]:
    """The compiled shape of input ``input_name`` (TVM graph JSON ``attrs.shape``)."""
    graph = _load_json(graph_file)
    try:
        names = [node["name"] for node in graph["nodes"]]
        entry = graph["node_row_ptr"][names.index(input_name)]
        return tuple(int(d) for d in graph["attrs"]["shape"][1][entry])
    except (KeyError, IndexError, ValueError, TypeError) as error:
        raise ArtifactError(str(graph_file), f"no shape for input {input_name!r}") from error


def library_machine(path: Path) -> str:
    """The CPU architecture an ELF shared library is built for."""
    head = _read_head(path, 20)
    if head[:4] != _ELF_MAGIC or len(head) < 20:
        raise ArtifactError(str(path), "not a shared library (no ELF header)")
    code = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return _ELF_MACHINES.get(code, f"ELF machine {code}")


def host_machine() -> str:
    machine = platform.machine().lower()
    return _HOST_ALIASES.get(machine, machine)


# --- writing ---------------------------------------------------------------------

def write_neo_artifact(
    dest: Path,
    *,
    library: Path,
    graph: Path,
    params: Path,
    labels: Sequence[str] | None = None,
    preprocessing: Preprocessing | None = None,
    compile_info: Mapping[str, Any] | None = None,
    libdlr: Path | None = None,
) -> Path:
    """Assemble a Neo/DLR artifact at ``dest`` (a folder, ``.tar.gz`` or ``.zip``).

    The model files get Neo's names (``compiled.so``, ``compiled.params``,
    ``compiled_model.json``); the result is validated before it is published.
    """
    with tempfile.TemporaryDirectory(prefix="lis-neo-") as scratch:
        folder = Path(scratch)
        for source, name in ((library, LIBRARY_FILE), (params, PARAMS_FILE),
                             (graph, GRAPH_FILE)):
            shutil.copyfile(source, folder / name)
        if libdlr is not None:
            shutil.copyfile(libdlr, folder / LIBDLR_FILE)
        _write_descriptions(folder, labels, preprocessing, compile_info)
        read_neo_artifact(folder)
        return store_artifact(folder, Path(dest))


def write_vm_artifact(
    dest: Path,
    *,
    library: Path,
    code: Path,
    compile_info: Mapping[str, Any],
    labels: Sequence[str] | None = None,
    preprocessing: Preprocessing | None = None,
) -> Path:
    """Assemble a Relay VM artifact at ``dest``; ``compile_info`` names its input's shape."""
    with tempfile.TemporaryDirectory(prefix="lis-vm-") as scratch:
        folder = Path(scratch)
        shutil.copyfile(library, folder / LIBRARY_FILE)
        shutil.copyfile(code, folder / VM_CODE_FILE)
        _write_descriptions(folder, labels, preprocessing, compile_info)
        read_vm_artifact(folder)
        return store_artifact(folder, Path(dest))


def _write_descriptions(folder: Path, labels: Sequence[str] | None,
                        preprocessing: Preprocessing | None,
                        compile_info: Mapping[str, Any] | None) -> None:
    if labels is not None:
        write_labels(folder / LABELS_FILE, labels)
    if preprocessing is not None:
        (folder / PREPROCESSING_FILE).write_text(json.dumps(preprocessing.to_dict(), indent=2))
    if compile_info is not None:
        (folder / COMPILE_INFO_FILE).write_text(json.dumps(dict(compile_info), indent=2))
