"""Tuning for ``lis compile --tune``: AutoTVM schedules, measured on this CPU or on a
board over TVM's RPC (``--rpc-tracker``, ``modelkit._device``).

It runs inside the TVM child (``modelkit._tvm_build``). The model's
convolutions and dense layers become AutoTVM tasks; each task not already
known gets an equal share of what is left of the time budget (a task's last
batch of trials may overrun it; the tasks after it get less), starting from
TVM's own default schedule (so a task's record is never one measured slower)
and then the schedules that keep the default's data layout (``_Proposals``
says why). Each task ends with one progress line.

Records are kept in a cache, one AutoTVM log per target
(``$LIS_TUNING_CACHE``, default ``~/.cache/lis/tuning/``), holding the best
record of each tuned workload. A task whose workload and target are already
in the cache, or in a file given with ``--tune-records``, costs no trials: a
recompile, or another model with the same layers, starts from what is known.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelkit._device import RemoteDevice, linker

__all__ = ["CACHE_ENV", "DEFAULT_CACHE", "Record", "TuningFailure", "TuningOptions",
           "best_by_workload", "cache_file", "extract_tasks", "merge_records", "read_records",
           "record_cost", "records_for", "tune"]

CACHE_ENV = "LIS_TUNING_CACHE"
DEFAULT_CACHE = Path("~/.cache/lis/tuning")
# The operators worth tuning: they hold nearly all of a CNN's time.
_TUNED_OPS = ("nn.conv2d", "nn.dense")
# Each trial runs the kernel this many times per measurement, with a cold cache.
_RUNNER = {"number": 4, "repeat": 2, "min_repeat_ms": 20, "enable_cpu_cache_flush": True}
# Seconds a trial may take to build and run: here, and on a board (upload, a slower CPU).
_TIMEOUT_S = 10
_DEVICE_TIMEOUT_S = 30
_GA_POPULATION = 32
# The knobs that set a convolution's data layout (NCHW[x]c blocks) on x86 and ARM.
_LAYOUT_KNOBS = frozenset({"tile_ic", "tile_oc"})

Stage = Callable[[str], None]
Record = tuple[Any, Any]  # AutoTVM's (MeasureInput, MeasureResult)


@dataclass(frozen=True)
class TuningOptions:
    """What ``--tune``, ``--tune-minutes`` and ``--tune-records`` asked for."""

    minutes: float                 # 0: no new trials, known records only
    imported: tuple[Path, ...] = ()
    cache: Path = field(default_factory=lambda: cache_dir())
    device: RemoteDevice | None = None   # measure there, not on this CPU
    cross_compiler: str | None = None    # links each trial's library for the device


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def cache_file(cache: Path, target: str) -> Path:
    """The cache's log for ``target`` (an LLVM target string, canonicalised by TVM)."""
    slug = re.sub(r"[^A-Za-z0-9=+.,_-]+", "_", _canonical(target)).strip("_")
    return cache / f"{slug}.log"


def _canonical(target: str) -> str:
    import tvm  # noqa: PLC0415

    return str(tvm.target.Target(target))


def read_records(path: Path) -> list[Record]:
    from tvm import autotvm  # noqa: PLC0415

    if not path.is_file():
        return []
    return [(inp, res) for inp, res in autotvm.record.load_from_file(str(path))
            if res.error_no == 0]


def best_by_workload(records: Iterable[Record]) -> dict[tuple, Record]:
    """The cheapest record of each (target, workload)."""
    best: dict[tuple, Record] = {}
    for inp, res in records:
        key = (str(inp.target), inp.task.workload)
        if key not in best or record_cost(res) < record_cost(best[key][1]):
            best[key] = (inp, res)
    return best


def record_cost(result: Any) -> float:
    return sum(result.costs) / len(result.costs)


def _append(path: Path, records: Iterable[Record]) -> None:
    from tvm import autotvm  # noqa: PLC0415

    lines = [autotvm.record.encode(inp, res) + "\n" for inp, res in records]
    if lines:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as log:
            log.writelines(lines)


def merge_records(source: Path, cache: Path) -> int:
    """Add ``source``'s successful records to the cache, each in its target's log."""
    by_target: dict[str, list[Record]] = {}
    for inp, res in read_records(source):
        by_target.setdefault(str(inp.target), []).append((inp, res))
    for target, records in by_target.items():
        known = best_by_workload(read_records(cache_file(cache, target)))
        fresh = [(inp, res) for (_, workload), (inp, res) in best_by_workload(records).items()
                 if (target, workload) not in known
                 or record_cost(res) < record_cost(known[(target, workload)][1])]
        _append(cache_file(cache, target), fresh)
    return sum(len(records) for records in by_target.values())


def records_for(tasks: Iterable[Any], target: str, cache: Path) -> list[Record]:
    """The best known record of each task, for exactly this target."""
    known = best_by_workload(read_records(cache_file(cache, target)))
    canonical = _canonical(target)
    return [known[(canonical, task.workload)] for task in tasks
            if (canonical, task.workload) in known]


