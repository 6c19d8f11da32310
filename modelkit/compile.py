"""``lis compile``: what SageMaker Neo does, done locally.

Input: an MXNet checkpoint (``--symbol X-symbol.json --params X-0000.params``,
or the prefix ``X``), a SageMaker image-classification artifact (folder or
archive), or an ONNX model (``model.onnx``, as Neo takes them). Output: a
Neo/DLR artifact (``deployments.neo``) as a folder or ``.tar.gz``, with
``labels.txt``, ``preprocessing.json`` and ``lis-compile.json`` beside the model files.

The work happens in two child processes, because TVM and DLR each carry a TVM
runtime and crash when loaded into one process:

1. ``modelkit._tvm_build`` computes the source framework's outputs for a
   deterministic input (MXNet, imported before TVM; or ONNX Runtime), then
   builds the model with Relay;
2. ``modelkit._verify`` loads the result with the runtime that serves it (DLR;
   TVM's own for a Relay VM artifact), exactly as serving does, and runs the
   same input.

A model whose output shapes depend on its data (an ONNX detector ending in
NonMaxSuppression) cannot run on a graph executor: it is built for TVM's
Relay VM (``deployments.neo.write_vm_artifact``), which TVM's runtime serves.

With ``--rpc-tracker`` (``modelkit._device``) the first also runs the build on
the board, over TVM's RPC: an artifact for another machine is compared there.

This process compares the outputs and reports the largest difference. Stages are
shown as they happen; a failure is one ``CompileError`` line that points at
the full log, never a TVM traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from deployments.archive import store_artifact
from deployments.imaging import (
    CLASSIFIER_PREPROCESSING,
    DETECTOR_PREPROCESSING,
    Preprocessing,
    preprocess,
)
from deployments.labels import read_labels
from deployments.neo import (
    host_machine,
    library_machine,
    write_neo_artifact,
    write_vm_artifact,
)
from modelkit._child import Clock, Progress, run_child
from modelkit._compare import (
    VERIFY_TOLERANCE,
    compare_outputs,
    detection_count,
    pair_detections,
)
from modelkit._device import BOARDS, RemoteDevice, check_device_target
from modelkit._source import ONNX_SUFFIX, Source, resolve_source
from modelkit.shapes import detection_sample
from vocabulary.errors import ArtifactError, CompileError
from vocabulary.names import COMPILE_INFO_FILE, GRAPH_EXECUTOR, LIBRARY_FILE, VM_EXECUTOR

__all__ = [
    "DEFAULT_DETECTION_INPUT_SHAPE",
    "DEFAULT_TARGET",
    "DEFAULT_TUNE_MINUTES",
    "ONNX_SUFFIX",
    "PREPROCESSING_PRESETS",
    "VERIFY_SEED",
    "VERIFY_TOLERANCE",
    "CompileResult",
    "RemoteDevice",
    "Tuning",
    "add_arguments",
    "compare_outputs",
    "compile_model",
    "compiler_digest",
    "pair_detections",
    "run",
    "verification_input",
]

DEFAULT_TARGET = "x86_64"
# What decides the code `lis compile` makes of given weights and records, beside the records
# lis ships: its TVM half, its graph rewrites and tuning.
_COMPILER_SOURCES = ("_tvm_build.py", "_nms_top_k.py", "_x86_blocks.py", "_tune.py",
                     "_shipped.py")
# Neo's detection models (GluonCV SSD/YOLOv3) are trained at 512x512.
DEFAULT_DETECTION_INPUT_SHAPE = (1, 3, 512, 512)
# "imagenet" is the detector's transform under the name ONNX users know it by:
# RGB scaled to [0, 1], then ImageNet's mean and std (torchvision's models).
PREPROCESSING_PRESETS = {"classifier": CLASSIFIER_PREPROCESSING,
                         "detector": DETECTOR_PREPROCESSING,
                         "imagenet": DETECTOR_PREPROCESSING}
# The verification input: lis's own scene of shapes from this seed, resized to the
# model's input and preprocessed. A picture with edges and objects, not random
# pixels: on those the trained demo SSD, exported to ONNX with its
# NonMaxSuppression, detected nothing, so no detection was compared.
VERIFY_SEED = 0
# --tune's default budget, shared by the tasks no record knows yet.
DEFAULT_TUNE_MINUTES = 10.0


@dataclass(frozen=True)
class CompileResult:
    """What ``compile_model`` produced."""

    artifact: Path
    max_abs_diff: float | None   # None when verification was skipped
    target: str                  # the LLVM target string actually used
    seconds: float
    executor: str = GRAPH_EXECUTOR  # VM_EXECUTOR: for the Relay VM, TVM's runtime serves it
    verified_by: tuple[str, ...] = ()  # what ran it: "DLR", "TVM on 'pi4'" (an RPC board)


def _print_progress(line: str) -> None:
    print(line, flush=True)


def compiler_digest() -> str:
    """SHA-256 of ``lis compile``'s own sources and the records it ships: an artifact built
    when it was another is out of date (``lis models build``, the bench's artifacts)."""
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for path in [*(here / name for name in _COMPILER_SOURCES),
                 *sorted((here / "records").glob("*.log"))]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


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
    tuning: Tuning | None = None,
    shipped_records: bool = True,
    device: RemoteDevice | None = None,
    progress: Progress | None = _print_progress,
) -> CompileResult:
    """Compile an MXNet or ONNX model into a Neo/DLR artifact at ``output``.

    ``symbol_file`` is a symbol JSON (with ``params_file``), a checkpoint
    prefix (``params_file=None``), a SageMaker IC artifact folder/archive
    (``params_file=None``) or an ``.onnx`` file (``params_file=None``; its
    preprocessing defaults to ``"imagenet"``). ``softmax`` appends a softmax to
    the first output, for a classifier that ends in logits: the artifact then
    answers probabilities to any DLR caller, and is verified on them. ``input_shape``
    defaults to the artifact's ``model-shapes.json``, else 1x3x512x512. ``target`` is
    ``x86_64`` (this CPU, its ``-mcpu`` detected by LLVM), ``aarch64`` (cross-compiled,
    verified only on an RPC ``device``), a board of ``modelkit._device.BOARDS`` (aarch64
    for its CPU) or an explicit LLVM target string. ``preprocessing`` is
    ``"classifier"``, ``"detector"``, a JSON file or a ``Preprocessing``; it
    defaults to the IC artifact's own, else ``"detector"``. ``tuning``
    (``Tuning``) tunes the model's schedules, or applies known records; it is
    recorded in ``lis-compile.json``, as are the records lis ships for the target's CPU
    class (``modelkit._shipped``), which a graph-executor build applies to the layers they
    know unless ``shipped_records`` is False. A model with data-dependent output shapes
    (an ONNX detector ending in NonMaxSuppression) is built for TVM's Relay VM
    and verified on TVM's runtime (``CompileResult.executor``). ``device`` (a board
    registered with a TVM RPC tracker, ``modelkit._device``) is where ``--tune`` measures,
    and where a graph-executor build is also run and compared; ``target`` must then name
    the board's CPU.
    """
    started = time.monotonic()
    source = resolve_source(Path(symbol_file), Path(params_file) if params_file else None)
    shape = _input_shape(input_shape, source)
    check_device_target(device, target)
    job = _Job(source, shape, _preprocessing(preprocessing, source, shape),
               _labels(labels, source), target, softmax, tuning, shipped_records, device)
    if source.params is not None:
        _check_symbol(source.model)
    _check_tvm()
    output = Path(output).expanduser().resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    # The work folder sits beside the output and is kept, with its log, on failure.
    work = Path(tempfile.mkdtemp(prefix=f".lis-compile-{output.name}-", dir=output.parent))
    clock = Clock(started, progress or (lambda _line: None))
    try:
        resolved_target, executor, verified = _compile_in(work, job, output, verify, clock)
    except ArtifactError as error:
        raise CompileError(f"{error} (full log: {work / 'compile.log'})") from error
    shutil.rmtree(work, ignore_errors=True)
    return CompileResult(output, verified.max_diff if verified else None, resolved_target,
                         time.monotonic() - started, executor,
                         verified.runtimes if verified else ())


