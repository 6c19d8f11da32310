"""Compiled vs framework: does ``lis compile`` beat MXNet on the CPU it compiles for?

``python -m benchmarks.compile`` (``make bench-compile``) measures, in one run on
this CPU with the same threads, the p50 latency at batch 1 of two GluonCV
detectors with random weights (no download):

- MXNet 1.9 (oneDNN), hybridized with static alloc and static shape;
- the artifact ``lis compile`` makes without tuning;
- the artifact ``lis compile --tune-records`` makes from the committed records
  in ``models/tuning/`` (no new trials: they apply where the CPU matches the
  target they were tuned for, else the tuned artifact is the untuned one and
  the section says so).

Verdicts: tuned ≤ 0.7× MXNet's p50, untuned ≤ 1.0×. ``compile_section()``
returns the markdown section; artifacts are cached under ``build/bench/compile/``
and rebuilt when the compiler or the records change.

``python -m benchmarks.compile --tune-minutes N`` tunes the models first
(N minutes each, on top of the committed records) and rewrites their records
for this CPU's target, keeping other targets' (one file holds each CPU's).

``python -m benchmarks.compile --target "llvm -mcpu=core-avx2" --mxnet-isa AVX2``
emulates a CPU with fewer instructions on this one: the artifacts are
compiled for that target, MXNet's oneDNN is capped with ``DNNL_MAX_CPU_ISA``,
and they are measured in alternating rounds (``--rounds``), since this
machine's speed drifts by 10-25 % over minutes. Where lis ships records for the
target's CPU class (``modelkit._shipped``), the artifact built without them
(``--no-shipped-records``) is measured beside ``lis compile``'s. With ``--tune-minutes N``
the artifact tuned for that target is measured too, its records kept likewise.
``--models`` measures other GluonCV detectors than the reference two.

Each measurement runs in a fresh process, so MXNet's and TVM's thread pools
never share one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.turns import in_turn
from deployments.imaging import DETECTOR_PREPROCESSING
from modelkit.compile import DEFAULT_TARGET, compiler_digest, verification_input

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "build" / "bench" / "compile"
RECORDS_DIR = ROOT / "models" / "tuning"
# (GluonCV name, input size): the reference SSD, and the YOLOv3 with the same
# backbone at its usual 416 (darknet53 would take most of the bench's time).
MODELS = (("ssd_512_mobilenet1.0_voc", 512), ("yolo3_mobilenet1.0_voc", 416))
THREADS = 2
WARMUP = 5
RUNS = 30
TUNED_MAX = 0.7     # the tuned artifact's p50 over MXNet's
UNTUNED_MAX = 1.0
# What decides the compiled code: an artifact is rebuilt when one of these changes.
# Beside lis compile's own (`compiler_digest`): what decides whether an artifact verifies.
_VERIFIER = "modelkit/_compare.py"
ROUNDS = 3          # alternating MXNet / artifact rounds of a capped comparison


@dataclass(frozen=True)
class Row:
    model: str
    size: int
    mxnet_ms: float
    untuned_ms: float
    tuned_ms: float
    tuned_tasks: str   # "39/39": tasks with a record, of the model's tasks
    made: str          # how the records were made: "12 min budget, 848 trials in 13.2 min"


def records_file(model: str) -> Path:
    return RECORDS_DIR / f"{model}.log"


def _made_file(model: str) -> Path:
    """How the committed records were made, per target: budget, trials, seconds, CPU."""
    return RECORDS_DIR / f"{model}.json"


def _record_target(line: str) -> str:
    """The target an AutoTVM record (one JSON line) was tuned for."""
    return str(json.loads(line)["input"][0])


def _keep_other_records(model: str, before: list[str], target: str) -> None:
    """Put back the records an export for ``target`` replaced but does not hold.

    A records file holds each CPU's records (a build applies only its own target's):
    tuning on a second machine adds its records beside the first one's. It also holds the
    model's at each size it was tuned at: tuning YOLOv3 at 512 keeps its records at 416.
    """
    fresh = records_file(model).read_text().splitlines(keepends=True)
    exported = {_workload(line) for line in fresh if line.strip()}
    others = [line for line in before if line.strip() and (
        _record_target(line) != target or _workload(line) not in exported)]
    records_file(model).write_text("".join(others + fresh))


def _write_made(model: str, size: int, tuning: dict, target: str) -> None:
    entries = [entry for entry in _made_entries(model)
               if (entry.get("target"), entry.get("size", _reference_size(model)))
               != (target, size)]
    entries.append({**tuning, "target": target, "size": size, "cpu": _cpu()})
    _made_file(model).write_text(json.dumps(entries, indent=2) + "\n")


def _reference_size(model: str) -> int | None:
    return dict(MODELS).get(model)


def _made_entries(model: str) -> list[dict]:
    if not _made_file(model).is_file():
        return []
    return list(json.loads(_made_file(model).read_text()))


def scene_batch(size: int) -> np.ndarray:
    """What every runtime is verified and timed on: ``lis compile``'s verification scene."""
    return verification_input((1, 3, size, size),
                              DETECTOR_PREPROCESSING.with_overrides(width=size, height=size))