def extract_tasks(mod: Any, params: dict, target: str, stage: Stage) -> list[Any]:
    """The model's tuning tasks: its convolutions and dense layers (TVM builds the model
    once to find them: about half a minute for the reference SSD on two cores)."""
    from tvm import autotvm, relay  # noqa: PLC0415

    stage("extracting the tuning tasks (convolutions, dense layers)")
    ops = [relay.op.get(name) for name in _TUNED_OPS]
    return list(autotvm.task.extract_from_program(mod["main"], target=target, params=params,
                                                  ops=ops))


def tune(tasks: list[Any], target: str, options: TuningOptions,
         stage: Stage) -> tuple[list[Record], dict[str, object]]:
    """Tune the tasks not known yet; the best record of each task, and a summary."""
    for source in options.imported:
        count = merge_records(source, options.cache)
        stage(f"imported {count} tuning record(s) from {source}")
    known = {task.workload for task in _known(tasks, target, options.cache)}
    todo = [task for task in tasks if task.workload not in known]
    started, trials, left = time.monotonic(), 0, len(todo)
    deadline = started + options.minutes * 60
    for number, task in enumerate(tasks, 1):
        head = f"tuning task {number}/{len(tasks)} {_describe(task)}"
        if task.workload in known:
            stage(f"{head}: known (tuning record on disk), 0 trials")
            continue
        if options.minutes <= 0:
            stage(f"{head}: no record and no time budget, default schedule")
            continue
        # What is left of the budget, shared by the tasks left: an overrun is made up.
        share = max(0.0, deadline - time.monotonic()) / left
        left -= 1
        done = _tune_task(task, share, cache_file(options.cache, target), options)
        trials += done.trials
        stage(f"{head}: {done.trials} trials in {done.seconds:.0f} s, best "
              f"{done.gflops:.1f} GFLOPS ({done.gain:.2f}x the default schedule)"
              + (f" on {options.device.key!r}" if options.device else ""))
    records = records_for(tasks, target, options.cache)
    return records, {"method": "autotvm", "minutes": options.minutes, "tasks": len(tasks),
                     "tasks_known": len(known),
                     "tasks_tuned": len(todo) if options.minutes > 0 else 0,
                     "trials": trials, "seconds": round(time.monotonic() - started, 1),
                     "tasks_with_records": len(records),
                     "measured_on": (f"rpc:{options.device.key}" if options.device
                                     else "this machine")}


def _known(tasks: list[Any], target: str, cache: Path) -> list[Any]:
    workloads = {record[0].task.workload for record in records_for(tasks, target, cache)}
    return [task for task in tasks if task.workload in workloads]


def _describe(task: Any) -> str:
    shapes = [arg[1] for arg in task.args if isinstance(arg, tuple) and len(arg) == 3
              and arg[0] == "TENSOR"]
    return f"{task.name} {' '.join('x'.join(map(str, shape)) for shape in shapes)}"


@dataclass(frozen=True)
class _TaskResult:
    trials: int
    seconds: float
    gflops: float
    gain: float     # best / the default schedule's, in FLOPS


class TuningFailure(Exception):
    """Even TVM's default schedule of a task did not build or run: nothing else will."""


def _measure_option(options: TuningOptions) -> dict:
    """AutoTVM's builder and runner: this CPU, or the board over RPC with libraries linked
    here (by its cross compiler), so the board needs no compiler of its own."""
    from tvm import autotvm  # noqa: PLC0415

    device = options.device
    if device is None:
        return autotvm.measure_option(builder=autotvm.LocalBuilder(),
                                      runner=autotvm.LocalRunner(timeout=_TIMEOUT_S, **_RUNNER))
    # One trial at a time per board the tracker has for this key: boards measure in parallel.
    return autotvm.measure_option(
        builder=autotvm.LocalBuilder(build_func=linker(options.cross_compiler),
                                     timeout=_DEVICE_TIMEOUT_S),
        runner=autotvm.RPCRunner(device.key, device.host, device.port,
                                 n_parallel=device.servers(), timeout=_DEVICE_TIMEOUT_S,
                                 **_RUNNER))


def _tune_task(task: Any, seconds: float, log: Path, options: TuningOptions) -> _TaskResult:
    """Measure the default schedule, then the GA tuner's proposals until ``seconds`` pass."""
    from tvm.autotvm.env import GLOBAL_SCOPE  # noqa: PLC0415
    from tvm.autotvm.measure import MeasureInput, create_measure_batch  # noqa: PLC0415

    started = time.monotonic()
    measure = create_measure_batch(task, _measure_option(options))
    batch = getattr(measure, "n_parallel", 1)
    default = _default_config(task)
    proposals = _Proposals(task, default)
    measured: list[Record] = []
    GLOBAL_SCOPE.in_tuning = True
    try:
        while time.monotonic() - started < seconds or not measured:
            configs = proposals.next_batch(1 if not measured else batch)
            if not configs:
                break
            inputs = [MeasureInput(task.target, task, config) for config in configs]
            results = measure(inputs)
            if not measured and default is not None and results[0].error_no != 0:
                raise TuningFailure(f"TVM's default schedule of {_describe(task)} failed to "
                                    f"{_failed_stage(results[0])}: {_error_text(results[0])}")
            proposals.update(inputs, results)
            measured += zip(inputs, results)
    finally:
        GLOBAL_SCOPE.in_tuning = False
        del measure
    return _summarise(task, measured, default is not None, log, time.monotonic() - started)


