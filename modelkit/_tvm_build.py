"""The TVM half of ``lis compile``, run as ``python -m modelkit._tvm_build``.

It runs in its own process because TVM and DLR each carry a TVM runtime and
crash when loaded into one process. It talks to ``modelkit.compile`` through
files and stdout:

- stdout: one line per stage, ``STAGE <text>``, which the parent shows with
  the elapsed time; everything else (TVM's warnings) goes to the log;
- ``<work>/build/``: ``compiled.so``, ``compiled.params``, ``compiled_model.json``; or,
  for a model whose output shapes depend on its data (NonMaxSuppression), which
  the graph executor cannot run, ``compiled.so`` and ``compiled.ro``: TVM's
  Relay VM executable (its library and bytecode);
- ``<work>/reference.npz``: the source framework's outputs for ``<work>/input.npy``
  (MXNet's, or ONNX Runtime's for an ONNX model);
- ``<work>/result.json``: the resolved target, the executor (``graph`` or ``vm``), what
  tuning did (``modelkit._tune``) and what lis's shipped records gave (``modelkit._shipped``);
- ``<work>/tuning.log``: with tuning, the AutoTVM records the build applied;
- ``<work>/device.npz``: with ``--rpc-tracker``, the graph-executor build's outputs for
  ``<work>/input.npy``, run on the board (``modelkit._device``);
- ``<work>/error.txt``: on failure, one line saying what went wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from modelkit._device import BOARDS, RemoteDevice, linker, run_graph
from modelkit._shipped import shipped_records
from modelkit._tune import TuningFailure, TuningOptions, extract_tasks, tune
from vocabulary.errors import CompileError
from vocabulary.names import GRAPH_EXECUTOR, VM_EXECUTOR

# The TVM tuning log lookup would otherwise try the network.
os.environ.setdefault("TOPHUB_LOCATION", "NONE")

_INPUT_NAME = "data"
# What lis serves of a detector: class ids, scores, boxes in input pixels.
_DETECTOR_OUTPUTS = "class ids [1, K, 1], scores [1, K, 1], boxes [1, K, 4]"
_CROSS_COMPILERS = {"aarch64": "aarch64-linux-gnu-g++", "armv7l": "arm-linux-gnueabihf-g++"}


class BuildFailure(Exception):
    """A failure already summarised in one line."""


def _stage(text: str) -> None:
    print(f"STAGE {text}", flush=True)


def _load_checkpoint(symbol_file: str, params_file: str) -> tuple[Any, dict, dict]:
    import mxnet as mx  # noqa: PLC0415 - before tvm, always

    try:
        symbol = mx.sym.load(symbol_file)
    except mx.base.MXNetError as error:
        raise BuildFailure(f"cannot load symbol {symbol_file}: {_summary(error)}") from error
    try:
        saved = mx.nd.load(params_file)
    except mx.base.MXNetError as error:
        raise BuildFailure(f"cannot load params {params_file}: {_summary(error)}") from error
    if isinstance(saved, list):  # what nd.save wrote from a list (or an empty dict)
        if saved:
            raise BuildFailure(f"params {params_file} holds unnamed arrays, not a checkpoint")
        saved = {}
    arg = {k.split(":", 1)[1]: v for k, v in saved.items() if k.startswith("arg:")}
    aux = {k.split(":", 1)[1]: v for k, v in saved.items() if k.startswith("aux:")}
    if not arg and not aux:  # saved without prefixes (e.g. Gluon save_parameters)
        aux_names = set(symbol.list_auxiliary_states())
        arg = {k: v for k, v in saved.items() if k not in aux_names}
        aux = {k: v for k, v in saved.items() if k in aux_names}
    return symbol, arg, aux


def _reference(symbol: Any, arg: dict, aux: dict, batch: np.ndarray) -> list[np.ndarray]:
    import mxnet as mx  # noqa: PLC0415

    try:
        executor = symbol.simple_bind(mx.cpu(), grad_req="null", **{_INPUT_NAME: batch.shape})
    except mx.base.MXNetError as error:
        raise BuildFailure(f"the symbol does not bind for input {batch.shape}: "
                           f"{_summary(error)}") from error
    for name, array in executor.arg_dict.items():
        if name in arg:
            arg[name].copyto(array)
        elif name != _INPUT_NAME and not name.endswith("_label"):
            raise BuildFailure(f"the params have no weights for {name!r}")
    for name, array in executor.aux_dict.items():
        if name not in aux:
            raise BuildFailure(f"the params have no auxiliary state {name!r}")
        aux[name].copyto(array)
    outputs = executor.forward(is_train=False, **{_INPUT_NAME: batch})
    return [output.asnumpy() for output in outputs]


def _onnx_reference(path: str, input_name: str, batch: np.ndarray) -> list[np.ndarray]:
    import onnxruntime  # noqa: PLC0415 - before tvm, as MXNet

    try:
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return list(session.run(None, {input_name: batch}))
    except Exception as error:  # noqa: BLE001 - ONNX Runtime's errors have no common base
        raise BuildFailure(f"ONNX Runtime cannot run the model on input {batch.shape}: "
                           f"{_summary(error)}") from error


def _softmax(outputs: list[np.ndarray]) -> list[np.ndarray]:
    """The reference for ``--softmax``: the first output's last axis made probabilities."""
    logits = outputs[0].astype(np.float64)
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return [(exp / exp.sum(axis=-1, keepdims=True)).astype(outputs[0].dtype), *outputs[1:]]


