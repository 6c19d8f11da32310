"""A Relay rewrite for ``lis compile``: an NMS that keeps its top k boxes sorts only those.

MXNet's ``box_nms`` (GluonCV's SSD and YOLOv3 end in one) imports into TVM as
``get_valid_counts`` then ``non_max_suppression(top_k=k)``, and TVM's NMS sorts every
valid box by score before it keeps the first k. A VOC YOLOv3 at 416×416 offers 212,940
boxes (10,647 anchors × 20 classes) and most of them pass ``valid_thresh``: that sort was a
quarter of the artifact's time on a 2-core Xeon (27 of 111 ms).

So the rewrite first finds, per image, a score ``t`` that at least k valid boxes exceed, by
bisection (a count of the boxes above the midpoint, 24 times: plain arithmetic compiled into
the artifact), and marks every box at or below ``t`` invalid, so the NMS sorts only the few
boxes above it. ``topk`` would pick the k boxes in one step, but it runs in the runtime's
sort library, and DLR 1.6 carries an older TVM runtime whose ``topk`` sorts everything
too: with it, that YOLOv3 ran 20 ms slower in DLR than in TVM 0.19's runtime.

The answer is the original's, row for row: every box of the k best has a score above ``t``
(at least k boxes do), so the NMS sees all of them, in their original order, and keeps the
same k (its sort is stable: equal scores keep the lower index first); the boxes marked
invalid were never among them. The bisection's steps only decide how few extra boxes the
sort sees.
"""

from __future__ import annotations

from typing import Any

from tvm import relay
from tvm.relay.dataflow_pattern import (
    DFPatternCallback,
    is_op,
    is_tuple_get_item,
    rewrite,
    wildcard,
)

__all__ = ["nms_top_k_first"]

# Each step halves the interval between the valid threshold and the best score: 24 steps
# leave a float32 score in [0, 1] within a few units in the last place of the k-th best.
_BISECTION_STEPS = 24


class _TopKFirst(DFPatternCallback):  # type: ignore[misc] - TVM's classes are untyped
    """``non_max_suppression(get_valid_counts(data), top_k=k)`` on more than k boxes."""

    def __init__(self) -> None:
        # Once: what it writes matches the pattern again.
        super().__init__(require_type=True, rewrite_once=True)
        self.data = wildcard()
        self.threshold = wildcard()
        self.counts = is_op("vision.get_valid_counts")(self.data, self.threshold)
        self.pattern = is_op("vision.non_max_suppression")(
            is_tuple_get_item(self.counts, 1), is_tuple_get_item(self.counts, 0),
            is_tuple_get_item(self.counts, 2), wildcard(), wildcard())
        self.rewritten: list[tuple[int, int]] = []   # (boxes, k) of each NMS rewritten

    def callback(self, pre: Any, post: Any, node_map: Any) -> Any:
        attrs = post.attrs
        data, threshold = node_map[self.data][0], node_map[self.threshold][0]
        boxes, k = int(data.checked_type.shape[1]), int(attrs.top_k)
        if not 0 < k < boxes or data.checked_type.dtype != "float32":
            return post   # it keeps every box; or scores of a type MXNet's detectors lack
        counts = node_map[self.counts][0].attrs
        score_index, id_index = int(counts.score_index), int(counts.id_index)
        self.rewritten.append((boxes, k))
        valid = relay.vision.get_valid_counts(
            _only_above_kth_best(data, threshold, score_index, id_index, k), threshold,
            id_index=id_index, score_index=score_index)
        nms = relay.vision.non_max_suppression(
            valid[1], valid[0], valid[2], max_output_size=post.args[3],
            iou_threshold=post.args[4], force_suppress=bool(attrs.force_suppress), top_k=k,
            coord_start=int(attrs.coord_start), score_index=int(attrs.score_index),
            id_index=int(attrs.id_index), return_indices=bool(attrs.return_indices),
            invalid_to_bottom=bool(attrs.invalid_to_bottom))
        return nms.astuple() if isinstance(nms, relay.TupleWrapper) else nms


def _only_above_kth_best(data: Any, threshold: Any, score_index: int, id_index: int,
                         k: int) -> Any:
    """``data`` with the score of each box that cannot be among the ``k`` best valid ones
    set to -inf, which ``get_valid_counts`` then counts invalid."""
    scores = relay.take(data, relay.const(score_index), axis=2)                  # (B, N)
    valid = relay.greater(scores, threshold)
    if id_index >= 0:
        ids = relay.take(data, relay.const(id_index), axis=2)
        valid = relay.logical_and(valid, relay.greater_equal(ids, relay.const(0.0)))
    minus_inf = relay.const(float("-inf"))
    ranked = relay.where(valid, scores, minus_inf)
    # Invariant: at least k boxes score above `low` (or `low` is the valid threshold, above
    # which fewer than k do), and fewer than k above `high`.
    high = relay.max(ranked, axis=1, keepdims=True)
    low = relay.full_like(high, threshold)
    for _ in range(_BISECTION_STEPS):
        middle = relay.multiply(relay.add(low, high), relay.const(0.5))
        above = relay.sum(relay.cast(relay.greater(ranked, middle), "int32"), axis=1,
                          keepdims=True)
        enough = relay.greater_equal(above, relay.const(k))
        low, high = relay.where(enough, middle, low), relay.where(enough, high, middle)
    dropped = relay.expand_dims(relay.logical_not(relay.greater(ranked, low)), axis=2)
    width = int(data.checked_type.shape[2])
    score_column = relay.const([[[i == score_index for i in range(width)]]], "bool")
    return relay.where(relay.logical_and(dropped, score_column), minus_inf, data)


def nms_top_k_first(mod: Any) -> tuple[Any, list[tuple[int, int]]]:
    """``mod`` with each NMS that keeps k of more boxes rewritten; the (boxes, k) of each."""
    mod = relay.transform.InferType()(mod)
    callback = _TopKFirst()
    main = rewrite(callback, mod["main"])
    if not callback.rewritten:
        return mod, []
    mod["main"] = main
    return relay.transform.InferType()(mod), callback.rewritten
