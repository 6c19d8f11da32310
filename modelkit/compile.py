"""``lis compile``: what SageMaker Neo does, done locally.

Input: an MXNet checkpoint (``--symbol X-symbol.json --params X-0000.params``,
or the prefix ``X``), a SageMaker image-classification artifact (folder or
archive), or an ONNX model (``model.onnx``, as Neo takes them). Output: a Neo/DLR artifact (``deployments.neo``) as a folder or
``.tar.gz``, with ``labels.txt``, ``preprocessing.json`` and
``lis-compile.json`` beside the model files.

The work happens in two child processes, because TVM and DLR each carry a TVM
runtime and crash when loaded into one process:

1. ``modelkit._tvm_build`` computes the source framework's outputs for a
   deterministic input (MXNet, imported before TVM; or ONNX Runtime), then
   builds the model with Relay;
2. ``modelkit._verify`` loads the result with DLR, exactly as serving does,
   and runs the same input.

This process compares the two and reports the largest difference. Stages are
shown as they happen; a failure is one ``CompileError`` line that points at
the full log, never a TVM traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deployments.archive import is_archive, store_artifact
from deployments.imaging import (
    CLASSIFIER_PREPROCESSING,
    DETECTOR_PREPROCESSING,
    Preprocessing,
    preprocess,
    read_preprocessing,
)
from deployments.labels import read_labels
from deployments.neo import (
    host_machine,
    library_machine,
    read_neo_artifact,
    write_neo_artifact,
)
from deployments.sagemaker_ic import read_classifier_artifact, read_input_shape
from modelkit._child import Clock, Progress, run_child
from vocabulary.errors import ArtifactError, CompileError
from vocabulary.names import COMPILE_INFO_FILE, SHAPES_FILE

__all__ = [
    "DEFAULT_DETECTION_INPUT_SHAPE",
    "DEFAULT_TARGET",
    "ONNX_SUFFIX",
    "PREPROCESSING_PRESETS",
    "VERIFY_SEED",
    "VERIFY_TOLERANCE",
    "CompileResult",
    "add_arguments",
    "compare_outputs",
    "compile_model",
    "pair_detections",
    "run",
]

DEFAULT_TARGET = "x86_64"
# Neo's detection models (GluonCV SSD/YOLOv3) are trained at 512x512.
DEFAULT_DETECTION_INPUT_SHAPE = (1, 3, 512, 512)
# "imagenet" is the detector's transform under the name ONNX users know it by:
# RGB scaled to [0, 1], then ImageNet's mean and std (torchvision's models).
PREPROCESSING_PRESETS = {"classifier": CLASSIFIER_PREPROCESSING,
                         "detector": DETECTOR_PREPROCESSING,
                         "imagenet": DETECTOR_PREPROCESSING}
ONNX_SUFFIX = ".onnx"
# The verification input is a random image from this seed, preprocessed.
VERIFY_SEED = 0
# Verification fails above this difference, relative to each output's scale
# (max(1, largest value)): 1e-3 on probabilities, half a pixel on 512-px boxes.
VERIFY_TOLERANCE = 1e-3


@dataclass(frozen=True)
class CompileResult:
    """What ``compile_model`` produced."""

    artifact: Path
    max_abs_diff: float | None   # None when verification was skipped
    target: str                  # the LLVM target string actually used
    seconds: float


@dataclass(frozen=True)
class _Source:
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


def _print_progress(line: str) -> None:
    print(line, flush=True)


def compile_model(
    symbol_file: Path,
    params_file: Path | None,
    output: Path,
    *,
    input_shape: Sequence[int] | None = None,
    target: str = DEFAULT_TARGET,
    labels: Sequence[str] | Path | None = None,
    preprocessing: Preprocessing | str | Path | None = None,
    verify: bool = True,
    softmax: bool = False,
    progress: Progress | None = _print_progress,
) -> CompileResult:
    """Compile an MXNet or ONNX model into a Neo/DLR artifact at ``output``.

    ``symbol_file`` is a symbol JSON (with ``params_file``), a checkpoint
    prefix (``params_file=None``), a SageMaker IC artifact folder/archive
    (``params_file=None``) or an ``.onnx`` file (``params_file=None``; its
    preprocessing defaults to ``"imagenet"``). ``softmax`` appends a softmax to
    the first output, for a classifier that ends in logits: the artifact then
    answers probabilities to any DLR caller, and is verified on them. ``input_shape`` defaults to the artifact's
    ``model-shapes.json``, else 1x3x512x512. ``target`` is ``x86_64`` (this
    CPU, its ``-mcpu`` detected by LLVM), ``aarch64`` (cross-compiled, not
    verifiable here) or an explicit LLVM target string. ``preprocessing`` is
    ``"classifier"``, ``"detector"``, a JSON file or a ``Preprocessing``; it
    defaults to the IC artifact's own, else ``"detector"``.
    """
    started = time.monotonic()
    source = _resolve_source(Path(symbol_file), Path(params_file) if params_file else None)
    shape = _input_shape(input_shape, source)
    job = _Job(source, shape, _preprocessing(preprocessing, source, shape),
               _labels(labels, source), target, softmax)
    if source.params is not None:
        _check_symbol(source.model)
    _check_tvm()
    output = Path(output).expanduser().resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    # The work folder sits beside the output and is kept, with its log, on failure.
    work = Path(tempfile.mkdtemp(prefix=f".lis-compile-{output.name}-", dir=output.parent))
    clock = Clock(started, progress or (lambda _line: None))
    try:
        resolved_target, max_diff = _compile_in(work, job, output, verify, clock)
    except ArtifactError as error:
        raise CompileError(f"{error} (full log: {work / 'compile.log'})") from error
    shutil.rmtree(work, ignore_errors=True)
    return CompileResult(output, max_diff, resolved_target, time.monotonic() - started)


@dataclass(frozen=True)
class _Job:
    source: _Source
    shape: tuple[int, ...]
    preprocessing: Preprocessing
    labels: tuple[str, ...] | None
    target: str
    softmax: bool = False


def _compile_in(work: Path, job: _Job, output: Path, verify: bool,
                clock: Clock) -> tuple[str, float | None]:
    files = job.source.model.name + (f" + {job.source.params.name}" if job.source.params else "")
    clock.say(f"compiling {files}, input {job.shape}, target {job.target}"
              + (", softmax appended" if job.softmax else ""))
    np.save(work / "input.npy", _verification_input(job.shape, job.preprocessing))
    resolved_target = _build(job, work, clock)
    built = work / "build"
    staged = write_neo_artifact(
        work / "artifact", library=built / "compiled.so", graph=built / "compiled_model.json",
        params=built / "compiled.params", labels=job.labels, preprocessing=job.preprocessing,
        compile_info=_compile_info(job.source, job.shape, resolved_target))
    max_diff = _verify(staged, work, clock, job.source.framework) if verify else None
    if max_diff is not None:
        _record_difference(staged, max_diff)
    store_artifact(staged, output)
    clock.say(f"wrote {output}")
    return resolved_target, max_diff


# --- inputs --------------------------------------------------------------------------

def _resolve_source(symbol: Path, params: Path | None) -> _Source:
    if params is None and symbol.suffix.lower() == ONNX_SUFFIX:
        return _onnx_source(symbol)
    if params is not None:
        return _Source(symbol, params, _shape_beside(symbol), None, None)
    if symbol.is_dir() or is_archive(symbol):
        try:
            artifact = read_classifier_artifact(symbol)
        except ArtifactError as error:
            raise CompileError(str(error)) from error
        return _Source(artifact.symbol_file, artifact.params_file, artifact.input_shape,
                       artifact.labels, read_preprocessing(artifact.directory),
                       is_classifier=True)
    return _checkpoint(symbol)


def _checkpoint(prefix: Path) -> _Source:
    """``X`` -> ``X-symbol.json`` and the highest-epoch ``X-NNNN.params``."""
    symbol = prefix.with_name(f"{prefix.name}-symbol.json")
    pattern = re.compile(rf"^{re.escape(prefix.name)}-(\d+)\.params$")
    epochs = sorted((int(m.group(1)), p) for p in prefix.parent.glob(f"{prefix.name}-*.params")
                    if (m := pattern.match(p.name)))
    if not symbol.is_file() or not epochs:
        raise CompileError(f"{prefix} is not a SageMaker IC artifact nor a checkpoint prefix "
                           f"({symbol.name} and {prefix.name}-NNNN.params); or pass "
                           "--symbol and --params")
    return _Source(symbol, epochs[-1][1], _shape_beside(symbol), None, None)


def _onnx_source(path: Path) -> _Source:
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
    return _Source(path, None, shape, None, None, input_name=inputs[0].name)


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


def _input_shape(requested: Sequence[int] | None, source: _Source) -> tuple[int, ...]:
    known = source.input_shape
    if requested:
        shape = tuple(int(d) for d in requested)
        if known is not None and len(known) == len(shape) and any(
                k is not None and k != d for k, d in zip(known, shape)):
            raise CompileError(f"--input-shape {shape} contradicts the model's own input "
                               f"{_shape_text(known)}")
    elif known is not None and None in known:
        raise CompileError(f"the model's input {source.input_name!r} is "
                           f"{_shape_text(known)}: give its size with --input-shape N,C,H,W")
    elif known is not None:
        shape = tuple(int(d) for d in known if d is not None)
    else:
        shape = DEFAULT_DETECTION_INPUT_SHAPE
    if len(shape) != 4 or min(shape) <= 0:
        raise CompileError(f"input shape {shape} must be 4 positive integers N,C,H,W")
    return shape


def _shape_text(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _preprocessing(requested: Preprocessing | str | Path | None, source: _Source,
                   shape: tuple[int, ...]) -> Preprocessing:
    if isinstance(requested, Preprocessing):
        spec = requested
    elif requested is None:
        # ONNX: "imagenet", as the detector; SageMaker IC: the classifier's.
        spec = source.preprocessing or (CLASSIFIER_PREPROCESSING if source.is_classifier
                                        else DETECTOR_PREPROCESSING)
    elif str(requested) in PREPROCESSING_PRESETS:
        spec = PREPROCESSING_PRESETS[str(requested)]
    else:
        spec = _preprocessing_file(Path(requested))
    # The file describes what the compiled model takes: its own size.
    return spec.with_overrides(width=shape[3], height=shape[2])


def _preprocessing_file(path: Path) -> Preprocessing:
    try:
        return Preprocessing.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as error:
        raise CompileError(f"--preprocessing {path}: expected 'classifier', 'detector', "
                           f"'imagenet' or a readable preprocessing JSON file ({error})") from error


def _labels(requested: Sequence[str] | Path | None,
            source: _Source) -> tuple[str, ...] | None:
    if requested is None:
        return source.labels
    if isinstance(requested, (str, Path)):
        path = Path(requested)
        labels = read_labels(path)
        if labels is None:
            raise CompileError(f"--labels {path}: no such file")
        return labels
    return tuple(requested)


def _check_symbol(symbol: Path) -> None:
    """Catch a broken symbol file here, before MXNet prints a C++ trace about it."""
    try:
        graph = json.loads(symbol.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CompileError(f"{symbol}: not a valid MXNet symbol JSON ({error})") from error
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
        raise CompileError(f"{symbol}: not an MXNet symbol (no 'nodes' list)")


def _check_tvm() -> None:
    if importlib.util.find_spec("tvm") is None:
        raise CompileError("TVM is not installed: install the compile extra "
                           "(pip install -r requirements-compile.txt, or make models)")


def _verification_input(shape: tuple[int, ...], spec: Preprocessing) -> np.ndarray:
    image = np.random.RandomState(VERIFY_SEED).randint(0, 256, (shape[2], shape[3], 3),
                                                       dtype=np.uint8)
    batch = preprocess(image, spec)
    return np.ascontiguousarray(np.repeat(batch, shape[0], axis=0))


def _compile_info(source: _Source, shape: tuple[int, ...], target: str) -> dict[str, object]:
    files: dict[str, object] = ({"onnx": source.model.name} if source.params is None else
                                {"symbol": source.model.name, "params": source.params.name})
    return {**files, "input_shape": list(shape), "target": target}


def _record_difference(artifact: Path, max_diff: float) -> None:
    path = artifact / COMPILE_INFO_FILE
    info = json.loads(path.read_text())
    info["verified_max_abs_diff"] = max_diff
    path.write_text(json.dumps(info, indent=2))


def _failure(work: Path, error_file: str, what: str, returncode: int) -> CompileError:
    path = work / error_file
    summary = path.read_text().strip() if path.is_file() else ""
    if not summary:
        summary = (f"the {what} process died with signal {-returncode}" if returncode < 0
                   else f"the {what} process exited with status {returncode}")
    return CompileError(f"{what} failed: {summary} (full log: {work / 'compile.log'})")


def _build(job: _Job, work: Path, clock: Clock) -> str:
    source = job.source
    model = (["--onnx", str(source.model), "--input-name", source.input_name]
             if source.params is None else
             ["--symbol", str(source.model), "--params", str(source.params)])
    arguments = [*model, "--input-shape", ",".join(map(str, job.shape)), "--target", job.target,
                 "--work", str(work), *(["--softmax"] if job.softmax else [])]
    returncode = run_child("modelkit._tvm_build", arguments, work / "compile.log", clock)
    if returncode != 0:
        raise _failure(work, "error.txt", "compile", returncode)
    return str(json.loads((work / "result.json").read_text())["target"])


def _verify(artifact: Path, work: Path, clock: Clock, framework: str) -> float | None:
    built_for = library_machine(read_neo_artifact(artifact).library)
    if built_for != host_machine():
        clock.say(f"not verified: the artifact is for {built_for}, this machine is "
                  f"{host_machine()}")
        return None
    clock.say("verifying: loading the artifact with DLR in a fresh process")
    returncode = run_child("modelkit._verify", ["--artifact", str(artifact), "--work", str(work)],
                            work / "compile.log", clock)
    if returncode != 0:
        raise _failure(work, "verify-error.txt", "verification", returncode)
    reference = _outputs(work / "reference.npz")
    actual = _outputs(work / "dlr.npz")
    max_diff = compare_outputs(reference, actual, framework=framework)
    clock.say(f"verified: DLR vs {framework} max abs difference {max_diff:.3g} "
              f"over {len(actual)} output(s)")
    return max_diff


def _outputs(path: Path) -> list[np.ndarray]:
    with np.load(path) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def compare_outputs(reference: list[np.ndarray], actual: list[np.ndarray],
                    tolerance: float = VERIFY_TOLERANCE, framework: str = "MXNet") -> float:
    """Largest absolute difference; ``CompileError`` if they disagree.

    A detector's outputs (class ids, scores, boxes) are compared only on the
    rows MXNet filled (class id >= 0): the rest is padding. Each of those rows
    is compared with its twin in DLR's (``pair_detections``), whose class id
    must be equal.
    """
    if [o.shape for o in reference] != [o.shape for o in actual]:
        raise CompileError(f"verification failed: DLR output shapes {[o.shape for o in actual]}"
                           f" differ from {framework}'s {[o.shape for o in reference]}")
    if _is_detection(reference):
        reference, actual = _detection_rows(reference, actual, framework)
    worst = 0.0
    for expected, got in zip(reference, actual):
        if expected.size == 0:
            continue
        diff = float(np.max(np.abs(expected.astype(np.float64) - got)))
        if diff > tolerance * max(1.0, float(np.max(np.abs(expected)))):
            raise CompileError(f"verification failed: DLR and {framework} outputs differ by "
                               f"{diff:.3g}")
        worst = max(worst, diff)
    return worst


def _is_detection(outputs: list[np.ndarray]) -> bool:
    return (len(outputs) == 3 and outputs[0].ndim == 3 and outputs[0].shape[-1] == 1
            and outputs[2].shape[-1] == 4)


def _detection_rows(reference: list[np.ndarray], actual: list[np.ndarray],
                    framework: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    valid = reference[0][..., 0] >= 0
    expected, got = [o[valid] for o in reference], [o[valid] for o in actual]
    twins = pair_detections(expected[0][:, 0], expected[1][:, 0], got[0][:, 0], got[1][:, 0])
    got = [o[twins] for o in got]
    if not np.array_equal(expected[0], got[0]):
        raise CompileError(f"verification failed: DLR and {framework} detect different class "
                           "ids")
    return expected[1:], got[1:]


def pair_detections(reference_ids: np.ndarray, reference_scores: np.ndarray, ids: np.ndarray,
                    scores: np.ndarray, tolerance: float = VERIFY_TOLERANCE) -> np.ndarray:
    """For each reference detection in turn, the index of its twin among ``ids``/``scores``.

    Both lists come sorted by score, but two detections whose scores differ by
    less than the tolerance may come in either order (a compiled YOLOv3
    swapped a pair 7e-6 apart). The twin is the nearest unused detection of
    the same class within the tolerance, else the one in the same place, which
    the caller's checks then report.
    """
    unused = list(range(len(ids)))
    twins = []
    for position, (class_id, score) in enumerate(zip(reference_ids, reference_scores)):
        candidates = [i for i in unused
                      if ids[i] == class_id and abs(float(scores[i]) - float(score)) <= tolerance]
        if candidates:
            twin = min(candidates, key=lambda i: abs(i - position))
        else:
            twin = position if position in unused else unused[0]
        unused.remove(twin)
        twins.append(twin)
    return np.asarray(twins, dtype=np.intp)


# --- command line ----------------------------------------------------------------

def _shape_argument(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N,C,H,W, e.g. 1,3,512,512")
    return shape


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?", type=Path,
                        help="a SageMaker image-classification artifact (folder, .tar.gz, "
                             ".zip), an MXNet checkpoint prefix (X for X-symbol.json + "
                             "X-NNNN.params) or an ONNX model (X.onnx)")
    parser.add_argument("--symbol", type=Path, help="MXNet symbol JSON (with --params)")
    parser.add_argument("--params", type=Path, help="MXNet .params file (with --symbol)")
    parser.add_argument("--input-shape", type=_shape_argument,
                        help="N,C,H,W (default: the ONNX model's own, model-shapes.json, "
                             "else 1,3,512,512)")
    parser.add_argument("--output", "-o", type=Path, required=True,
                        help="the artifact to write: a folder, or a .tar.gz/.zip file")
    parser.add_argument("--target", default=DEFAULT_TARGET,
                        help="x86_64 (this CPU; -mcpu detected), aarch64 (cross-compiled with "
                             "aarch64-linux-gnu-g++, not verified), or an LLVM target string "
                             "like 'llvm -mcpu=skylake'")
    parser.add_argument("--labels", type=Path, help="class names, one per line")
    parser.add_argument("--preprocessing",
                        help="classifier | detector | imagenet | FILE.json (default: the IC "
                             "artifact's, else detector; imagenet is the detector's transform)")
    parser.add_argument("--softmax", action="store_true",
                        help="append a softmax to the first output, in the artifact itself "
                             "(a classifier that ends in logits)")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip loading the result with DLR and comparing with the source "
                             "framework (MXNet or ONNX Runtime)")


def run(args: argparse.Namespace) -> int:
    if args.symbol or args.params:
        if not (args.symbol and args.params) or args.source:
            raise CompileError("give --symbol with --params, or a SOURCE, not both")
        symbol, params = args.symbol, args.params
    elif args.source:
        symbol, params = args.source, None
    else:
        raise CompileError("nothing to compile: give a SOURCE, or --symbol and --params")
    result = compile_model(symbol, params, args.output, input_shape=args.input_shape,
                           target=args.target, labels=args.labels,
                           preprocessing=args.preprocessing, verify=args.verify,
                           softmax=args.softmax)
    framework = "ONNX Runtime" if Path(symbol).suffix.lower() == ONNX_SUFFIX else "MXNet"
    difference = ("not verified" if result.max_abs_diff is None
                  else f"DLR vs {framework} max abs difference {result.max_abs_diff:.3g}")
    print(f"compiled {result.artifact} for {result.target!r} in {result.seconds:.0f} s; "
          f"{difference}")
    return 0
