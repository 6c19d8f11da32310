"""Builds TVM's NMS as ``box_nms`` imports it, before and after ``lis compile``'s rewrite.

Run as ``python -m tests.modelkit._nms_graphs OUT``, in a process of its own (TVM is never
imported into the suite's, where DLR is). For each case of ``CASES`` it writes two DLR
folders, ``OUT/<case>/original`` and ``OUT/<case>/rewritten``, and ``OUT/rewritten.json``:
the (boxes, k) the rewrite reported for each case, ``[]`` where it left the graph alone.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TOPHUB_LOCATION", "NONE")

BATCH, BOXES, WIDTH, TOP_K = 2, 1500, 6, 40
# name: get_valid_counts' and non_max_suppression's settings; "slice": only the first
# rows are answered, as GluonCV's post_nms does.
CASES: dict[str, dict[str, Any]] = {
    "classes-sliced": {"id_index": 0, "invalid_to_bottom": True, "slice": 60},
    "no-classes-in-place": {"id_index": -1, "invalid_to_bottom": False,
                            "force_suppress": True},
    "indices": {"id_index": 0, "return_indices": True},
    "keeps-all": {"id_index": 0, "top_k": -1},
    "k-of-fewer": {"id_index": 0, "top_k": BOXES},
}


def nms_module(case: dict[str, Any]) -> Any:
    import tvm  # noqa: PLC0415
    from tvm import relay  # noqa: PLC0415

    data = relay.var("data", shape=(BATCH, BOXES, WIDTH))
    valid = relay.vision.get_valid_counts(data, 0.05, id_index=case["id_index"],
                                          score_index=1)
    out = relay.vision.non_max_suppression(
        valid[1], valid[0], valid[2], max_output_size=-1, iou_threshold=0.45,
        force_suppress=case.get("force_suppress", False), top_k=case.get("top_k", TOP_K),
        coord_start=2, score_index=1, id_index=case["id_index"],
        return_indices=case.get("return_indices", False),
        invalid_to_bottom=case.get("invalid_to_bottom", True))
    if isinstance(out, relay.TupleWrapper):
        out = out.astuple()
    if "slice" in case:
        out = relay.strided_slice(out, [0, 0, 0], [BATCH, case["slice"], WIDTH])
    return tvm.IRModule.from_expr(relay.Function([data], out))


def export(mod: Any, folder: Path) -> None:
    import tvm  # noqa: PLC0415
    from tvm import relay  # noqa: PLC0415

    with tvm.transform.PassContext(opt_level=3):
        lib = relay.build(mod, target="llvm")
    folder.mkdir(parents=True)
    lib.get_lib().export_library(str(folder / "compiled.so"))
    (folder / "compiled_model.json").write_text(lib.get_graph_json())
    (folder / "compiled.params").write_bytes(relay.save_param_dict(lib.get_params()))


def main(out: Path) -> None:
    from modelkit._nms_top_k import nms_top_k_first  # noqa: PLC0415 - imports TVM

    reported = {}
    for name, case in CASES.items():
        original = nms_module(case)
        rewritten, reported[name] = nms_top_k_first(original)
        if reported[name]:
            export(original, out / name / "original")
            export(rewritten, out / name / "rewritten")
    (out / "rewritten.json").write_text(json.dumps(reported))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