def _resolve_target(target: str) -> tuple[str, str | None]:
    """(LLVM target string, cross compiler or None) for a ``--target`` value."""
    from tvm.target import codegen  # noqa: PLC0415

    if target == "x86_64":
        if os.uname().machine != "x86_64":
            return "llvm -mtriple=x86_64-linux-gnu", "x86_64-linux-gnu-g++"
        cpu = codegen.llvm_get_system_cpu() if hasattr(codegen, "llvm_get_system_cpu") else ""
        return (f"llvm -mcpu={cpu}" if cpu and cpu != "generic" else "llvm"), None
    if target == "aarch64":
        return "llvm -mtriple=aarch64-linux-gnu -mattr=+neon", _CROSS_COMPILERS["aarch64"]
    target = BOARDS.get(target, target)
    if _option(target, "-mcpu") == "native" and not _option(target, "-mtriple"):
        # LLVM's own spelling of "this CPU", which TVM would build as generic: name it.
        target = target.replace("-mcpu=native", f"-mcpu={codegen.llvm_get_system_cpu()}")
    _check_cpu(target)
    triple = _option(target, "-mtriple")
    arch = triple.split("-", 1)[0]
    if arch and arch != os.uname().machine:
        return target, _CROSS_COMPILERS.get(arch, f"{arch}-linux-gnu-g++")
    return target, None


def _option(target: str, name: str) -> str:
    return next((part.split("=", 1)[1] for part in target.split()
                 if part.startswith(f"{name}=")), "")


def _check_cpu(target: str) -> None:
    """TVM builds for ``-mcpu=generic`` when LLVM does not know the CPU named, and only logs
    it: a misspelt core would quietly lose its scheduling model and key records wrongly."""
    import tvm  # noqa: PLC0415
    from tvm.target import codegen  # noqa: PLC0415

    cpu = _option(target, "-mcpu")
    if not cpu:
        return
    try:
        known = list(codegen.llvm_get_cpu_archlist(tvm.target.Target(target)))
    except (tvm.TVMError, ValueError) as error:
        raise BuildFailure(f"--target {target!r}: not a target TVM accepts "
                           f"({_summary(error)})") from error
    if known and cpu not in known:
        close = difflib.get_close_matches(cpu, known, n=3)
        raise BuildFailure(f"--target {target!r}: LLVM {codegen.llvm_version_major()} knows no "
                           f"CPU {cpu!r} for {_option(target, '-mtriple') or 'this machine'}"
                           + (f" (close: {', '.join(close)})" if close else ""))


def _import_mxnet(symbol: Any, arg: dict, aux: dict, shape: tuple[int, ...]) -> tuple[Any, dict]:
    from tvm import relay  # noqa: PLC0415 - after mxnet

    return relay.frontend.from_mxnet(symbol, shape={_INPUT_NAME: shape}, arg_params=arg,
                                     aux_params=aux)


def _import_onnx(path: str, input_name: str, shape: tuple[int, ...]) -> tuple[Any, dict]:
    import onnx  # noqa: PLC0415
    from tvm import relay  # noqa: PLC0415

    model = onnx.load(path)
    _smallest_topk_as_largest(model)
    # Weights frozen as constants: the artifact's graph then has one input, the image.
    return relay.frontend.from_onnx(model, shape={input_name: shape},
                                    dtype="float32", freeze_params=True)