@dataclass(frozen=True)
class _Job:
    source: Source
    shape: tuple[int, ...]
    preprocessing: Preprocessing
    labels: tuple[str, ...] | None
    target: str
    softmax: bool = False
    tuning: Tuning | None = None
    shipped_records: bool = True
    device: RemoteDevice | None = None


@dataclass(frozen=True)
class Tuning:
    """``--tune``: AutoTVM schedules (``modelkit._tune``) for the build.

    ``minutes`` is the budget for the tasks no record knows yet (0: apply known
    records only); ``records`` are AutoTVM logs imported into the cache first;
    ``export`` receives the records the build applied; ``cache`` replaces
    ``$LIS_TUNING_CACHE`` (default ``~/.cache/lis/tuning``).
    """

    minutes: float = DEFAULT_TUNE_MINUTES
    records: tuple[Path, ...] = ()
    export: Path | None = None
    cache: Path | None = None

    def arguments(self) -> list[str]:
        imported = [item for path in self.records for item in ("--tune-records", str(path))]
        cache = ["--tuning-cache", str(self.cache)] if self.cache else []
        return ["--tune-minutes", str(self.minutes), *imported, *cache]


def _compile_in(work: Path, job: _Job, output: Path, verify: bool,
                clock: Clock) -> tuple[str, str, _Verified | None]:
    files = job.source.model.name + (f" + {job.source.params.name}" if job.source.params else "")
    clock.say(f"compiling {files}, input {job.shape}, target {job.target}"
              + (", softmax appended" if job.softmax else ""))
    np.save(work / "input.npy", verification_input(job.shape, job.preprocessing))
    resolved_target, executor, schedules = _build(job, work, clock, verify)
    info = {**_compile_info(job.source, job.shape, resolved_target), "executor": executor,
            **schedules}
    staged = _write_artifact(work, job, executor, info)
    if job.tuning and job.tuning.export:
        _export_records(work / "tuning.log", job.tuning.export, clock)
    verified = (_verify(staged, work, clock, job.source.framework, _runtime_name(executor),
                        job.device) if verify else None)
    if verified is not None:
        _record_verification(staged, verified)
    store_artifact(staged, output)
    clock.say(f"wrote {output}")
    return resolved_target, executor, verified


