"""Stack a series' planes into one volume in physical units (pure)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from edge.values import Slice


def stack(planes: Sequence[Slice], order: Sequence[int], threads: int | None = None) -> np.ndarray:
    """The planes in `order` as a float32 volume (slices, rows, columns) in physical units.

    The planes must share one matrix size; `analyse_geometry` reports when they do not.
    Filling a new volume is bound by first touches of its memory, so `threads` (default:
    the CPUs this process may use) fill contiguous parts of it at once; numpy releases
    the GIL while it converts.
    """
    first = planes[order[0]].stored.shape
    for i in order:
        if planes[i].stored.shape != first:
            raise ValueError(f"plane {i} is {planes[i].stored.shape}, the first is {first}")
    volume = np.empty((len(order), *first), np.float32)
    threads = max(1, min(threads or len(os.sched_getaffinity(0)), len(order)))

    def fill(part: range) -> None:
        for k in part:
            planes[order[k]].pixels(out=volume[k])

    size = -(-len(order) // threads)
    parts = [range(start, min(start + size, len(order))) for start in range(0, len(order), size)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fill, parts))
    return volume
