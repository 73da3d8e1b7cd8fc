"""Fixtures for model tests: real synthetic series, small enough to make in seconds."""

from __future__ import annotations

import pytest

from edge.inference.spec import Intensity, ModelSpec

# A PET spec tiny enough that preparing and training take seconds.
TINY_PET = ModelSpec("PT", 32, 16.0, Intensity("pet_suv", clip=4.0, scale=5.0), name="tiny")


@pytest.fixture(scope="session")
def pet_cases(tmp_path_factory):
    """Three synthetic PET series (truth.json, mask.npz), seed 5."""
    from models.synthetic.series import synthesize

    return synthesize("PT", 3, seed=5, out=tmp_path_factory.mktemp("pet"))