def _smallest_topk_as_largest(model: Any) -> None:
    """Rewrite each ``TopK(largest=0)`` of ``model`` as ``-TopK(largest=1)`` of ``-x``.

    TVM 0.19 imports an ascending TopK as a slice ending at INT64_MAX, which its
    DynamicToStatic pass then fails to fit in int32; MXNet's exporter writes one
    for ``box_nms`` (the NMS indices, sorted back into order).
    """
    from onnx import helper  # noqa: PLC0415

    nodes = []
    for node in model.graph.node:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "TopK" or attributes.get("largest", 1) != 0:
            nodes.append(node)
            continue
        negated, values = f"{node.output[0]}_lis_negated_in", f"{node.output[0]}_lis_negated"
        nodes += [helper.make_node("Neg", [node.input[0]], [negated]),
                  helper.make_node("TopK", [negated, *node.input[1:]],
                                   [values, *node.output[1:]], axis=attributes.get("axis", -1),
                                   largest=1, sorted=attributes.get("sorted", 1)),
                  helper.make_node("Neg", [values], [node.output[0]])]
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _with_softmax(mod: Any) -> Any:
    """``mod`` whose first output goes through a softmax over its last axis."""
    from tvm import relay  # noqa: PLC0415

    main = mod["main"]
    body = main.body
    if isinstance(body, relay.Tuple):
        body = relay.Tuple([relay.nn.softmax(body.fields[0], axis=-1), *body.fields[1:]])
    else:
        body = relay.nn.softmax(body, axis=-1)
    mod["main"] = relay.Function(main.params, body)
    return relay.transform.InferType()(mod)


@dataclass(frozen=True)
class _Schedules:
    """Where the build's schedules come from besides TVM's defaults."""

    tuning: TuningOptions | None   # --tune / --tune-records; None: no tuning
    shipped: bool                  # the records lis ships for the target's CPU class


def _build(load: Callable[[], tuple[Any, dict]], softmax: bool, target: str,
           cross_compiler: str | None, work: Path, schedules: _Schedules,
           reference: list[np.ndarray]) -> tuple[str, dict[str, dict | None]]:
    """Build into ``<work>/build``: the executor it needs, and what tuning did and the
    shipped records gave (``"tuning"``, ``"shipped_records"``: None where nothing)."""
    import tvm  # noqa: PLC0415 - after mxnet and onnxruntime

    from modelkit._nms_top_k import nms_top_k_first  # noqa: PLC0415 - imports TVM
    from modelkit._x86_blocks import lis_x86_layout  # noqa: PLC0415 - imports TVM

    _stage("importing the model into TVM Relay")
    try:
        mod, params = load()
    except tvm.error.OpNotImplemented as error:
        # TVM lists the operators on the following lines: keep them, on one line.
        raise BuildFailure(f"unsupported operator: {' '.join(str(error).split())}") from error
    if softmax:
        mod = _with_softmax(mod)
    mod, rewritten = nms_top_k_first(mod)
    for boxes, k in rewritten:
        _stage(f"NMS keeps the top {k} of {boxes} boxes: it sorts only those above the "
               f"{k}th best score")
    dynamic = _has_dynamic_shapes(mod)
    if dynamic:
        _check_detector_outputs(reference)
        if schedules.tuning:
            raise BuildFailure("--tune and --tune-records apply to models the graph executor "
                               "runs; this one needs the Relay VM (data-dependent output "
                               "shapes): compile it without them")
    with lis_x86_layout(target) as lanes:
        if lanes:
            isa = "AVX2 without AVX-512" if lanes == 8 else "x86 without AVX2"
            _stage(f"{isa}: layers without a record get lis's layout (channels in blocks of "
                   f"32), not TVM's (blocks of {lanes})")
        if dynamic:
            _build_vm(mod, params, target, cross_compiler, work)
            return VM_EXECUTOR, {"tuning": None, "shipped_records": None}
        tuned, shipped = _build_graph(mod, params, target, cross_compiler, work, schedules)
    return GRAPH_EXECUTOR, {"tuning": tuned, "shipped_records": shipped}


def _has_dynamic_shapes(mod: Any) -> bool:
    """Whether some value in ``mod`` has a shape known only when it runs (``?``)."""
    from tvm import ir, relay, tir  # noqa: PLC0415

    mod = relay.transform.InferType()(mod)
    found: list[bool] = []

    def visit(expr: Any) -> None:
        if found or isinstance(expr, ir.Op):  # an operator itself has no type
            return
        if _type_has_any(expr.checked_type, tir.Any):
            found.append(True)

    relay.analysis.post_order_visit(mod["main"], visit)
    return bool(found)


