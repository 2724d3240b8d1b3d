"""Image sizes: one N means N x N everywhere (Args fields, builders, readers)."""

from __future__ import annotations

from collections.abc import Sequence


def image_size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) of `size`: an int N (N x N), [N] or [height, width]; ValueError for anything else."""
    values = [size] if isinstance(size, int) else list(size)
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ValueError(f"image size {size!r}: expected N or [height, width] of positive integers")
    return values[0], values[1]
