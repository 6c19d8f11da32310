"""The schedules lis ships: AutoTVM records a build applies without ``--tune``.

TVM's own answer for builds nobody tuned is TopHub: records for common
networks, downloaded on first use, which lis turns off (no download at run
time). lis ships its own instead, one AutoTVM log per CPU class in
``modelkit/records/<class>.log``: the records ``--tune`` made for the layers
of the GluonCV detectors the connector's users start from
(``models/tuning/README.md`` lists them and says how). A build for a target of that class
applies the record of each layer whose workload (operator, shapes, strides,
dtypes) is in the file; its other layers get lis's layout for x86 without
AVX-512 (``modelkit._x86_blocks``). Records of the build's own target (``--tune``, the
cache, ``--tune-records``) come first: they were measured on the CPU itself.

A class is shipped only where its records were measured to matter: on an x86
CPU with AVX2 but not AVX-512, TVM's default schedules lost to MXNet's oneDNN
and the records won; with AVX-512 the defaults already beat it. The AVX2
records were tuned in lis's own layout for those CPUs (channels in blocks of
32): a record in TVM's blocks of 8 made TVM convert between it and its
neighbours, which cost more than it gained (docs/models.md).
``$LIS_SHIPPED_RECORDS`` names another folder of ``<class>.log`` files, so a
fleet can ship its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from modelkit._tune import Record, read_records, record_cost

__all__ = ["SHIPPED_ENV", "X86_AVX2", "cpu_class", "packaged_file", "shipped_records"]

SHIPPED_ENV = "LIS_SHIPPED_RECORDS"
_PACKAGED = Path(__file__).resolve().parent / "records"
X86_AVX2 = "x86-avx2"


def cpu_class(target: str) -> str | None:
    """The shipped-records class of an LLVM target string; None where lis ships none."""
    from modelkit._x86_blocks import simd_lanes  # noqa: PLC0415 - imports TVM

    return X86_AVX2 if simd_lanes(target) == 8 else None


def _folder() -> Path:
    return Path(os.environ.get(SHIPPED_ENV) or _PACKAGED).expanduser()


def packaged_file(kind: str) -> Path:
    """The records file lis itself ships for a CPU class (``$LIS_SHIPPED_RECORDS`` aside)."""
    return _PACKAGED / f"{kind}.log"


def shipped_records(target: str,
                    own: Iterable[Record]) -> tuple[list[Record], dict[str, object] | None]:
    """The shipped records for ``target``'s class, the cheapest per workload, less the
    workloads ``own`` has a record for; and a summary, None where the class ships none.

    The build offers them all (finding which layers they match would cost a build of its
    own) and sets the summary's ``"applied"`` to the records it asked for and used.
    """
    kind = cpu_class(target)
    path = _folder() / f"{kind}.log" if kind else None
    if path is None or not path.is_file():
        return [], None
    taken = {inp.task.workload for inp, _ in own}
    shipped: dict[tuple, Record] = {}
    for inp, res in read_records(path):
        known = shipped.get(inp.task.workload)
        if inp.task.workload not in taken and (known is None
                                               or record_cost(res) < record_cost(known[1])):
            shipped[inp.task.workload] = (inp, res)
    return list(shipped.values()), {"class": kind, "file": str(path), "applied": 0}
