"""Worker processes for numpy work: one BLAS thread each, the same results as one process."""

from __future__ import annotations

import json

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from models.pool import process_pool
from models.synthetic.series import synthesize
from tests.models.test_synthetic_series import read_series


def blas_threads() -> list[int]:
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_each_worker_process_runs_numpy_on_one_blas_thread():
    if max(blas_threads(), default=1) == 1:
        pytest.skip("this process already has one BLAS thread: nothing to limit")
    with process_pool(2) as pool:
        in_workers = [pool.submit(blas_threads).result() for _ in range(4)]
    assert in_workers and all(set(threads) == {1} for threads in in_workers)
    assert max(blas_threads()) > 1                    # the caller's own pool is left alone


def test_series_synthesised_in_worker_processes_are_those_of_one_process(pet_cases, tmp_path):
    folders = synthesize("PT", 2, seed=5, out=tmp_path, workers=2)
    for mine, reference in zip(folders, pet_cases, strict=False):
        assert mine.name == reference.name
        lesions = [json.loads((f / "truth.json").read_text())["lesions"]
                   for f in (mine, reference)]
        assert lesions[0] == lesions[1]
        (planes, _), (expected, _) = read_series(mine), read_series(reference)
        assert len(planes) == len(expected)
        for plane, other in zip(planes, expected, strict=True):
            np.testing.assert_array_equal(plane.pixels(), other.pixels())
        with np.load(mine / "mask.npz") as a, np.load(reference / "mask.npz") as b:
            np.testing.assert_array_equal(a["labels"], b["labels"])     # UIDs are new