def _export(model: str, size: int) -> Path:
    """The GluonCV network with random weights (seed 0), calibrated on the scene at this size
    so that it detects something there (``modelkit.reference_nets``): its checkpoint prefix,
    exported once per recipe."""
    folder = BENCH_DIR / model
    prefix = folder / f"{model}-{size}"
    stamp = prefix.with_name(f"{prefix.name}.stamp")
    recipe = weights_recipe()
    if stamp.is_file() and stamp.read_text() == recipe:
        return prefix
    from modelkit.reference_nets import random_gluoncv  # noqa: PLC0415

    net = random_gluoncv(model, scene_batch(size), seed=0)
    folder.mkdir(parents=True, exist_ok=True)
    net.export(str(prefix), epoch=0)
    stamp.write_text(recipe)
    return prefix


def weights_recipe() -> str:
    """The reference weights' recipe: the calibration, and the scene it runs on (lis compile's
    verification input): a bench rebuilds what it made from them when this changes."""
    digest = hashlib.sha256()
    for name in ("modelkit/reference_nets.py", "modelkit/compile.py"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def _stamp(model: str, size: int, tuned: bool, target: str = DEFAULT_TARGET) -> str:
    digest = hashlib.sha256(f"{target} {size} {weights_recipe()} {compiler_digest()}".encode())
    digest.update((ROOT / _VERIFIER).read_bytes())
    if tuned and records_file(model).is_file():
        digest.update(records_file(model).read_bytes())
    return digest.hexdigest()


def _artifact(model: str, size: int, tuned: bool, tune_minutes: float = 0.0,
              target: str = DEFAULT_TARGET, shipped: bool = True) -> tuple[Path, dict]:
    """The compiled artifact (cached by its stamp) and its ``lis-compile.json``.

    ``shipped=False``: built without the records lis ships for the CPU's class
    (``--no-shipped-records``): where no record of the target's own applies, lis's AVX2
    layout (``modelkit._x86_blocks``), TVM's defaults on other CPUs.
    """
    from modelkit.compile import Tuning, compile_model  # noqa: PLC0415

    prefix = _export(model, size)
    slug = "" if target == DEFAULT_TARGET else "-" + "".join(
        c if c.isalnum() else "_" for c in target)
    sized = "" if size == _reference_size(model) else f"-{size}"
    out = BENCH_DIR / (f"{model}{sized}-{'tuned' if tuned else 'untuned'}{slug}"
                       + ("" if shipped else "-tvm-defaults"))
    stamp = out.with_name(out.name + ".stamp")
    if tune_minutes or not (out.is_dir() and stamp.is_file()
                            and stamp.read_text() == _stamp(model, size, tuned, target)):
        shutil.rmtree(out, ignore_errors=True)
        records = records_file(model)
        before = records.read_text().splitlines(keepends=True) if records.is_file() else []
        tuning = Tuning(tune_minutes, (records,) if records.is_file() else (),
                        export=records if tune_minutes else None) if tuned else None
        # A cache of the bench's own: the committed records, and what it tunes.
        os.environ["LIS_TUNING_CACHE"] = str(BENCH_DIR / "tuning-cache")
        compile_model(Path(f"{prefix}-symbol.json"), Path(f"{prefix}-0000.params"), out,
                      input_shape=(1, 3, size, size), target=target, preprocessing="detector",
                      tuning=tuning, shipped_records=shipped, progress=_progress)
        stamp.write_text(_stamp(model, size, tuned, target))
    info = json.loads((out / "lis-compile.json").read_text())
    if tune_minutes:
        canonical = _canonical_target(info["target"])
        _keep_other_records(model, before, canonical)
        _write_made(model, size, info["tuning"], canonical)
    return out, info


def ship(target: str) -> str:
    """Move ``target``'s records from ``models/tuning/*.log`` into the file lis ships for its
    CPU class (``modelkit/records/``).

    A moved record replaces the shipped one of its layer, not only when it measured faster:
    the two were tuned by different compilers (in lis's AVX2 layout or TVM's), and a faster
    layer in another layout costs more in the transforms around it than it gains. Of the moved
    records, the faster one of a layer two models share is kept.
    """
    from modelkit._shipped import cpu_class, packaged_file  # noqa: PLC0415

    canonical = _canonical_target(target)
    kind = cpu_class(canonical)
    if kind is None:
        raise SystemExit(f"{target!r}: lis ships no records for its CPU class "
                         "(modelkit/_shipped.py)")
    shipped = packaged_file(kind)
    fresh: dict[str, tuple[float, str]] = {}
    moved = 0
    for log in sorted(RECORDS_DIR.glob("*.log")):
        kept = []
        for line in log.read_text().splitlines():
            if _record_target(line) == canonical:
                _keep_faster(fresh, line)
                moved += 1
            else:
                kept.append(line)
        if kept:
            log.write_text("".join(f"{line}\n" for line in kept))
        else:
            log.unlink()  # all its records ship now; its <model>.json says how they were made
    best = {_workload(line): line
            for line in (shipped.read_text().splitlines() if shipped.is_file() else [])}
    replaced = len(best.keys() & fresh.keys())
    best.update((workload, line) for workload, (_, line) in fresh.items())
    shipped.write_text("".join(f"{line}\n" for line in best.values()))
    return (f"moved {moved} record(s) of `{canonical}` into {shipped}: {len(fresh)} layers, "
            f"{replaced} of them replacing a shipped record; {len(best)} layers in all")


def _workload(line: str) -> str:
    """The layer an AutoTVM record (one JSON line) is for: its task and arguments."""
    return json.dumps(json.loads(line)["input"][1:3])


def _keep_faster(best: dict[str, tuple[float, str]], line: str) -> None:
    """``line``'s record in ``best`` (by workload) unless a faster one is there."""
    workload = _workload(line)
    cost = statistics.mean(json.loads(line)["result"][0])
    if workload not in best or cost < best[workload][0]:
        best[workload] = (cost, line)


def _canonical_target(target: str) -> str:
    import tvm  # noqa: PLC0415

    return str(tvm.target.Target(target))


def _progress(line: str) -> None:
    print(f"  {line}", file=sys.stderr, flush=True)


def _p50(kind: str, path: Path, size: int, mxnet_isa: str | None = None) -> float:
    """p50 in ms, measured in a fresh process with THREADS threads.

    ``mxnet_isa`` caps the instructions MXNet's oneDNN uses (``DNNL_MAX_CPU_ISA``: ``AVX2``).
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), TVM_NUM_THREADS=str(THREADS),
               MXNET_CPU_WORKER_NTHREADS="1", PYTHONPATH=str(ROOT),
               **({"DNNL_MAX_CPU_ISA": mxnet_isa} if mxnet_isa else {}))
    output = subprocess.run([sys.executable, "-m", "benchmarks.compile", "--measure", kind,
                             str(path), str(size)], env=env, check=True, capture_output=True,
                            text=True).stdout
    return float(output.strip().splitlines()[-1])


def _measure(kind: str, path: Path, size: int) -> float:
    batch = scene_batch(size)
    run = _mxnet_call(path, batch) if kind == "mxnet" else _dlr_call(path, batch)
    for _ in range(WARMUP):
        run()
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def _mxnet_call(prefix: Path, batch: object) -> object:
    import mxnet as mx  # noqa: PLC0415

    net = mx.gluon.SymbolBlock.imports(str(prefix) + "-symbol.json", ["data"],
                                       str(prefix) + "-0000.params")
    net.hybridize(static_alloc=True, static_shape=True)
    data = mx.nd.array(batch)
    return lambda: [output.asnumpy() for output in net(data)]


def _dlr_call(folder: Path, batch: object) -> object:
    from deployments.dlr_runtime import DLRRuntime  # noqa: PLC0415 - as serving loads it

    runtime = DLRRuntime(folder, threads=THREADS)
    runtime.load()
    return lambda: runtime.predict(batch)


def measure(tune_minutes: float = 0.0) -> list[Row]:
    """One row per model: MXNet, untuned and tuned p50, measured one after the other."""
    rows = []
    for model, size in MODELS:
        prefix = _export(model, size)
        untuned, _ = _artifact(model, size, tuned=False)
        tuned, info = _artifact(model, size, tuned=True, tune_minutes=tune_minutes)
        tuning = info.get("tuning") or {}
        rows.append(Row(model, size, _p50("mxnet", prefix, size), _p50("dlr", untuned, size),
                        _p50("dlr", tuned, size),
                        f"{tuning.get('tasks_with_records', 0)}/{tuning.get('tasks', '?')}",
                        _made(model)))
    return rows


def capped_section(target: str, mxnet_isa: str | None, rounds: int = ROUNDS,
                   tune_minutes: float = 0.0,
                   models: tuple[tuple[str, int], ...] = MODELS) -> str:
    """The markdown table of MXNet (ISA capped) vs the artifacts for ``target``: built without
    the records lis ships, as ``lis compile`` builds it without ``--tune`` (with the
    records lis ships for the CPU's class, where any applies), and with ``tune_minutes``
    tuned for it too (its records kept in ``models/tuning/`` beside other targets').

    Each round measures each in a fresh process, the order turning round after round, so
    that the machine's drift falls on all; the table gives the median and range of the
    rounds' p50s.
    """
    tuned = tune_minutes > 0
    lines = [f"Machine: {_cpu()}, {os.cpu_count()} cores; MXNet with DNNL_MAX_CPU_ISA="
             f"{mxnet_isa or '(none)'}, artifacts for `{target}`"
             + (f", tuned {tune_minutes:g} min per model in this run" if tuned else "")
             + f"; batch 1, {THREADS} threads, p50 of {RUNS} runs after {WARMUP} warm-up runs, "
             f"{rounds} alternating rounds, each runtime in a fresh process.",
             "",
             "| model | input | MXNet p50, median (range) | without shipped records "
             "(`--no-shipped-records`) | shipped records used | `lis compile` (no `--tune`) "
             "| `lis compile` / MXNet |" + (" tuned | tuned / MXNet |" if tuned else ""),
             "|---|---|---|---|---|---|---|" + ("---|---|" if tuned else "")]
    for model, size in models:
        untuned, info = _artifact(model, size, tuned=False, target=target)
        shipped = info.get("shipped_records") or {}
        kinds = [("mxnet", _export(model, size)), ("dlr", untuned)]
        if shipped.get("applied"):
            kinds.append(("dlr", _artifact(model, size, tuned=False, target=target,
                                           shipped=False)[0]))
        if tuned:
            kinds.append(("dlr", _artifact(model, size, tuned=True, tune_minutes=tune_minutes,
                                           target=target)[0]))
        times = _rounds(kinds, size, mxnet_isa, rounds)
        mxnet, default = times[0], times[1]
        bare = times[2] if shipped.get("applied") else None
        cells = [_spread(mxnet),
                 f"{_spread(bare)}, {_ratio(bare, mxnet)}" if bare else "the same artifact",
                 f"{shipped['applied']} layers" if shipped else "none (no class)",
                 _spread(default), _verdict(_ratio_of(default, mxnet), UNTUNED_MAX)]
        if tuned:
            cells += [_spread(times[-1]), _verdict(_ratio_of(times[-1], mxnet), TUNED_MAX)]
        lines.append(f"| {model} | {size} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def _rounds(kinds: list[tuple[str, Path]], size: int, mxnet_isa: str | None,
            rounds: int) -> list[list[float]]:
    """Each runtime's p50 per round, the order turning round after round."""
    times: list[list[float]] = [[] for _ in kinds]
    for turn in range(rounds):
        for index in in_turn(range(len(kinds)), turn):
            kind, path = kinds[index]
            times[index].append(_p50(kind, path, size, mxnet_isa))
    return times


def _ratio_of(times: list[float], reference: list[float]) -> float:
    return statistics.median(times) / statistics.median(reference)


def _ratio(times: list[float], reference: list[float]) -> str:
    return f"{_ratio_of(times, reference):.2f}x MXNet"


def _spread(times: list[float]) -> str:
    return f"{statistics.median(times):.1f} ms ({min(times):.1f}-{max(times):.1f})"


def _made(model: str) -> str:
    """How each target's records were made, the targets joined."""
    made = [f"`{entry['target']}`{_at(model, entry)}: {entry['minutes']:g} min budget, "
            f"{entry['trials']} trials in {entry['seconds'] / 60:.1f} min on {entry['cpu']}"
            for entry in _made_entries(model)]
    return "; ".join(made) or "no records"


def _at(model: str, entry: dict) -> str:
    size = entry.get("size", _reference_size(model))
    return "" if size == _reference_size(model) else f" at {size}x{size}"


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _verdict(ratio: float, limit: float) -> str:
    return f"{ratio:.2f}x {'met' if ratio <= limit else 'NOT met'} (≤ {limit}x)"


def _tuned_verdict(row: Row) -> str:
    """The tuned artifact's verdict; none where no record applied (it is the untuned one)."""
    if row.tuned_tasks.startswith("0/"):
        return (f"{row.tuned_ms / row.mxnet_ms:.2f}x, no verdict: no record for this CPU's "
                f"target (`python -m benchmarks.compile --tune-minutes N` makes them)")
    return _verdict(row.tuned_ms / row.mxnet_ms, TUNED_MAX)


def compile_section(tune_minutes: float = 0.0) -> str:
    """The markdown section "## Compiled vs framework" (about 10 min with cold caches)."""
    rows = measure(tune_minutes)
    lines = [
        "## Compiled vs framework",
        "",
        f"Machine: {_cpu()}, {os.cpu_count()} cores; batch 1, {THREADS} threads, p50 of "
        f"{RUNS} runs after {WARMUP} warm-up runs, each runtime in a fresh process. "
        "GluonCV networks with random weights calibrated on `lis compile`'s verification "
        "scene (`modelkit.reference_nets`), each artifact verified against MXNet on it and "
        "every runtime timed on it; the tuned artifact applies the AutoTVM records "
        "committed in `models/tuning/` ("
        + (f"retuned first in this run, {tune_minutes:g} min per model" if tune_minutes
           else "no new trials in this run") + "). The records were made:",
        "",
        *(f"- {row.model}: {row.made}" for row in rows),
        "",
        "| model | input | MXNet (hybridized, static alloc) | untuned artifact | tuned artifact "
        "| tasks with records | untuned / MXNet | tuned / MXNet |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.model} | {row.size} | {row.mxnet_ms:.1f} ms | {row.untuned_ms:.1f} ms | "
            f"{row.tuned_ms:.1f} ms | {row.tuned_tasks} | "
            f"{_verdict(row.untuned_ms / row.mxnet_ms, UNTUNED_MAX)} | "
            f"{_tuned_verdict(row)} |")
    return "\n".join(lines) + "\n"


def _models(text: str) -> tuple[tuple[str, int], ...]:
    try:
        return tuple((name, int(size)) for name, size in
                     (item.rsplit(":", 1) for item in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME:SIZE[,NAME:SIZE...]") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tune-minutes", type=float, default=0.0,
                        help="tune each model this long first, and rewrite models/tuning/ "
                        "(with --target: for that target, and add a tuned column)")
    parser.add_argument("--target", help="compare MXNet with the untuned artifact for this "
                        "LLVM target only (e.g. 'llvm -mcpu=core-avx2'), in alternating rounds")
    parser.add_argument("--mxnet-isa", help="with --target: cap MXNet's oneDNN at this ISA "
                        "(DNNL_MAX_CPU_ISA, e.g. AVX2)")
    parser.add_argument("--rounds", type=int, default=ROUNDS,
                        help=f"with --target: alternating rounds (default {ROUNDS})")
    parser.add_argument("--models", type=_models, default=MODELS, metavar="NAME:SIZE,...",
                        help="with --target: other GluonCV detectors, e.g. "
                             "ssd_512_mobilenet1.0_coco:512 (default: the reference two)")
    parser.add_argument("--ship", metavar="TARGET",
                        help="move TARGET's records from models/tuning/ into the file lis "
                             "ships for its CPU class, and stop")
    parser.add_argument("--measure", nargs=3, metavar=("KIND", "PATH", "SIZE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        kind, path, size = args.measure
        print(f"{_measure(kind, Path(path), int(size)):.3f}")
        return 0
    if args.ship:
        print(ship(args.ship))
        return 0
    if args.target:
        print(capped_section(args.target, args.mxnet_isa, args.rounds, args.tune_minutes,
                             args.models))
        return 0
    print(compile_section(args.tune_minutes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
