"""The demo models, ready to serve: ``lis models build|list`` and ``demo_models()``.

The repository commits trained weights under ``models/`` (see
``modelkit.train``); this module turns them into what lis serves, under
``build/models/``:

- ``shapes-classifier``: the SageMaker image-classification artifact, copied
  from ``models/shapes-classifier`` (MXNet runs it as it is);
- ``shapes-ssd`` and ``shapes-yolo3``: the MXNet checkpoints compiled into
  Neo/DLR artifacts by ``modelkit.compile.compile_model`` (about a minute each).

The detectors are compiled with the AutoTVM records committed in
``models/tuning/<name>.log`` (``lis compile --tune-records``, no new trials):
tuned schedules where this CPU is the one they were tuned on, TVM's defaults
elsewhere. Each built folder carries ``labels.txt`` and ``preprocessing.json``.
A model is rebuilt only when it is missing or when the committed weights (or
records, or for a detector the compiler's sources: a new version of lis may
compile the same weights better) changed: the build records their SHA-256s in
``build/models/.<name>.source``.
Builds go to a temporary folder renamed into place, so an interrupted build
leaves no half artifact behind.

On aarch64, where MXNet cannot load and so nothing can be compiled from the
committed checkpoints, ``lis models build`` installs the artifacts an x86_64
machine cross-compiled for it and the repository commits under
``models/aarch64/`` (all three compiled, the classifier too: see
``modelkit.prebuilt``). ``lis models build --target aarch64`` on x86_64
rebuilds that bundle.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deployments.neo import host_machine
from modelkit import prebuilt
from vocabulary.names import LABELS_FILE, PREPROCESSING_FILE

__all__ = [
    "BUILD_DIR",
    "DEMO_MODELS",
    "MODELS_DIR",
    "DemoModel",
    "add_arguments",
    "build_bundle",
    "build_model",
    "demo_models",
    "model_state",
    "run",
    "source_digest",
    "tuning_records",
]

REPO = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO / "models"
TUNING_DIR = MODELS_DIR / "tuning"
BUILD_DIR = REPO / "build" / "models"
DETECTOR_INPUT_SHAPE = (1, 3, 512, 512)
# Files of a committed model folder that do not change what is built.
_NOT_WEIGHTS = frozenset({"README.md"})

Progress = Callable[[str], None]


@dataclass(frozen=True)
class DemoModel:
    """One demo model: its committed source and what it is built into."""

    name: str
    kind: str  # "classifier" (SageMaker IC, copied) or "detector" (compiled to DLR)

    @property
    def source(self) -> Path:
        return MODELS_DIR / self.name

    def target(self, build_dir: Path = BUILD_DIR) -> Path:
        return build_dir / self.name

    def stamp(self, build_dir: Path = BUILD_DIR) -> Path:
        return build_dir / f".{self.name}.source"


DEMO_MODELS = (
    DemoModel("shapes-classifier", "classifier"),
    DemoModel("shapes-ssd", "detector"),
    DemoModel("shapes-yolo3", "detector"),
)


def source_digest(folder: Path) -> str:
    """SHA-256 over the names and bytes of a committed model folder (README excluded)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name not in _NOT_WEIGHTS):
        digest.update(path.name.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _prebuilt_bundle() -> Path | None:
    """The committed artifacts this machine installs instead of compiling; None on x86_64."""
    machine = host_machine()
    return prebuilt.bundle_dir(MODELS_DIR, machine) if machine in prebuilt.PREBUILT_MACHINES \
        else None


def _built_from(model: DemoModel) -> Path:
    # What a build copies or compiles: the committed weights, or on a machine that
    # cannot compile them, the committed artifact built for it.
    bundle = _prebuilt_bundle()
    return bundle / model.name if bundle is not None else model.source


def model_state(model: DemoModel, build_dir: Path = BUILD_DIR) -> str:
    """``ready``, ``stale`` (weights, records or compiler changed since the build),
    ``missing`` or ``no weights``."""
    source = _built_from(model)
    if not source.is_dir():
        return "no weights"
    stamp = model.stamp(build_dir)
    if not model.target(build_dir).is_dir() or not stamp.is_file():
        return "missing"
    return "ready" if stamp.read_text().strip() == _build_digest(model) else "stale"


def tuning_records(model: DemoModel) -> Path | None:
    """The committed AutoTVM records a detector is compiled with, if any."""
    path = TUNING_DIR / f"{model.name}.log"
    return path if model.kind == "detector" and path.is_file() else None


def _build_digest(model: DemoModel) -> str:
    """What a build depends on: the source's digest, and for a detector compiled here the
    records it compiles with and the compiler."""
    digest = source_digest(_built_from(model))
    if _prebuilt_bundle() is not None or model.kind != "detector":
        return digest   # copied as it is (its manifest names the weights it was built from)
    records = tuning_records(model)
    if records is not None:
        digest += " " + hashlib.sha256(records.read_bytes()).hexdigest()
    from modelkit.compile import compiler_digest

    return digest + " " + compiler_digest()


def _print(line: str) -> None:
    print(line, flush=True)


def build_model(model: DemoModel, build_dir: Path = BUILD_DIR,
                progress: Progress | None = _print) -> Path:
    """Build one model from its committed weights (unconditionally); return its folder."""
    from vocabulary.errors import ArtifactError

    say = progress or (lambda _line: None)
    if not model.source.is_dir():
        raise ArtifactError(str(model.source), "the committed weights are missing "
                            "(retrain them with `make train-models`)")
    build_dir.mkdir(parents=True, exist_ok=True)
    digest = _build_digest(model)
    scratch = Path(tempfile.mkdtemp(prefix=f".{model.name}-", dir=build_dir))
    try:
        staged = scratch / model.name
        if _prebuilt_bundle() is not None:
            say(f"{model.name}: installing the artifact prebuilt for {host_machine()}")
            prebuilt.install(_built_from(model), staged)
        elif model.kind == "classifier":
            say(f"{model.name}: writing the SageMaker IC artifact")
            _copy_classifier(model.source, staged)
        else:
            say(f"{model.name}: compiling to Neo/DLR (about a minute)")
            _compile_detector(model, staged, progress)
        _replace(staged, model.target(build_dir))
        model.stamp(build_dir).write_text(digest + "\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    say(f"{model.name}: built {model.target(build_dir)}")
    return model.target(build_dir)


def _copy_classifier(source: Path, staged: Path) -> None:
    from deployments.sagemaker_ic import read_classifier_artifact

    read_classifier_artifact(source)  # refuse a broken committed artifact here, not at serving
    shutil.copytree(source, staged, ignore=shutil.ignore_patterns(*_NOT_WEIGHTS))


def _compile_detector(model: DemoModel, staged: Path, progress: Progress | None,
                      target: str | None = None, verify: bool = True) -> float | None:
    from modelkit.compile import DEFAULT_TARGET, Tuning, compile_model

    source = model.source
    records = tuning_records(model)
    # A cache of the build's own, gone with it: the user's cache is left alone.
    tuning = None if records is None else Tuning(0.0, (records,),
                                                 cache=staged.parent / "tuning-cache")
    return compile_model(
        source / f"{model.name}-symbol.json", source / f"{model.name}-0000.params", staged,
        input_shape=DETECTOR_INPUT_SHAPE, labels=source / LABELS_FILE,
        preprocessing=source / PREPROCESSING_FILE, target=target or DEFAULT_TARGET,
        verify=verify, tuning=tuning, progress=progress).max_abs_diff


def _compile_classifier(model: DemoModel, staged: Path, progress: Progress | None,
                        target: str | None = None, verify: bool = True) -> float | None:
    # The SageMaker IC layout as it is: shape, labels and preprocessing come from it.
    from modelkit.compile import DEFAULT_TARGET, compile_model

    return compile_model(model.source, None, staged, target=target or DEFAULT_TARGET,
                         verify=verify, progress=progress).max_abs_diff


def _replace(staged: Path, target: Path) -> None:
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    staged.rename(target)


def demo_models(build_dir: Path = BUILD_DIR, *, force: bool = False,
                progress: Progress | None = _print) -> dict[str, Path]:
    """Every demo model ready to serve: name -> artifact folder (built if missing or stale)."""
    say = progress or (lambda _line: None)
    bundle = _prebuilt_bundle()
    if bundle is not None:  # never serve artifacts built from other weights than these
        prebuilt.require_current(bundle, _weights_digests())
    ready = {}
    for model in DEMO_MODELS:
        state = model_state(model, build_dir)
        if force or state != "ready":
            say(f"{model.name}: {'rebuilding' if force else state}")
            build_model(model, build_dir, progress)
        ready[model.name] = model.target(build_dir)
    say("models ready: " + " ".join(str(p) for p in ready.values()))
    return ready


def _weights_digests() -> dict[str, str]:
    return {model.name: source_digest(model.source) for model in DEMO_MODELS}


# --- the prebuilt bundle for a machine that cannot compile ------------------------------

def build_bundle(machine: str, out: Path, progress: Progress | None = _print) -> Path:
    """Cross-compile every demo model for ``machine`` into ``out``, with its manifest.

    Each model is also compiled for this machine and that twin verified against
    MXNet here; the manifest records the difference. Returns the manifest's path.
    """
    from vocabulary.errors import InvalidArgument, LisError

    if machine not in prebuilt.PREBUILT_MACHINES:
        raise InvalidArgument("--target", machine, " or ".join(prebuilt.PREBUILT_MACHINES))
    if host_machine() in prebuilt.PREBUILT_MACHINES:
        raise LisError(f"this {host_machine()} machine cannot compile the demo models (no "
                       f"MXNet here): build the {machine} bundle on an x86_64 machine")
    say = progress or (lambda _line: None)
    out.mkdir(parents=True, exist_ok=True)
    facts = {}
    for model in DEMO_MODELS:
        say(f"{model.name}: compiling for {machine}, and for {host_machine()} to verify it")
        facts[model.name] = _build_for(model, machine, out, progress)
    path = prebuilt.write_manifest(out, machine, facts)
    say(f"prebuilt demo models for {machine}: {path}")
    return path


def _build_for(model: DemoModel, machine: str, out: Path,
               progress: Progress | None) -> dict[str, object]:
    compile_one = _compile_classifier if model.kind == "classifier" else _compile_detector
    scratch = Path(tempfile.mkdtemp(prefix=f".{model.name}-", dir=out))
    try:
        twin_diff = compile_one(model, scratch / "twin", progress)  # this machine, verified
        compile_one(model, scratch / model.name, progress,
                    target=prebuilt.PREBUILT_MACHINES[machine], verify=False)
        _replace(scratch / model.name, out / model.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"kind": model.kind, "source_sha256": source_digest(model.source),
            "verified": {"twin_target": host_machine(), "reference": "MXNet",
                         "max_abs_diff": twin_diff}}


# --- lis models ----------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = sub.add_parser("build", help="build the demo artifacts that are missing or stale")
    build.add_argument("--force", action="store_true", help="rebuild even if up to date")
    build.add_argument("--build-dir", type=Path, default=None,
                       help=f"where to build (default: {BUILD_DIR}; with --target, "
                            f"{MODELS_DIR}/<target>, the committed bundle)")
    build.add_argument("--target", choices=sorted(prebuilt.PREBUILT_MACHINES),
                       help="cross-compile the bundle a machine that cannot compile installs "
                            "(run on x86_64; see docs/devices.md)")
    listing = sub.add_parser("list", help="show each demo model and whether it is built")
    listing.add_argument("--build-dir", type=Path, default=BUILD_DIR, help="where to look")


def run(args: argparse.Namespace) -> int:
    if args.action == "build" and args.target:
        build_bundle(args.target, args.build_dir or prebuilt.bundle_dir(MODELS_DIR, args.target))
        return 0
    if args.action == "build":
        demo_models(args.build_dir or BUILD_DIR, force=args.force)
        return 0
    for model in DEMO_MODELS:
        print(f"{model.name:<18} {model_state(model, args.build_dir):<10} "
              f"{model.target(args.build_dir)}  (weights: {model.source})")
    return 0
