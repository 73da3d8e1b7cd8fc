"""Ingest: slices per second through the full reader, next to bare pydicom.

A 300-slice 512x512 uncompressed CT series is read three ways in the same run:

- scanside: the sandboxed reader pool (worker processes under memory and time limits,
  structural checks, decoding) delivering validated slices ("read"), then ordering along
  the normal and stacking in Hounsfield units as float32 ("read_and_stack_hu");
- bare pydicom in one process: ``dcmread(f).pixel_array``, stacked;
- bare pydicom in a pool of as many processes as scanside's workers, arrays returned to
  the parent and stacked: the like-for-like baseline for the ratio.

Files are written first, so they are in the page cache, as they are when a scanner has
just written them. Target (issue 2): >= 500 slices/s on 2 cores and >= 0.8 of bare pydicom.
"""

from __future__ import annotations

import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid
from tqdm import tqdm

from edge.ingest.workers import ReaderPool
from edge.series.geometry import analyse_geometry
from edge.series.volume import stack
from models.synthetic.dicom import Plane, SeriesIdentity, write_slice

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def write_ct_series(folder: Path, n_slices: int = 300, size: int = 512) -> list[Path]:
    """A CT series with a body-like HU distribution, written as real DICOM files."""
    rng = np.random.default_rng(0)
    series = SeriesIdentity("CT", generate_uid(), generate_uid(), generate_uid(),
                            description="ingest benchmark", expected_count=n_slices)
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size / 2) / (size * 0.35)) ** 2 + ((xx - size / 2) / (size * 0.45)) ** 2 < 1
    paths = []
    for i in tqdm(range(n_slices), desc="writing CT series", unit="slice"):
        hu = np.where(body, 40.0, -1000.0) + rng.normal(0, 12, (size, size))
        plane = Plane(generate_uid(), (-250.0, -250.0, 1.25 * i), AXIAL, (0.98, 0.98), 1.25,
                      i + 1)
        paths.append(write_slice(folder / f"IM{i:05d}.dcm", hu, series, plane))
    return paths


def scanside_read(pool: ReaderPool, paths: list[Path]) -> tuple[np.ndarray, float]:
    """Read, check and decode every file in the sandbox, then order along the normal and
    stack in Hounsfield units. Returns the volume and when reading alone was done."""
    start = time.perf_counter()
    outcomes = [pool.submit(str(p)) for p in paths]
    planes = [plane for f in outcomes for plane in f.result().slices]
    read_s = time.perf_counter() - start
    return stack(planes, analyse_geometry([p.header for p in planes]).order), read_s


def _bare(path: Path) -> np.ndarray:
    return pydicom.dcmread(path).pixel_array


def bare_pydicom(paths: list[Path]) -> np.ndarray:
    return np.stack([_bare(p) for p in paths])


def bare_pydicom_pool(paths: list[Path], workers: int) -> np.ndarray:
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        list(pool.map(_bare, paths[:workers]))  # start the workers outside the timing
        start = time.perf_counter()
        volume = np.stack(list(pool.map(_bare, paths, chunksize=1)))
        bare_pydicom_pool.elapsed = time.perf_counter() - start
    return volume


def run(repeats: int = 5, n_slices: int = 300, workers: int = 2) -> dict:
    """Measure each reader `repeats` times; report the median and every run."""
    with tempfile.TemporaryDirectory(prefix="scanside-bench-") as folder:
        paths = write_ct_series(Path(folder), n_slices)
        timings: dict[str, list[float]] = {"scanside_read": [], "scanside_read_and_stack_hu": [],
                                           "bare_pydicom_1_process": [],
                                           f"bare_pydicom_{workers}_processes": []}
        pool_start = time.perf_counter()
        pool = ReaderPool(workers=workers)
        pool.read(str(paths[0]))                   # the appliance starts its pool once
        pool_start = time.perf_counter() - pool_start
        for _ in tqdm(range(repeats), desc="ingest benchmark", unit="round"):
            start = time.perf_counter()
            volume, read_s = scanside_read(pool, paths)
            timings["scanside_read_and_stack_hu"].append(time.perf_counter() - start)
            timings["scanside_read"].append(read_s)
            assert volume.shape == (n_slices, 512, 512) and volume.dtype == np.float32
            del volume   # as an appliance frees one series before the next: memory is reused
            start = time.perf_counter()
            bare_pydicom(paths)
            timings["bare_pydicom_1_process"].append(time.perf_counter() - start)
            bare_pydicom_pool(paths, workers)
            timings[f"bare_pydicom_{workers}_processes"].append(bare_pydicom_pool.elapsed)
        pool.close()
    rates = {name: n_slices / statistics.median(runs) for name, runs in timings.items()}
    bare = {"same_processes": rates[f"bare_pydicom_{workers}_processes"],
            "1_process": rates["bare_pydicom_1_process"]}
    return {
        "series": {"n_slices": n_slices, "matrix": [512, 512], "transfer_syntax":
                   "Explicit VR Little Endian", "bytes_per_file": paths[0].stat().st_size
                   if paths[0].exists() else None},
        "workers": workers,
        "repeats": repeats,
        "slices_per_s": {k: round(v, 1) for k, v in rates.items()},
        "seconds": {k: [round(t, 4) for t in v] for k, v in timings.items()},
        "ratios_to_bare_pydicom": {
            f"{ours}_vs_{base}": round(rates[ours] / bare[base], 3)
            for ours in ("scanside_read", "scanside_read_and_stack_hu") for base in bare},
        "targets": {"slices_per_s": 500, "ratio_to_bare_pydicom": 0.8},
        "reader_pool_start_s": round(pool_start, 3),
        "notes": "Both pools are started before timing (the appliance starts its pool once); "
                 "scanside's timings include ordering by geometry and conversion to HU.",
    }
