"""The order of alternating measurements: which goes first, round after round."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

__all__ = ["in_turn"]

T = TypeVar("T")


def in_turn(items: Sequence[T], turn: int) -> list[T]:
    """``items`` rotated by ``turn``: each goes first, second, ... last in turn.

    The reference box's speed drifts over minutes, and a block measured second
    in its round ran about 3 % faster than the same call measured first, so no
    item always goes first or last. For two it alternates: A B, B A.
    """
    shift = turn % len(items) if items else 0
    return [*items[shift:], *items[:shift]]
