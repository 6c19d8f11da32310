"""The demo models, ready to serve: ``lis models build|list`` and ``demo_models()``.

The repository commits trained weights under ``models/`` (see
``modelkit.train``); this module turns them into what lis serves, under
``build/models/``:

- ``shapes-classifier``: the SageMaker image-classification artifact, copied
  from ``models/shapes-classifier`` (MXNet runs it as it is);
- ``shapes-ssd`` and ``shapes-yolo3``: the MXNet checkpoints compiled into
  Neo/DLR artifacts by ``modelkit.compile.compile_model`` (about a minute each).

Each built folder carries ``labels.txt`` and ``preprocessing.json``. A model is
rebuilt only when it is missing or when the committed weights changed: the
build records the SHA-256 of the source folder in ``build/models/.<name>.source``.
Builds go to a temporary folder renamed into place, so an interrupted build
leaves no half artifact behind.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vocabulary.names import LABELS_FILE, PREPROCESSING_FILE

__all__ = [
    "BUILD_DIR",
    "DEMO_MODELS",
    "MODELS_DIR",
    "DemoModel",
    "add_arguments",
    "build_model",
    "demo_models",
    "model_state",
    "run",
    "source_digest",
]

REPO = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO / "models"
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


def model_state(model: DemoModel, build_dir: Path = BUILD_DIR) -> str:
    """``ready``, ``stale`` (weights changed since the build), ``missing`` or ``no weights``."""
    if not model.source.is_dir():
        return "no weights"
    stamp = model.stamp(build_dir)
    if not model.target(build_dir).is_dir() or not stamp.is_file():
        return "missing"
    return "ready" if stamp.read_text().strip() == source_digest(model.source) else "stale"


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
    digest = source_digest(model.source)
    scratch = Path(tempfile.mkdtemp(prefix=f".{model.name}-", dir=build_dir))
    try:
        staged = scratch / model.name
        if model.kind == "classifier":
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


def _compile_detector(model: DemoModel, staged: Path, progress: Progress | None) -> None:
    from modelkit.compile import compile_model

    source = model.source
    compile_model(source / f"{model.name}-symbol.json", source / f"{model.name}-0000.params",
                  staged, input_shape=DETECTOR_INPUT_SHAPE, labels=source / LABELS_FILE,
                  preprocessing=source / PREPROCESSING_FILE, progress=progress)


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
    ready = {}
    for model in DEMO_MODELS:
        state = model_state(model, build_dir)
        if force or state != "ready":
            say(f"{model.name}: {'rebuilding' if force else state}")
            build_model(model, build_dir, progress)
        ready[model.name] = model.target(build_dir)
    say("models ready: " + " ".join(str(p) for p in ready.values()))
    return ready


# --- lis models ----------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = sub.add_parser("build", help="build the demo artifacts that are missing or stale")
    build.add_argument("--force", action="store_true", help="rebuild even if up to date")
    build.add_argument("--build-dir", type=Path, default=BUILD_DIR, help="where to build")
    listing = sub.add_parser("list", help="show each demo model and whether it is built")
    listing.add_argument("--build-dir", type=Path, default=BUILD_DIR, help="where to look")


def run(args: argparse.Namespace) -> int:
    if args.action == "build":
        demo_models(args.build_dir, force=args.force)
        return 0
    for model in DEMO_MODELS:
        print(f"{model.name:<18} {model_state(model, args.build_dir):<10} "
              f"{model.target(args.build_dir)}  (weights: {model.source})")
    return 0
