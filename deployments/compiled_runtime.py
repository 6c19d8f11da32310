"""What the DLR and TVM runtimes share: a compiled (Neo-layout) artifact, read once.

Both runtimes serve the same files (``compiled.so``, ``.params``, the graph
JSON); they differ only in which library runs them (``deployments.dlr_runtime``,
``deployments.tvm_runtime``).
"""

from __future__ import annotations

from pathlib import Path

from deployments.neo import NeoArtifact, host_machine, read_neo_artifact
from deployments.runtime import DEFAULT_THREADS, ModelRuntime
from vocabulary.errors import ArtifactError

__all__ = ["DEFAULT_INPUT_NAME", "CompiledModelRuntime", "first_line"]

DEFAULT_INPUT_NAME = "data"


class CompiledModelRuntime(ModelRuntime):
    """A runtime for a compiled artifact: its files, input shape and labels, read lazily."""

    def __init__(self, artifact_dir: Path, *, threads: int = DEFAULT_THREADS,
                 device: str = "cpu", allow_cpu_fallback: bool = False) -> None:
        super().__init__(artifact_dir, threads=threads, device=device)
        self.allow_cpu_fallback = allow_cpu_fallback
        self.artifact: NeoArtifact | None = None
        self._input_name = DEFAULT_INPUT_NAME
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

    def _read_for_this_machine(self) -> NeoArtifact:
        """The artifact, checked to be compiled for this machine's architecture."""
        artifact = self.artifact = read_neo_artifact(self.artifact_dir)
        built_for, host = artifact.machine, host_machine()
        if built_for != host:
            raise ArtifactError(str(artifact.library),
                                f"compiled for {built_for}, but this machine is {host}")
        return artifact


def first_line(error: BaseException) -> str:
    """An error's first line, for a message that quotes a runtime's own error."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
