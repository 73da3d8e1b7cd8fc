"""`scanside inspect`: a read-only survey of DICOM files and folders.

An engineer's first tool on a new scanner's output: which series are there, with what
modality, slice count, matrix and spacing, whether the appliance would consider each one
complete as soon as it arrived, what is wrong with its geometry, and which files it would
reject and why. Files are read through the same sandboxed reader as the appliance, and
never moved or changed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from edge.config import Config
from edge.ingest.inbox import is_ignored, same_bytes
from edge.ingest.workers import ReaderPool
from edge.series.assembler import Admission, SeriesAssembler, SeriesState
from edge.series.geometry import analyse_geometry
from edge.values import Slice


@dataclass(frozen=True)
class SeriesSurvey:
    series_uid: str
    study_uid: str
    modality: str
    description: str
    n_slices: int
    rows: int
    columns: int
    spacing_mm: tuple[float, float, float | None]   # row, column, slice (median)
    expected_slices: int | None
    complete: bool
    problems: tuple[str, ...]
    files: tuple[str, ...]


@dataclass(frozen=True)
class Survey:
    series: tuple[SeriesSurvey, ...]
    rejected: tuple[tuple[str, str], ...] = field(default=())   # (path, reason)

    def to_json(self) -> dict:
        return {
            "series": [{
                "series_uid": s.series_uid, "study_uid": s.study_uid, "modality": s.modality,
                "description": s.description, "n_slices": s.n_slices, "rows": s.rows,
                "columns": s.columns, "spacing_mm": list(s.spacing_mm),
                "expected_slices": s.expected_slices, "complete": s.complete,
                "problems": list(s.problems), "files": list(s.files),
            } for s in self.series],
            "rejected": [{"path": p, "reason": r} for p, r in self.rejected],
        }


def expand(paths: Iterable[str | Path]) -> list[str]:
    """Every file named or found under the named folders (symbolic links not followed)."""
    files = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            for folder, dirs, names in os.walk(path):
                dirs.sort()
                files.extend(os.path.join(folder, n) for n in sorted(names))
        else:
            files.append(str(path))
    return files


@dataclass
class Collection:
    """Files read and grouped into series, as `collect` leaves them."""

    series: dict[str, SeriesState]                   # series UID -> state
    files: dict[str, list[str]]                      # series UID -> its files
    duplicates: dict[str, list[str]]                 # series UID -> repeated files
    rejected: list[tuple[str, str]]                  # (path, reason)
    slices: dict[str, list[Slice]]                   # series UID -> planes, if kept


def collect(paths: Iterable[str | Path], config: Config = Config(),
            keep_pixels: bool = False) -> Collection:
    """Read every file under `paths` through the sandboxed reader and group the readable
    ones into series; with `keep_pixels`, keep the decoded planes for analysis."""
    found = Collection({}, {}, {}, [], {})
    to_read = []
    for path in expand(paths):
        if is_ignored(os.path.basename(path), config.ingest.ignore):
            found.rejected.append((path, "temporary name (ingest.ignore): the appliance "
                                         "waits for it to be renamed"))
        else:
            to_read.append(path)
    assembler = SeriesAssembler({}, float("inf"), config.series.gap_factor)  # no quiet period
    with ReaderPool.from_config(config) as pool:
        for future in [pool.submit(p) for p in to_read]:
            outcome = future.result()
            if outcome.rejection is not None:
                prefix = "incomplete: " if outcome.rejection.kind == "incomplete" else ""
                found.rejected.append((outcome.path, prefix + outcome.rejection.reason))
                continue
            headers = [s.header for s in outcome.slices]
            admission, state = assembler.add(headers, 0.0)
            if admission is Admission.REPEAT:
                if not same_bytes(state.path, outcome.path):
                    found.rejected.append((outcome.path, f"SOPInstanceUID "
                                           f"{headers[0].sop_instance_uid} also in "
                                           f"{state.path}, with other content"))
                    continue
                found.duplicates.setdefault(state.series_uid, []).append(outcome.path)
            elif keep_pixels:
                found.slices.setdefault(state.series_uid, []).extend(outcome.slices)
            found.files.setdefault(state.series_uid, []).append(outcome.path)
    found.series = dict(assembler.series)
    return found


def survey(paths: Iterable[str | Path], config: Config = Config()) -> Survey:
    """Read every file under `paths` and describe the series and the rejected files."""
    found = collect(paths, config)
    series = [_describe(state, found.files[uid], found.duplicates.get(uid, []), config)
              for uid, state in found.series.items()]
    return Survey(tuple(sorted(series, key=lambda s: (s.modality, s.series_uid))),
                  tuple(found.rejected))


def _describe(state: SeriesState, files: list[str], duplicates: list[str],
              config: Config) -> SeriesSurvey:
    planes = state.planes
    geometry = analyse_geometry(planes, config.series.gap_factor)
    problems = [str(p) for p in geometry.problems]
    problems += [f"{p} repeats an earlier file (same SOPInstanceUID and content)"
                 for p in duplicates]
    counts = {p.expected_count for p in planes}
    expected = next(iter(counts)) if len(counts) == 1 else None
    if len(counts) > 1:
        shown = ", ".join("none" if c is None else str(c) for c in counts)
        problems.append(f"slices disagree on the expected count ({shown}): completion would "
                        "wait for the quiet period")
    elif expected is not None and expected != len(planes):
        problems.append(f"{len(planes)} slices but the tags promise {expected}")
    first = planes[0]
    return SeriesSurvey(
        series_uid=state.series_uid, study_uid=state.study_uid, modality=state.modality,
        description=first.series_description, n_slices=len(planes), rows=first.rows,
        columns=first.columns,
        spacing_mm=(first.spacing_mm[0], first.spacing_mm[1],
                    None if geometry.slice_spacing_mm is None
                    else round(geometry.slice_spacing_mm, 4)),
        expected_slices=expected,
        complete=state.complete, problems=tuple(problems), files=tuple(files))
