"""`scanside simulate-scanner`: play DICOM series into an inbox at scanner pace.

Each file is written under a `.part` name and renamed into place, as DICOM receivers do,
at `rate` slices per second; slices go in anatomical order (ascending or descending, as
scanners acquire) or shuffled (as some routers forward them).
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from pydicom import dcmread

NOT_DICOM = {".json", ".npz", ".png", ".txt", ".md"}


def series_files(folder: Path, order: str = "ascending", seed: int = 0) -> list[Path]:
    """The DICOM files of one series folder, in the order a scanner would send them."""
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix not in NOT_DICOM]
    if order == "shuffled":
        random.Random(seed).shuffle(files)
    elif order in ("ascending", "descending"):
        def position(path: Path) -> float:
            ds = dcmread(path, stop_before_pixels=True)
            row, col = ds.ImageOrientationPatient[:3], ds.ImageOrientationPatient[3:]
            normal = (row[1] * col[2] - row[2] * col[1], row[2] * col[0] - row[0] * col[2],
                      row[0] * col[1] - row[1] * col[0])
            return sum(float(p) * n for p, n in zip(ds.ImagePositionPatient, normal, strict=True))
        files.sort(key=position, reverse=order == "descending")
    return files


def play(files: list[Path], inbox: Path, rate: float, subfolder: str = "") -> Iterator[Path]:
    """Copy `files` into `inbox` at `rate` per second; yields each path once in place."""
    target = inbox / subfolder if subfolder else inbox
    target.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    for i, source in enumerate(files):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        final = target / source.name
        partial = target / (source.name + ".part")
        shutil.copyfile(source, partial)
        os.replace(partial, final)
        yield final
