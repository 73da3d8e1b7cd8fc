"""Stacking a series' planes into one volume in physical units."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest

from edge.ingest.reader import read_file
from edge.series.geometry import analyse_geometry
from edge.series.volume import stack
from tests.factories import tiny_series


@pytest.mark.parametrize("threads", [1, 3])
def test_planes_are_stacked_in_anatomical_order_in_physical_units(tmp_path, threads):
    series = tiny_series(7)
    paths = series.write(tmp_path)
    planes = [read_file(str(p))[0] for p in paths]
    shuffled = random.Random(4).sample(planes, len(planes))
    order = analyse_geometry([p.header for p in shuffled]).order
    volume = stack(shuffled, order, threads=threads)
    assert volume.dtype == np.float32 and volume.shape == (7, 8, 8)
    for k in range(7):
        np.testing.assert_allclose(volume[k], series.values(k), atol=1e-3)


def test_planes_of_different_sizes_are_refused(tmp_path):
    planes = [read_file(str(p))[0] for p in tiny_series(2).write(tmp_path)]
    planes[1] = replace(planes[1], stored=planes[1].stored[:4])
    with pytest.raises(ValueError, match=r"plane 1 is \(4, 8\)"):
        stack(planes, [0, 1])