def _runtime_name(executor: str) -> str:
    """What runs the artifact, in messages: Relay VM artifacts only TVM's runtime."""
    return "the TVM runtime" if executor == VM_EXECUTOR else "DLR"


def _write_artifact(work: Path, job: _Job, executor: str, info: dict[str, object]) -> Path:
    built = work / "build"
    if executor == VM_EXECUTOR:
        return write_vm_artifact(work / "artifact", library=built / "compiled.so",
                                 code=built / "compiled.ro", labels=job.labels,
                                 preprocessing=job.preprocessing, compile_info=info)
    return write_neo_artifact(
        work / "artifact", library=built / "compiled.so", graph=built / "compiled_model.json",
        params=built / "compiled.params", labels=job.labels, preprocessing=job.preprocessing,
        compile_info=info)


# --- inputs --------------------------------------------------------------------------

def _input_shape(requested: Sequence[int] | None, source: Source) -> tuple[int, ...]:
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


def _preprocessing(requested: Preprocessing | str | Path | None, source: Source,
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
            source: Source) -> tuple[str, ...] | None:
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


def verification_input(shape: tuple[int, ...], spec: Preprocessing) -> np.ndarray:
    """The batch every build is verified on: lis's scene (``VERIFY_SEED``), resized to
    ``shape`` and preprocessed by ``spec``."""
    scene = detection_sample(seed=VERIFY_SEED, index=0).image
    image = cv2.resize(scene, (shape[3], shape[2]), interpolation=cv2.INTER_AREA)
    batch = preprocess(image, spec)
    return np.ascontiguousarray(np.repeat(batch, shape[0], axis=0))


def _compile_info(source: Source, shape: tuple[int, ...], target: str) -> dict[str, object]:
    files: dict[str, object] = ({"onnx": source.model.name} if source.params is None else
                                {"symbol": source.model.name, "params": source.params.name})
    return {**files, "input_name": source.input_name, "input_shape": list(shape),
            "target": target}


