"""The runtime half of ``lis compile``'s verification, run as ``python -m modelkit._verify``.

A fresh process (never the one that loaded TVM's compiler) loads the new
artifact exactly as serving will: with ``deployments.dlr_runtime.DLRRuntime``,
or, for a Relay VM artifact, which DLR cannot run, with
``deployments.tvm_runtime.TVMVirtualMachineRuntime`` (runtime-only TVM, no
DLR in the process). It runs ``<work>/input.npy`` and saves the outputs to
``<work>/dlr.npz``. On failure it writes one line to ``<work>/verify-error.txt``.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import numpy as np

from deployments.neo import is_vm_artifact
from deployments.runtime import ModelRuntime
from vocabulary.errors import LisError


def _runtime(artifact: Path) -> ModelRuntime:
    # Each imported only where it serves: DLR and TVM never share a process.
    if is_vm_artifact(artifact):
        from deployments.tvm_runtime import TVMVirtualMachineRuntime  # noqa: PLC0415

        return TVMVirtualMachineRuntime(artifact)
    from deployments.dlr_runtime import DLRRuntime  # noqa: PLC0415

    return DLRRuntime(artifact)


def _run(artifact: Path, work: Path) -> None:
    runtime = _runtime(artifact)
    runtime.load()
    outputs = runtime.predict(np.load(work / "input.npy"))
    np.savez(work / "dlr.npz", *outputs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelkit._verify")
    parser.add_argument("--artifact", required=True, type=Path)
    parser.add_argument("--work", required=True, type=Path)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        _run(args.artifact, args.work)
    except LisError as error:
        (args.work / "verify-error.txt").write_text(str(error))
        return 1
    except Exception as error:  # noqa: BLE001 - reported as one line, logged in full
        traceback.print_exc()
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        (args.work / "verify-error.txt").write_text(f"{type(error).__name__}: {first}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
