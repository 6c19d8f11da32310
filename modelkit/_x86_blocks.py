"""lis's default layout for x86 code without AVX-512 (AVX2 or SSE): channels in blocks of 32.

TVM's x86 convolutions run on data whose channels are split into blocks (``NCHW8c``); without
records, TVM picks each layer's block as the largest factor of its channel count up to the
SIMD width: 8 floats for AVX2, 4 for SSE. In blocks of 8, a 1×1 convolution reloads a
broadcast input value for every 8 outputs it accumulates, and ran at 45–105 GFLOP/s on the
2-core Xeon (AVX2 code), where blocks of 32 ran 120–143; 3×3 convolutions ran about 160
either way. SSE code in blocks of 32 (8 registers) ran the reference detectors 1.5× as fast
as in TVM's blocks of 4, and 1.1–1.2× as fast as in blocks of 16 (docs/models.md). So
for an x86 target without AVX-512 lis replaces TVM's three x86 fallback schedules while it
builds (and tunes: ``--tune`` keeps the default's layout): blocks of 32 where the channel
count divides (16, 8, then TVM's rule), the same rule for every layer so that one layer's
output block is the next one's input block (no layout transforms between them), and a
register tile that fits the 16 vector registers AVX2 and SSE code have: TVM's own tile is
sized for AVX-512's 32.

Records (``--tune``, the cache, the shipped ones) still come first: this only decides what a
layer without one gets.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

__all__ = ["lis_x86_layout", "simd_lanes"]

_BLOCKS = (32, 16, 8)        # channels; AVX2 and SSE code alike measured best at 32
# Accumulators a tile may hold: of 16 registers, one holds weights and one the broadcast
# input; 1×1 and depthwise tiles measured best at 8.
_ACCUMULATORS = 14
_SMALL_TILE_ACCUMULATORS = 8


@contextlib.contextmanager
def lis_x86_layout(target: str) -> Iterator[int | None]:
    """While inside, TVM's default x86 convolution schedules are lis's where ``target`` is
    x86 without AVX-512; yields its ``simd_lanes`` (None: TVM's schedules)."""
    lanes = simd_lanes(target)
    if lanes is None:
        yield None
        return
    from tvm.topi.x86 import (  # noqa: PLC0415
        conv2d_avx_1x1,
        conv2d_avx_common,
        depthwise_conv2d,
    )

    modules = (conv2d_avx_common, conv2d_avx_1x1, depthwise_conv2d)
    saved = [module._fallback_schedule for module in modules]
    for module, schedule in zip(modules, (_spatial, _pointwise, _depthwise)):
        module._fallback_schedule = functools.partial(schedule, lanes=lanes)
    try:
        yield lanes
    finally:
        for module, schedule in zip(modules, saved):
            module._fallback_schedule = schedule


def _largest_factor(n: int, cap: int) -> int:
    return next(b for b in range(min(n, cap), 0, -1) if n % b == 0)


def simd_lanes(target: str) -> int | None:
    """float32 per vector register where lis's layout applies to ``target``: 8 for x86 with
    AVX2, 4 without (SSE, or AVX without AVX2: TVM's width too); None for AVX-512 (TVM's
    layout) and other CPUs."""
    import tvm  # noqa: PLC0415
    from tvm.target import codegen  # noqa: PLC0415

    parsed = tvm.target.Target(target)
    triple = str(parsed.attrs.get("mtriple", "") or "")
    if (parsed.kind.name != "llvm" or (triple and not triple.startswith("x86_64"))
            or codegen.target_has_features("avx512f", parsed)):
        return None
    return 8 if codegen.target_has_features(["avx2", "fma"], parsed) else 4


def _blocks(channels: int, lanes: int) -> list[int]:
    """The blocks ``channels`` can be split into, largest first (TVM's rule where none)."""
    return [b for b in _BLOCKS if channels % b == 0] or [_largest_factor(channels, lanes)]


def _block(channels: int, lanes: int) -> int:
    return _blocks(channels, lanes)[0]


def _registers(block: int, lanes: int) -> int:
    return -(-block // lanes)


def _out_size(size: int, pads: int, kernel: int, dilation: int, stride: int) -> int:
    return (size + pads - (kernel - 1) * dilation - 1) // stride + 1


def _out_width(wkl: Any) -> int:
    return _out_size(wkl.width, wkl.padl + wkl.padr, wkl.kernel_w, wkl.dilation_w, wkl.stride_w)


def _out_height(wkl: Any) -> int:
    return _out_size(wkl.height, wkl.padt + wkl.padb, wkl.kernel_h, wkl.dilation_h,
                     wkl.stride_h)


def _set_blocks(cfg: Any, wkl: Any, out_block: int, lanes: int) -> None:
    from tvm.autotvm.task.space import SplitEntity  # noqa: PLC0415

    in_block = _block(wkl.in_filter, lanes)
    cfg["tile_ic"] = SplitEntity([wkl.in_filter // in_block, in_block])
    cfg["tile_oc"] = SplitEntity([wkl.out_filter // out_block, out_block])


def _spatial(cfg: Any, wkl: Any, lanes: int) -> None:
    """A k×k convolution (k > 1): the largest block whose tile fills at least 8
    accumulators (a 13-px-wide map divides only by 1 and 13: blocks of 8, 13 wide)."""
    from tvm.autotvm.task.space import OtherOptionEntity, SplitEntity  # noqa: PLC0415

    width = _out_width(wkl)
    tiles = [(block, _largest_factor(width, max(1, _ACCUMULATORS // _registers(block, lanes))))
             for block in _blocks(wkl.out_filter, lanes)]
    block, tile = next(
        (t for t in tiles if _registers(t[0], lanes) * t[1] >= _SMALL_TILE_ACCUMULATORS),
        max(tiles, key=lambda t: _registers(t[0], lanes) * t[1]))
    _set_blocks(cfg, wkl, block, lanes)
    cfg["tile_ow"] = SplitEntity([width // tile, tile])
    cfg["unroll_kw"] = OtherOptionEntity(False)


def _pointwise(cfg: Any, wkl: Any, lanes: int) -> None:
    """A 1×1 convolution: 8 accumulators, in two rows where the height is even, as wide as a
    factor of the width lets.

    Where that leaves the tile short (a 13-px-wide map divides only by 1 and 13), one row: a
    factor of the width up to 14 accumulators (a YOLOv3 head's odd channel count is one
    register, 13 wide), else 8 accumulators that do not divide it (the last tile partly
    empty). Tuning chose the same on YOLOv3's 13×13 layers: 1.4–6× the short tile.
    """
    from tvm.autotvm.task.space import OtherOptionEntity, SplitEntity  # noqa: PLC0415

    block = _block(wkl.out_filter, lanes)
    _set_blocks(cfg, wkl, block, lanes)
    registers = _registers(block, lanes)
    budget = max(1, _SMALL_TILE_ACCUMULATORS // registers)
    rows = 2 if _out_height(wkl) % 2 == 0 and budget >= 2 else 1
    width = _out_width(wkl)
    tile = _largest_factor(width, max(1, budget // rows))
    if registers * rows * tile < _SMALL_TILE_ACCUMULATORS:
        rows = 1
        tile = _largest_factor(width, max(1, _ACCUMULATORS // registers))
        if registers * tile < _SMALL_TILE_ACCUMULATORS:
            tile = min(budget, width)
    cfg["tile_ow"] = SplitEntity([-(-width // tile), tile])
    cfg["tile_oh"] = OtherOptionEntity(rows)


def _depthwise(cfg: Any, wkl: Any, lanes: int) -> None:
    from tvm.autotvm.task.space import OtherOptionEntity, SplitEntity  # noqa: PLC0415

    block = _block(wkl.out_filter, lanes)
    _set_blocks(cfg, wkl, block, lanes)
    width = _out_width(wkl)
    tile = _largest_factor(width, max(1, _SMALL_TILE_ACCUMULATORS // _registers(block, lanes)))
    cfg["tile_ow"] = SplitEntity([width // tile, tile])
    cfg["unroll_kw"] = OtherOptionEntity(False)