def _failed_stage(result: Any) -> str:
    from tvm.autotvm.measure import MeasureErrorNo  # noqa: PLC0415

    return ("build" if result.error_no in (MeasureErrorNo.INSTANTIATION_ERROR,
                                           MeasureErrorNo.COMPILE_HOST,
                                           MeasureErrorNo.BUILD_TIMEOUT) else "run")


def _error_text(result: Any) -> str:
    """The last line that says something of a failed trial's error (AutoTVM keeps the
    exception, sometimes after its traceback, in ``costs``)."""
    text = str(result.costs[-1]) if result.costs else f"error {result.error_no}"
    lines = [line.strip() for line in text.splitlines() if line.strip()
             and not line.strip().startswith(("File ", "Traceback", "^", "at "))]
    return (lines[-1] if lines else text)[:300]


def _summarise(task: Any, measured: list[Record], has_default: bool, log: Path,
               seconds: float) -> _TaskResult:
    ok = [(inp, res) for inp, res in measured if res.error_no == 0]
    best = min(ok, key=lambda record: record_cost(record[1]), default=None)
    if best is None:
        return _TaskResult(len(measured), seconds, 0.0, 1.0)
    _append(log, [best])
    default_cost = (record_cost(measured[0][1]) if has_default and measured[0][1].error_no == 0
                    else record_cost(best[1]))
    return _TaskResult(len(measured), seconds, task.flop / record_cost(best[1]) / 1e9,
                       default_cost / record_cost(best[1]))


class _Proposals:
    """The configurations to measure, the default schedule's first.

    Where the default is known, only the knobs that keep its data layout vary
    (its channel blocks ``tile_ic``/``tile_oc`` stay): each layer's best
    blocking on its own makes TVM insert layout transforms between layers
    (the reference SSD: 43 instead of 8), which cost more than the schedules
    gain (77 ms against 61 ms untuned). The rest of the space is small, so it
    is measured in a seeded random order until the budget ends. Without a
    default, the GA tuner proposes from the whole space.
    """

    def __init__(self, task: Any, default: Any | None) -> None:
        from tvm import autotvm  # noqa: PLC0415

        self._default = default
        self._queue = _layout_keeping(task, default) if default is not None else []
        self._tuner = (None if default is not None else autotvm.tuner.GATuner(
            task, pop_size=min(_GA_POPULATION, len(task.config_space))))

    def next_batch(self, size: int) -> list[Any]:
        if self._tuner is not None:
            return self._tuner.next_batch(size) if self._tuner.has_next() else []
        batch, self._queue = self._queue[:size], self._queue[size:]
        return batch

    def update(self, inputs: list[Any], results: list[Any]) -> None:
        if self._tuner is not None:
            self._tuner.update(inputs, results)


def _layout_keeping(task: Any, default: Any) -> list[Any]:
    space = task.config_space
    names = list(space.space_map)
    fixed = space.point2knob(default.index)
    free = [i for i, name in enumerate(names) if name not in _LAYOUT_KNOBS]
    combos = list(itertools.product(*(range(space.dims[i]) for i in free)))
    random.Random(0).shuffle(combos)
    configs = [default]
    for combo in combos:
        knob = list(fixed)
        for position, value in zip(free, combo):
            knob[position] = value
        point = space.knob2point(knob)
        if point != default.index and space.is_index_valid(point):
            configs.append(space.get(point))
    return configs


def _default_config(task: Any) -> Any | None:
    """The schedule TVM uses for ``task`` without records, as a point of its space."""
    from tvm.autotvm.task.space import FallbackConfigEntity  # noqa: PLC0415

    fallback = FallbackConfigEntity()
    try:
        with task.target:
            task.instantiate(fallback)
        space = task.config_space
        knob = [[_entity_key(entity) for entity in space.space_map[name].entities]
                .index(_entity_key(fallback[name])) for name in space.space_map]
        config = space.get(space.knob2point(knob))
    except (ValueError, KeyError, IndexError):
        return None  # a default outside the tuning space: the tuner's proposals only
    return config


def _entity_key(entity: Any) -> object:
    """A split's inner factors (the outer one is -1 in a space, a number in a default)."""
    size = getattr(entity, "size", None)
    return tuple(size[1:]) if size is not None else str(entity)