def _record_verification(artifact: Path, verified: _Verified) -> None:
    path = artifact / COMPILE_INFO_FILE
    info = json.loads(path.read_text())
    info["verified_max_abs_diff"] = verified.max_diff
    if verified.detections is not None:
        info["verified_detections"] = verified.detections
    if verified.device is not None:
        info["verified_on_device"] = verified.device
    path.write_text(json.dumps(info, indent=2))


def _failure(work: Path, error_file: str, what: str, returncode: int) -> CompileError:
    path = work / error_file
    summary = path.read_text().strip() if path.is_file() else ""
    if not summary:
        summary = (f"the {what} process died with signal {-returncode}" if returncode < 0
                   else f"the {what} process exited with status {returncode}")
    return CompileError(f"{what} failed: {summary} (full log: {work / 'compile.log'})")


def _export_records(records: Path, export: Path, clock: Clock) -> None:
    export = export.expanduser()
    export.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(records, export)
    count = len(records.read_text().splitlines())
    clock.say(f"exported {count} tuning record(s) to {export}")


def _build(job: _Job, work: Path, clock: Clock,
           verify: bool) -> tuple[str, str, dict[str, dict | None]]:
    """The resolved target, the executor the artifact needs, and what tuning did and the
    shipped records gave (``"tuning"``, ``"shipped_records"``)."""
    source = job.source
    model = (["--onnx", str(source.model), "--input-name", source.input_name]
             if source.params is None else
             ["--symbol", str(source.model), "--params", str(source.params)])
    arguments = [*model, "--input-shape", ",".join(map(str, job.shape)), "--target", job.target,
                 "--work", str(work), *(["--softmax"] if job.softmax else []),
                 *(job.tuning.arguments() if job.tuning else []),
                 *([] if job.shipped_records else ["--no-shipped-records"]),
                 *(job.device.arguments() if job.device else []),
                 *(["--run-on-device"] if job.device and verify else [])]
    returncode = run_child("modelkit._tvm_build", arguments, work / "compile.log", clock)
    if returncode != 0:
        raise _failure(work, "error.txt", "compile", returncode)
    result = json.loads((work / "result.json").read_text())
    return (str(result["target"]), str(result["executor"]),
            {"tuning": result["tuning"], "shipped_records": result["shipped_records"]})


@dataclass(frozen=True)
class _Verified:
    max_diff: float
    detections: int | None  # a detector's detections compared; None for a classifier
    runtimes: tuple[str, ...]  # what ran the artifact: "DLR", "TVM on 'pi4'"
    device: dict[str, object] | None = None  # the comparison on the RPC board, if any


def _verify(artifact: Path, work: Path, clock: Clock, framework: str, runtime: str,
            device: RemoteDevice | None) -> _Verified | None:
    """Compare with the source framework: here with ``runtime`` when the artifact is for
    this machine, and on the RPC board when the build ran there (``device.npz``)."""
    reference = _outputs(work / "reference.npz")
    differences: dict[str, float] = {}  # what ran it: its largest difference
    built_for = library_machine(artifact / LIBRARY_FILE)
    if built_for == host_machine():
        clock.say(f"verifying: loading the artifact with {runtime} in a fresh process")
        returncode = run_child("modelkit._verify",
                               ["--artifact", str(artifact), "--work", str(work)],
                               work / "compile.log", clock)
        if returncode != 0:
            raise _failure(work, "verify-error.txt", "verification", returncode)
        differences[runtime] = _compare(reference, _outputs(work / "dlr.npz"), framework,
                                        runtime, clock)
    elif device is None:
        clock.say(f"not verified: the artifact is for {built_for}, this machine is "
                  f"{host_machine()} (--rpc-tracker and --rpc-key run it on the board)")
    board = None
    if device is not None and (work / "device.npz").is_file():
        name = f"TVM on {device.key!r}"
        differences[name] = _compare(reference, _outputs(work / "device.npz"), framework,
                                     name, clock)
        board = {"rpc_key": device.key, "max_abs_diff": differences[name]}
    if not differences:
        return None
    detections = detection_count(reference)
    if detections == 0:
        clock.say(f"warning: {framework} found nothing on the verification scene, so only "
                  "the outputs' shapes were compared; check the artifact on your own images")
    return _Verified(max(differences.values()), detections, tuple(differences), board)


