"""What the DLR and TVM runtimes share: a compiled artifact, read once.

DLR and TVM's graph executor serve the same Neo-layout files (``compiled.so``,
``.params``, the graph JSON); they differ only in which library runs them
(``deployments.dlr_runtime``, ``deployments.tvm_runtime``). TVM's Relay VM
serves a ``lis compile`` VM artifact (``compiled.so`` + ``compiled.ro``).
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Generic, TypeVar

from deployments.neo import NeoArtifact, VMArtifact, host_machine, read_neo_artifact
from deployments.runtime import DEFAULT_THREADS, ModelRuntime
from vocabulary.errors import ArtifactError

__all__ = ["DEFAULT_INPUT_NAME", "CompiledModelRuntime", "NeoModelRuntime", "first_line"]

DEFAULT_INPUT_NAME = "data"

_ArtifactT = TypeVar("_ArtifactT", NeoArtifact, VMArtifact)


class CompiledModelRuntime(ModelRuntime, Generic[_ArtifactT]):
    """A runtime for a compiled artifact: its files, input shape and labels, read lazily."""

    def __init__(self, artifact_dir: Path, *, threads: int = DEFAULT_THREADS,
                 device: str = "cpu", allow_cpu_fallback: bool = False) -> None:
        super().__init__(artifact_dir, threads=threads, device=device)
        self.allow_cpu_fallback = allow_cpu_fallback
        self.artifact: _ArtifactT | None = None
        self._input_name = DEFAULT_INPUT_NAME
        self._input_shape: tuple[int, ...] | None = None

    @abstractmethod
    def _read(self) -> _ArtifactT:
        """The artifact at ``artifact_dir``, validated; ``ArtifactError`` if it is not one."""

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self._input_shape is None:  # read once: the graph JSON can be megabytes
            self._input_shape = self._artifact().input_shape(self._input_name)
        return self._input_shape

    @property
    def labels(self) -> tuple[str, ...] | None:
        return self._artifact().labels

    def _artifact(self) -> _ArtifactT:
        if self.artifact is None:
            self.artifact = self._read()
        return self.artifact

    def _read_for_this_machine(self) -> _ArtifactT:
        """The artifact, checked to be compiled for this machine's architecture."""
        artifact = self.artifact = self._read()
        built_for, host = artifact.machine, host_machine()
        if built_for != host:
            raise ArtifactError(str(artifact.library),
                                f"compiled for {built_for}, but this machine is {host}")
        return artifact


class NeoModelRuntime(CompiledModelRuntime[NeoArtifact]):
    """A Neo-layout artifact (library, params, graph): DLR's or TVM's graph executor."""

    def _read(self) -> NeoArtifact:
        return read_neo_artifact(self.artifact_dir)


def first_line(error: BaseException) -> str:
    """An error's first line, for a message that quotes a runtime's own error."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
