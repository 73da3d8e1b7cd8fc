"""Slice order and geometry checks for one series (pure).

Slices are ordered by ImagePositionPatient projected on the normal of
ImageOrientationPatient: never by InstanceNumber or file name, which scanners and routers
number as they please.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge.values import SliceHeader

ORIENTATION_TOLERANCE = 1e-3     # direction cosines
SPACING_TOLERANCE = 1e-3         # relative, in-plane pixel spacing


@dataclass(frozen=True)
class GeometryProblem:
    """One thing wrong with a series' geometry; `kind` is stable, `detail` is for people."""

    kind: str    # gap | duplicate_position | mixed_orientation | mixed_matrix | mixed_spacing
    #              | missing_slices
    detail: str

    def __str__(self) -> str:
        return self.detail


@dataclass(frozen=True)
class SeriesGeometry:
    """Planes in anatomical order and what is wrong with them."""

    order: tuple[int, ...]             # indices into the input, ascending along the normal
    positions_mm: tuple[float, ...]    # each ordered plane's position along the normal
    slice_spacing_mm: float | None     # median distance between neighbouring planes
    problems: tuple[GeometryProblem, ...]

    @property
    def contiguous(self) -> bool:
        """True when the planes form one regular stack with nothing missing or doubled."""
        return not self.problems


def analyse_geometry(planes: Sequence[SliceHeader], gap_factor: float = 1.5) -> SeriesGeometry:
    """Order `planes` along the slice normal and list their geometry problems.

    The reference normal is the most common orientation's, so one stray slice does not
    reorder the rest. A gap is a step more than `gap_factor` times the median step.
    """
    if not planes:
        return SeriesGeometry((), (), None, ())
    orientations = Counter(_rounded(p.orientation) for p in planes)
    common = orientations.most_common(1)[0][0]
    reference = next(p for p in planes if _rounded(p.orientation) == common)
    positions = np.array([p.position_mm for p in planes]) @ reference.normal
    order = np.argsort(positions, kind="stable")
    ordered = positions[order]
    steps = np.diff(ordered)
    duplicate = steps < _duplicate_tolerance(steps)
    spacing = float(np.median(steps[~duplicate])) if (~duplicate).any() else None
    problems = [
        *_mixed_orientation(planes, reference),
        *_mixed("mixed_matrix", "matrix size", [(p.rows, p.columns) for p in planes],
                lambda m: f"{m[0]}x{m[1]}"),
        *_mixed("mixed_spacing", "pixel spacing",
                [tuple(round(s, 3) for s in p.spacing_mm) for p in planes],
                lambda s: f"{s[0]:g}x{s[1]:g} mm"),
        *_duplicates(ordered, duplicate),
        *_gaps(ordered, steps, duplicate, spacing, gap_factor),
        *_short_of_count(planes),
    ]
    return SeriesGeometry(tuple(int(i) for i in order), tuple(float(z) for z in ordered),
                          spacing, tuple(problems))


def _short_of_count(planes: Sequence[SliceHeader]) -> list[GeometryProblem]:
    """Fewer planes than every one of them says the series has."""
    counts = {p.expected_count for p in planes}
    if len(counts) != 1 or None in counts or len(planes) >= (count := counts.pop()):
        return []
    return [GeometryProblem("missing_slices", f"only {len(planes)} of the {count} slices "
                            "the series declares (ImagesInAcquisition or NumberOfSlices) "
                            "arrived")]


def _rounded(orientation) -> tuple[float, ...]:
    return tuple(round(v / ORIENTATION_TOLERANCE) for v in orientation)


def _duplicate_tolerance(steps: np.ndarray) -> float:
    """Planes closer than this are at the same position: 1 % of a typical step, >= 1 um."""
    positive = steps[steps > 0]
    return max(1e-3, 0.01 * float(np.median(positive))) if positive.size else 1e-3


def _mixed_orientation(planes, reference) -> list[GeometryProblem]:
    ref = np.asarray(reference.orientation)
    odd = [p for p in planes
           if np.abs(np.asarray(p.orientation) - ref).max() > ORIENTATION_TOLERANCE]
    if not odd:
        return []
    return [GeometryProblem("mixed_orientation",
                            f"{len(odd)} of {len(planes)} slices have another orientation than "
                            f"{[round(v, 4) for v in reference.orientation]}, e.g. "
                            f"{[round(v, 4) for v in odd[0].orientation]}")]


def _mixed(kind: str, what: str, values: list, show) -> list[GeometryProblem]:
    counts = Counter(values)
    if len(counts) == 1:
        return []
    listed = ", ".join(f"{show(v)} ({n} slices)" for v, n in counts.most_common())
    return [GeometryProblem(kind, f"mixed {what}: {listed}")]


def _duplicates(ordered: np.ndarray, duplicate: np.ndarray) -> list[GeometryProblem]:
    if not duplicate.any():
        return []
    where = sorted({round(float(ordered[i]), 3) for i in np.flatnonzero(duplicate)})
    shown = ", ".join(f"{z:g}" for z in where[:5]) + (" ..." if len(where) > 5 else "")
    return [GeometryProblem("duplicate_position",
                            f"{int(duplicate.sum())} slices share a position with another "
                            f"(at {shown} mm along the normal)")]


def _gaps(ordered, steps, duplicate, spacing, gap_factor) -> list[GeometryProblem]:
    if spacing is None:
        return []
    problems = []
    for i in np.flatnonzero(~duplicate & (steps > gap_factor * spacing)):
        problems.append(GeometryProblem(
            "gap", f"gap of {steps[i]:.2f} mm between slices at {ordered[i]:.2f} and "
                   f"{ordered[i + 1]:.2f} mm along the normal (median spacing {spacing:.2f} mm)"))
    return problems