def _type_has_any(checked: Any, any_type: type) -> bool:
    if hasattr(checked, "fields"):  # a tuple type
        return any(_type_has_any(field, any_type) for field in checked.fields)
    return any(isinstance(dim, any_type) for dim in getattr(checked, "shape", ()))


def _check_detector_outputs(outputs: list[np.ndarray]) -> None:
    """A model the VM runs is a detector (NMS): its outputs must be what lis serves."""
    found = ", ".join(f"{list(o.shape)} {o.dtype}" for o in outputs)
    shapes = [o.shape for o in outputs]
    if (len(shapes) != 3 or any(len(s) != 3 or s[:2] != shapes[0][:2] for s in shapes)
            or [s[2] for s in shapes] != [1, 1, 4] or shapes[0][0] != 1):
        raise BuildFailure(f"the model's output shapes depend on its data (as NonMaxSuppression's "
                           f"do), so lis serves it as a detector, which must answer 3 outputs: "
                           f"{_DETECTOR_OUTPUTS}, any padding rows with class id -1; this one "
                           f"answers {len(outputs)}: {found}")


def _build_vm(mod: Any, params: dict, target: str, cross_compiler: str | None,
              work: Path) -> None:
    import tvm  # noqa: PLC0415
    from tvm import relay  # noqa: PLC0415

    _stage(f"building for TVM's Relay VM (data-dependent output shapes), target {target!r} "
           "(the longest stage)")
    with tvm.transform.PassContext(opt_level=3):
        executable = relay.vm.compile(mod, target=target, params=params)
    _stage("writing compiled.so, compiled.ro")
    code, library = executable.save()
    out = work / "build"
    out.mkdir(parents=True, exist_ok=True)
    _export_library(library, out / "compiled.so", cross_compiler)
    (out / "compiled.ro").write_bytes(code)


def _build_graph(mod: Any, params: dict, target: str, cross_compiler: str | None,
                 work: Path, schedules: _Schedules) -> tuple[dict | None, dict | None]:
    """Build with the records known for ``target``: what tuning did, what lis's shipped
    records gave (None where there were none to apply)."""
    import tvm  # noqa: PLC0415
    from tvm import relay  # noqa: PLC0415

    tuning = schedules.tuning
    own, summary = (_tune(mod, params, target, cross_compiler, tuning, work) if tuning
                    else ([], None))
    shipped, shipped_summary = (shipped_records(target, own) if schedules.shipped
                                else ([], None))
    _stage(f"building for target {target!r} (the longest stage)"
           + (f", with {len(own)} tuned schedule(s)" if tuning else "")
           + (f", and the records lis ships for {shipped_summary['class']} CPUs where a layer "
              "matches" if shipped_summary else ""))
    records = own + shipped
    used: set = set()
    context = (_applying(records, {inp.task.workload for inp, _ in shipped}, used)
               if tuning or records else contextlib.nullcontext())
    with context, tvm.transform.PassContext(opt_level=3):
        lib = relay.build(mod, target=target, params=params)
    if shipped_summary:
        shipped_summary["applied"] = len(used)
        _stage(f"{len(used)} layer(s) built with a record lis ships for "
               f"{shipped_summary['class']} CPUs (--no-shipped-records: without them)")
    _stage("writing compiled.so, compiled.params, compiled_model.json")
    out = work / "build"
    out.mkdir(parents=True, exist_ok=True)
    _export_library(lib.get_lib(), out / "compiled.so", cross_compiler)
    (out / "compiled_model.json").write_text(lib.get_graph_json())
    (out / "compiled.params").write_bytes(relay.save_param_dict(lib.get_params()))
    return summary, shipped_summary


def _applying(records: list, watched: set, used: set) -> Any:
    """AutoTVM's history-best context, noting in ``used`` each ``watched`` workload the
    build asked for and got: proof that a record was applied, not only offered."""
    from tvm import autotvm  # noqa: PLC0415

    class Applying(autotvm.task.ApplyHistoryBest):
        def _query_inside(self, target: Any, workload: Any) -> Any:
            config = super()._query_inside(target, workload)
            if config is not None and workload in watched:
                used.add(workload)
            return config

    return Applying(records)


def _tune(mod: Any, params: dict, target: str, cross_compiler: str | None,
          tuning: TuningOptions, work: Path) -> tuple[list, dict]:
    if tuning.minutes > 0 and cross_compiler is not None and tuning.device is None:
        raise BuildFailure(f"--tune measures on the CPU it tunes for, and {target!r} is not "
                           "this machine's: measure on the board with --rpc-tracker and "
                           "--rpc-key, or import its records with --tune-records "
                           "(docs/models.md)")
    from tvm import autotvm  # noqa: PLC0415

    records, summary = tune(extract_tasks(mod, params, target, _stage), target, tuning, _stage)
    (work / "tuning.log").write_text(
        "".join(autotvm.record.encode(inp, res) + "\n" for inp, res in records))
    return records, summary


