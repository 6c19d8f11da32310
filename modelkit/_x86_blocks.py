"""lis's default layout for x86 code with AVX2 and no AVX-512: channels in blocks of 32.

TVM's x86 convolutions run on data whose channels are split into blocks (``NCHW8c``); without
records, TVM picks each layer's block as the largest factor of its channel count up to the
SIMD width, 8 floats for AVX2. In blocks of 8, a 1×1 convolution reloads a broadcast input
value for every 8 outputs it accumulates, and ran at 45–105 GFLOP/s on the 2-core Xeon
(AVX2 code), where blocks of 32 ran 120–143; 3×3 convolutions ran about 160 either way
(docs/models.md). So for an AVX2 target lis replaces TVM's three x86 fallback schedules while
it builds (and tunes: ``--tune`` keeps the default's layout): blocks of 32 where the channel
count divides (16, 8, then TVM's rule), the same rule for every layer so that one layer's
output block is the next one's input block (no layout transforms between them), and a
register tile that fits AVX2's 16 vector registers: TVM's own tile is sized for AVX-512's 32.

Records (``--tune``, the cache, the shipped ones) still come first: this only decides what a
layer without one gets.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["lis_x86_layout"]

_BLOCKS = (32, 16, 8)
_LANES = 8                   # float32 per AVX2 register
# Accumulators a tile may hold: of 16 registers, one holds weights and one the broadcast
# input; 1×1 and depthwise tiles measured best at 8.
_ACCUMULATORS = 14
_SMALL_TILE_ACCUMULATORS = 8


@contextlib.contextmanager
def lis_x86_layout(target: str) -> Iterator[bool]:
    """While inside, TVM's default x86 convolution schedules are lis's where ``target`` is
    AVX2 without AVX-512; yields whether they are."""
    from modelkit._shipped import X86_AVX2, cpu_class  # noqa: PLC0415 - imports TVM

    if cpu_class(target) != X86_AVX2:
        yield False
        return
    from tvm.topi.x86 import (  # noqa: PLC0415
        conv2d_avx_1x1,
        conv2d_avx_common,
        depthwise_conv2d,
    )

    modules = (conv2d_avx_common, conv2d_avx_1x1, depthwise_conv2d)
    saved = [module._fallback_schedule for module in modules]
    for module, schedule in zip(modules, (_spatial, _pointwise, _depthwise)):
        module._fallback_schedule = schedule
    try:
        yield True
    finally:
        for module, schedule in zip(modules, saved):
            module._fallback_schedule = schedule


def _largest_factor(n: int, cap: int) -> int:
    return next(b for b in range(min(n, cap), 0, -1) if n % b == 0)


def _blocks(channels: int) -> list[int]:
    """The blocks ``channels`` can be split into, largest first (TVM's rule where none)."""
    return [b for b in _BLOCKS if channels % b == 0] or [_largest_factor(channels, _LANES)]


def _block(channels: int) -> int:
    return _blocks(channels)[0]


def _registers(block: int) -> int:
    return -(-block // _LANES)


def _out_size(size: int, pads: int, kernel: int, dilation: int, stride: int) -> int:
    return (size + pads - (kernel - 1) * dilation - 1) // stride + 1


def _out_width(wkl: Any) -> int:
    return _out_size(wkl.width, wkl.padl + wkl.padr, wkl.kernel_w, wkl.dilation_w, wkl.stride_w)


def _out_height(wkl: Any) -> int:
    return _out_size(wkl.height, wkl.padt + wkl.padb, wkl.kernel_h, wkl.dilation_h,
                     wkl.stride_h)


def _set_blocks(cfg: Any, wkl: Any, out_block: int) -> None:
    from tvm.autotvm.task.space import SplitEntity  # noqa: PLC0415

    in_block = _block(wkl.in_filter)
    cfg["tile_ic"] = SplitEntity([wkl.in_filter // in_block, in_block])
    cfg["tile_oc"] = SplitEntity([wkl.out_filter // out_block, out_block])


def _spatial(cfg: Any, wkl: Any) -> None:
    """A k×k convolution (k > 1): the largest block whose tile fills at least 8
    accumulators (a 13-px-wide map divides only by 1 and 13: blocks of 8, 13 wide)."""
    from tvm.autotvm.task.space import OtherOptionEntity, SplitEntity  # noqa: PLC0415

    width = _out_width(wkl)
    tiles = [(block, _largest_factor(width, max(1, _ACCUMULATORS // _registers(block))))
             for block in _blocks(wkl.out_filter)]
    block, tile = next((t for t in tiles if _registers(t[0]) * t[1] >= _SMALL_TILE_ACCUMULATORS),
                       max(tiles, key=lambda t: _registers(t[0]) * t[1]))
    _set_blocks(cfg, wkl, block)
    cfg["tile_ow"] = SplitEntity([width // tile, tile])
    cfg["unroll_kw"] = OtherOptionEntity(False)


def _pointwise(cfg: Any, wkl: Any) -> None:
    """A 1×1 convolution: 8 accumulators, in two rows where the height is even, as wide as a
    factor of the width lets.

    Where that leaves the tile short (a 13-px-wide map divides only by 1 and 13), one row: a
    factor of the width up to 14 accumulators (a YOLOv3 head's odd channel count is one
    register, 13 wide), else 8 accumulators that do not divide it (the last tile partly
    empty). Tuning chose the same on YOLOv3's 13×13 layers: 1.4–6× the short tile.
    """
    from tvm.autotvm.task.space import OtherOptionEntity, SplitEntity  # noqa: PLC0415

    block = _block(wkl.out_filter)
    _set_blocks(cfg, wkl, block)
    registers = _registers(block)
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


def _depthwise(cfg: Any, wkl: Any) -> None:
    from tvm.autotvm.task.space import OtherOptionEntity, SplitEntity  # noqa: PLC0415

    block = _block(wkl.out_filter)
    _set_blocks(cfg, wkl, block)
    width = _out_width(wkl)
    tile = _largest_factor(width, max(1, _SMALL_TILE_ACCUMULATORS // _registers(block)))
    cfg["tile_ow"] = SplitEntity([width // tile, tile])
    cfg["unroll_kw"] = OtherOptionEntity(False)
