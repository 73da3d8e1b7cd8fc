"""Stack a series' planes into one volume in physical units (pure)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge.values import Slice


def stack(planes: Sequence[Slice], order: Sequence[int]) -> np.ndarray:
    """The planes in `order` as a float32 volume (slices, rows, columns) in physical units.

    The planes must share one matrix size; `analyse_geometry` reports when they do not.
    """
    first = planes[order[0]].stored.shape
    volume = np.empty((len(order), *first), np.float32)
    for k, i in enumerate(order):
        if planes[i].stored.shape != first:
            raise ValueError(f"plane {i} is {planes[i].stored.shape}, the first is {first}")
        planes[i].pixels(out=volume[k])
    return volume
