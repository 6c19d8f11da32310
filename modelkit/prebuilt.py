"""The demo models prebuilt for machines that cannot compile them: ``models/aarch64/``.

Compiling a demo model needs MXNet (to read the checkpoint and to verify the
result) and TVM's compiler. On aarch64 neither comes from PyPI in a usable
form: MXNet's wheel links the Arm Performance Libraries, which nobody ships,
so TVM's MXNet frontend cannot run there even though TVM's compiler loads.
So an x86_64 machine cross-compiles the three demo models
(``lis models build --target aarch64``), and the repository commits the
result with a manifest; ``lis models build`` on an aarch64 board installs it
instead of compiling.

The manifest (``manifest.json``) records, per model, the SHA-256 of the
committed weights it was built from (``modelkit.demo.source_digest``) and of
each file built. A bundle whose weights changed since is refused, never
served: ``check_bundle`` names what to rebuild, and an x86 test runs it.

Each model is verified on the machine that compiled it: the same model is also
compiled for that machine, and that twin is checked against MXNet (the
difference goes into the manifest). The aarch64 build itself runs only on
aarch64; the emulated suite (``make test-aarch64``) checks its outputs against
x86's.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from deployments.neo import host_machine
from vocabulary.errors import ArtifactError

__all__ = [
    "MANIFEST_FILE",
    "PREBUILT_MACHINES",
    "bundle_dir",
    "check_bundle",
    "file_digests",
    "install",
    "require_current",
    "write_manifest",
]

MANIFEST_FILE = "manifest.json"
# Machines lis ships prebuilt demo artifacts for -> the `lis compile --target` that builds them.
PREBUILT_MACHINES = {"aarch64": "aarch64"}
_REBUILD = "on an x86_64 machine with the compile extras, run `lis models build --target {}`"


def bundle_dir(models_dir: Path, machine: str) -> Path:
    """Where the committed artifacts for ``machine`` live."""
    return models_dir / machine


def file_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of each file of a built artifact, by name."""
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.iterdir()) if path.is_file()}


def write_manifest(bundle: Path, machine: str, models: dict[str, dict[str, Any]]) -> Path:
    """Record what each model in ``bundle`` was built from (``models``: name -> facts)."""
    entries = {name: {**facts, "files": file_digests(bundle / name)}
               for name, facts in sorted(models.items())}
    manifest = {"machine": machine, "built_on": host_machine(), "models": entries}
    path = bundle / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def _read_manifest(bundle: Path) -> dict[str, Any]:
    path = bundle / MANIFEST_FILE
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError) as error:
        raise ArtifactError(str(path), f"no readable manifest of the prebuilt demo models "
                            f"({error}); {_REBUILD.format(bundle.name)}") from error


def check_bundle(bundle: Path, weights: dict[str, str]) -> list[str]:
    """Every way ``bundle`` differs from the committed weights (name -> digest); [] if current."""
    manifest = _read_manifest(bundle)
    entries = manifest.get("models", {})
    problems = [f"{name}: not in {bundle}" for name in sorted(set(weights) - set(entries))]
    for name, digest in sorted(weights.items()):
        entry = entries.get(name)
        if entry is None:
            continue
        if entry.get("source_sha256") != digest:
            problems.append(f"{name}: built from other weights than models/{name} holds now")
        elif (bundle / name).is_dir() and file_digests(bundle / name) != entry.get("files"):
            problems.append(f"{name}: its files differ from the manifest's")
        elif not (bundle / name).is_dir():
            problems.append(f"{name}: the folder {bundle / name} is missing")
    return problems


def require_current(bundle: Path, weights: dict[str, str]) -> None:
    """Refuse a bundle that does not match the committed weights, saying how to rebuild it."""
    problems = check_bundle(bundle, weights)
    if problems:
        raise ArtifactError(str(bundle), "the prebuilt demo models are out of date ("
                            + "; ".join(problems) + "): " + _REBUILD.format(bundle.name))


def install(source: Path, target: Path) -> None:
    """Copy one prebuilt artifact into place atomically (a temporary folder, renamed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        shutil.copytree(source, scratch / target.name)
        if target.exists():
            shutil.rmtree(target)
        (scratch / target.name).rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
