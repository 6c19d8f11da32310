"""Neo/DLR artifacts: validated before DLR sees them, with errors that name the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deployments.archive import pack_folder
from deployments.imaging import read_preprocessing
from deployments.neo import (
    COMPILE_INFO_FILE,
    GRAPH_FILE,
    LIBDLR_FILE,
    LIBRARY_FILE,
    PARAMS_FILE,
    host_machine,
    is_vm_artifact,
    read_neo_artifact,
    read_vm_artifact,
    write_neo_artifact,
    write_vm_artifact,
)
from vocabulary.errors import ArtifactError
from vocabulary.names import PREPROCESSING_FILE, VM_CODE_FILE


@pytest.fixture
def neo_copy(tmp_path: Path, tiny_neo_artifact: Path) -> Path:
    return shutil.copytree(tiny_neo_artifact, tmp_path / "neo")


def test_compiled_artifact_is_described(tiny_neo_artifact: Path) -> None:
    artifact = read_neo_artifact(tiny_neo_artifact)
    assert artifact.library.name == LIBRARY_FILE
    assert artifact.params.name == PARAMS_FILE
    assert artifact.graph.name == GRAPH_FILE  # not preprocessing.json nor lis-compile.json
    assert artifact.libdlr is None
    assert artifact.labels == ("circle", "square", "triangle")
    assert artifact.machine == host_machine()
    assert artifact.input_shape() == (1, 3, 224, 224)
    assert read_preprocessing(artifact.directory) is not None
    assert (artifact.directory / COMPILE_INFO_FILE).is_file()


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_archives_are_read_too(tmp_path: Path, tiny_neo_artifact: Path, suffix: str) -> None:
    packed = pack_folder(tiny_neo_artifact, tmp_path / f"model{suffix}")
    artifact = read_neo_artifact(packed)
    assert artifact.library.read_bytes() == (tiny_neo_artifact / LIBRARY_FILE).read_bytes()


@pytest.mark.parametrize(("remove", "message"), [
    (LIBRARY_FILE, "missing the compiled library (*.so) file"),
    (PARAMS_FILE, "missing the *.params file"),
    (GRAPH_FILE, "missing the graph (*.json) file"),
])
def test_missing_file_is_named(neo_copy: Path, remove: str, message: str) -> None:
    (neo_copy / remove).unlink()
    with pytest.raises(ArtifactError) as caught:
        read_neo_artifact(neo_copy)
    assert message in str(caught.value)


@pytest.mark.parametrize(("original", "duplicate", "message"), [
    (LIBRARY_FILE, "other.so", "more than one compiled library (*.so) file: compiled.so, other.so"),
    (PARAMS_FILE, "model.params", "more than one *.params file: compiled.params, model.params"),
    (GRAPH_FILE, "graph.json", "more than one graph (*.json) file: compiled_model.json, graph.json"),
])
def test_duplicate_file_is_named(neo_copy: Path, original: str, duplicate: str,
                                 message: str) -> None:
    shutil.copy(neo_copy / original, neo_copy / duplicate)
    with pytest.raises(ArtifactError) as caught:
        read_neo_artifact(neo_copy)
    assert message in str(caught.value)


def test_two_libraries_in_an_archive_are_rejected(tmp_path: Path, neo_copy: Path) -> None:
    shutil.copy(neo_copy / LIBRARY_FILE, neo_copy / "second.so")
    packed = pack_folder(neo_copy, tmp_path / "model.tar.gz")
    with pytest.raises(ArtifactError, match="compiled.so, second.so"):
        read_neo_artifact(packed)


def test_bundled_libdlr_is_not_the_model_library(neo_copy: Path) -> None:
    shutil.copy(neo_copy / LIBRARY_FILE, neo_copy / LIBDLR_FILE)
    artifact = read_neo_artifact(neo_copy)
    assert artifact.library.name == LIBRARY_FILE
    assert artifact.libdlr == neo_copy / LIBDLR_FILE


def test_sagemaker_auxiliary_json_files_are_not_the_graph(neo_copy: Path) -> None:
    (neo_copy / "model-shapes.json").write_text('[{"name": "data", "shape": [1, 3, 224, 224]}]')
    (neo_copy / "hyperparams.json").write_text("{}")
    assert read_neo_artifact(neo_copy).graph.name == GRAPH_FILE


def test_empty_params_is_named(neo_copy: Path) -> None:
    (neo_copy / PARAMS_FILE).write_bytes(b"")
    with pytest.raises(ArtifactError, match=f"{PARAMS_FILE}: file is empty"):
        read_neo_artifact(neo_copy)


def test_library_that_is_not_elf_is_named(neo_copy: Path) -> None:
    (neo_copy / LIBRARY_FILE).write_text("#!/bin/sh\n")
    with pytest.raises(ArtifactError, match=f"{LIBRARY_FILE}: not a shared library"):
        read_neo_artifact(neo_copy)


def test_graph_that_is_not_a_tvm_graph_is_named(neo_copy: Path) -> None:
    (neo_copy / GRAPH_FILE).write_text('{"nodes": []}')
    with pytest.raises(ArtifactError, match=f"{GRAPH_FILE}: not a TVM graph"):
        read_neo_artifact(neo_copy)


def test_aarch64_library_is_recognised(neo_copy: Path) -> None:
    library = bytearray((neo_copy / LIBRARY_FILE).read_bytes())
    library[18:20] = (183).to_bytes(2, "little")  # EM_AARCH64
    (neo_copy / LIBRARY_FILE).write_bytes(bytes(library))
    assert read_neo_artifact(neo_copy).machine == "aarch64"


def test_writer_names_files_and_validates(tmp_path: Path, tiny_neo_artifact: Path) -> None:
    dest = write_neo_artifact(
        tmp_path / "out.tar.gz", library=tiny_neo_artifact / LIBRARY_FILE,
        graph=tiny_neo_artifact / GRAPH_FILE, params=tiny_neo_artifact / PARAMS_FILE,
        labels=["a", "b", "c"], compile_info={"target": "llvm"})
    artifact = read_neo_artifact(dest)
    assert artifact.labels == ("a", "b", "c")
    assert not (artifact.directory / PREPROCESSING_FILE).exists()
    with pytest.raises(ArtifactError, match="not a TVM graph"):
        write_neo_artifact(tmp_path / "bad", library=tiny_neo_artifact / LIBRARY_FILE,
                           graph=tiny_neo_artifact / COMPILE_INFO_FILE,
                           params=tiny_neo_artifact / PARAMS_FILE)
    assert not (tmp_path / "bad").exists()


# --- Relay VM artifacts (lis compile of a detector with NonMaxSuppression) ---------

def _vm_artifact(tmp_path: Path, tiny_neo_artifact: Path, info: dict[str, object]) -> Path:
    """A VM artifact's layout, as the writer makes it (the bytecode's content is not read)."""
    code = tmp_path / "code.ro"
    code.write_bytes(b"bytecode")
    return write_vm_artifact(tmp_path / "vm", library=tiny_neo_artifact / LIBRARY_FILE,
                             code=code, labels=["a", "b"], compile_info=info)


def test_a_vm_artifact_is_described_from_its_compile_info(tmp_path: Path,
                                                          tiny_neo_artifact: Path) -> None:
    folder = _vm_artifact(tmp_path, tiny_neo_artifact,
                          {"input_name": "image", "input_shape": [1, 3, 96, 128]})
    assert is_vm_artifact(folder) and not is_vm_artifact(tiny_neo_artifact)
    artifact = read_vm_artifact(folder)
    assert (artifact.library.name, artifact.code.name) == (LIBRARY_FILE, VM_CODE_FILE)
    assert artifact.input_shape("image") == (1, 3, 96, 128)
    assert artifact.labels == ("a", "b") and artifact.machine == host_machine()
    with pytest.raises(ArtifactError, match="no input 'data'"):
        artifact.input_shape("data")


def test_a_vm_artifact_without_its_input_shape_is_refused(tmp_path: Path,
                                                         tiny_neo_artifact: Path) -> None:
    with pytest.raises(ArtifactError, match="no 'input_shape' for the model's input"):
        _vm_artifact(tmp_path, tiny_neo_artifact, {"input_name": "data"})
    assert not (tmp_path / "vm").exists()


def test_a_vm_artifact_missing_a_file_names_it(tmp_path: Path, tiny_neo_artifact: Path) -> None:
    folder = _vm_artifact(tmp_path, tiny_neo_artifact, {"input_shape": [1, 3, 64, 64]})
    (folder / COMPILE_INFO_FILE).unlink()
    with pytest.raises(ArtifactError, match="a Relay VM artifact needs lis-compile.json"):
        read_vm_artifact(folder)