def _export_library(library: Any, path: Path, cross_compiler: str | None) -> None:
    library.export_library(str(path), fcompile=linker(cross_compiler))


def _summary(error: BaseException) -> str:
    """One line from an MXNet/TVM error, skipping their C++ stack traces."""
    lines = [line.strip() for line in str(error).splitlines()]
    useful = [line for line in lines if line and not line.startswith(("Traceback", "Stack trace"))
              and not line[:1].isdigit() and not line.startswith(("File ", "[bt]", "at "))]
    text = next((line for line in useful if "Error" in line or "rror:" in line),
                useful[0] if useful else type(error).__name__)
    return text[:400]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m modelkit._tvm_build")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--symbol")
    model.add_argument("--onnx")
    parser.add_argument("--params")
    parser.add_argument("--input-name", default=_INPUT_NAME)
    parser.add_argument("--softmax", action="store_true")
    parser.add_argument("--input-shape", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--tune-minutes", type=float,
                        help="tune (0: known records only); without it, no tuning")
    parser.add_argument("--tune-records", type=Path, action="append", default=[])
    parser.add_argument("--tuning-cache", type=Path)
    parser.add_argument("--no-shipped-records", dest="shipped", action="store_false")
    parser.add_argument("--rpc-tracker")
    parser.add_argument("--rpc-key")
    parser.add_argument("--run-on-device", action="store_true")
    return parser.parse_args(argv)


def _main(args: argparse.Namespace) -> None:
    shape = tuple(int(d) for d in args.input_shape.split(","))
    batch = np.load(args.work / "input.npy")
    load: Callable[[], tuple[Any, dict]]
    if args.onnx:
        _stage("running ONNX Runtime on the verification input (reference outputs)")
        outputs = _onnx_reference(args.onnx, args.input_name, batch)
        load = partial(_import_onnx, args.onnx, args.input_name, shape)
    else:
        _stage("loading the MXNet checkpoint")
        symbol, arg, aux = _load_checkpoint(args.symbol, args.params)
        _stage("running MXNet on the verification input (reference outputs)")
        outputs = _reference(symbol, arg, aux, batch)
        load = partial(_import_mxnet, symbol, arg, aux, shape)
    np.savez(args.work / "reference.npz", *(_softmax(outputs) if args.softmax else outputs))
    target, cross_compiler = _resolve_target(args.target)
    device = RemoteDevice.parse(args.rpc_tracker, args.rpc_key)
    if device is not None:
        _stage(f"RPC board {device}: {device.servers()} server(s) registered")
        device.check_runs(target, cross_compiler)
        _stage(f"RPC board {device.key!r} runs code built for {target!r}")
    tuning = None if args.tune_minutes is None else TuningOptions(
        args.tune_minutes, tuple(args.tune_records),
        *([args.tuning_cache] if args.tuning_cache else []), device=device,
        cross_compiler=cross_compiler)
    executor, schedules = _build(load, args.softmax, target, cross_compiler, args.work,
                                 _Schedules(tuning, args.shipped), outputs)
    if device is not None and args.run_on_device:
        _run_on_device(device, executor, args.work, args.input_name, batch)
    (args.work / "result.json").write_text(json.dumps(
        {"target": target, "cross_compiler": cross_compiler, "executor": executor,
         **schedules}))


def _run_on_device(device: RemoteDevice, executor: str, work: Path, input_name: str,
                   batch: np.ndarray) -> None:
    """The verification input through the build on the board, for the parent to compare."""
    if executor != GRAPH_EXECUTOR:
        _stage(f"not run on {device.key!r}: a Relay VM artifact is verified on this machine "
               "only (TVM's RPC runs graph-executor builds)")
        return
    _stage(f"running the build on {device.key!r} (TVM's graph executor over RPC)")
    np.savez(work / "device.npz", *run_graph(device, work / "build", input_name, batch))


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        _main(args)
    except (BuildFailure, CompileError, TuningFailure) as failure:
        traceback.print_exc()  # the cause, in full, for the log
        (args.work / "error.txt").write_text(str(failure))
        return 1
    except Exception as error:  # noqa: BLE001 - reported as one line, logged in full
        traceback.print_exc()
        (args.work / "error.txt").write_text(f"{type(error).__name__}: {_summary(error)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