def _compare(reference: list[np.ndarray], actual: list[np.ndarray], framework: str,
             runtime: str, clock: Clock) -> float:
    max_diff = compare_outputs(reference, actual, framework=framework, runtime=runtime)
    detections = detection_count(reference)
    compared = "" if detections is None else f", {detections} detection(s)"
    clock.say(f"verified: {runtime} vs {framework} max abs difference {max_diff:.3g} "
              f"over {len(actual)} output(s){compared}")
    return max_diff


def _outputs(path: Path) -> list[np.ndarray]:
    with np.load(path) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


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
                             "aarch64-linux-gnu-g++; verified only on a board given with "
                             f"--rpc-tracker), a board ({', '.join(BOARDS)}: aarch64 for its "
                             "CPU), or an LLVM target string like 'llvm -mcpu=skylake'")
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
    tuning = parser.add_argument_group("tuning (AutoTVM; docs/models.md)")
    tuning.add_argument("--tune", action="store_true",
                        help="tune the model's convolutions on this CPU, or on the board of "
                             "--rpc-tracker; tasks with a known record ($LIS_TUNING_CACHE, "
                             "default ~/.cache/lis/tuning) cost no time")
    tuning.add_argument("--tune-minutes", type=float, metavar="N",
                        help=f"--tune's budget, split over the tasks not known yet "
                             f"(default {DEFAULT_TUNE_MINUTES:g})")
    tuning.add_argument("--tune-records", type=Path, action="append", default=[],
                        metavar="FILE",
                        help="AutoTVM records to import into the cache and apply (repeatable); "
                             "without --tune, the build uses known records and tunes nothing")
    tuning.add_argument("--export-records", type=Path, metavar="FILE",
                        help="write the tuning records the build applied to FILE")
    tuning.add_argument("--no-shipped-records", dest="shipped_records", action="store_false",
                        help="build the layers no record of this target knows with the "
                             "default schedules (lis's layout on x86 without AVX-512), not the "
                             "records lis ships for the CPU's class (x86 with AVX2, without "
                             "AVX-512)")
    board = parser.add_argument_group("the board, over TVM's RPC (docs/models.md)")
    board.add_argument("--rpc-tracker", metavar="HOST:PORT",
                       help="a TVM RPC tracker the board's server registers with (python -m "
                            "tvm.exec.rpc_server --tracker HOST:PORT --key KEY on the board): "
                            "--tune measures there, and the build is also verified there; "
                            "--target must name the board's CPU")
    board.add_argument("--rpc-key", metavar="KEY", help="the board's key at the tracker")


def _tuning(args: argparse.Namespace) -> Tuning | None:
    if args.tune_minutes is not None and not args.tune:
        raise CompileError("--tune-minutes is --tune's budget: give --tune too")
    if not (args.tune or args.tune_records or args.export_records):
        return None
    minutes = DEFAULT_TUNE_MINUTES if args.tune_minutes is None else args.tune_minutes
    if minutes < 0:
        raise CompileError(f"--tune-minutes {minutes:g}: must be 0 or more")
    return Tuning(minutes if args.tune else 0.0, tuple(args.tune_records), args.export_records)


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
                           softmax=args.softmax, tuning=_tuning(args),
                           shipped_records=args.shipped_records,
                           device=RemoteDevice.parse(args.rpc_tracker, args.rpc_key))
    framework = "ONNX Runtime" if Path(symbol).suffix.lower() == ONNX_SUFFIX else "MXNet"
    difference = ("not verified" if result.max_abs_diff is None
                  else f"{' and '.join(result.verified_by)} vs {framework} max abs difference "
                       f"{result.max_abs_diff:.3g}")
    print(f"compiled {result.artifact} for {result.target!r} in {result.seconds:.0f} s; "
          f"{difference}")
    return 0
