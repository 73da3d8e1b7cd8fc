"""Analyse one complete series in batch: order, preprocess, infer, find lesions.

Used by `scanside analyze`, by evaluation and by the appliance when a series completes
without having been streamed. A series that cannot be analysed is reported as failed
with the reason, never as negative.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edge.backends.base import Backend
from edge.errors import BackendError, ScansideError
from edge.inference.postprocess import find_lesions
from edge.inference.preprocess import image_u8, preprocess
from edge.series.geometry import GeometryProblem, SeriesGeometry, analyse_geometry
from edge.values import SeriesResult, Slice, SlicePrediction

# Geometry problems that make a 3D analysis meaningless rather than merely less certain.
FATAL_PROBLEMS = ("mixed_orientation", "mixed_matrix", "mixed_spacing")
# Problems that leave part of the body unexamined: no negative can be given.
INCOMPLETE_PROBLEMS = ("missing_slices",)


@dataclass(frozen=True)
class SeriesPrediction:
    """Everything the network said about a series, slices in anatomical order."""

    planes: tuple[Slice, ...]
    predictions: tuple[SlicePrediction, ...]
    geometry: SeriesGeometry
    timings_ms: dict


def predict(planes: Sequence[Slice], backend: Backend, batch_size: int = 8,
            clock: Callable[[], float] = time.perf_counter,
            raw: list | None = None) -> SeriesPrediction:
    """Run the network over every slice, in anatomical order, `batch_size` at a time.

    The stored maps are quantised to uint8; pass a list as `raw` to also receive each
    batch's float outputs (lesion, tumour), as parity checks need.
    """
    geometry = analyse_geometry([p.header for p in planes])
    ordered = tuple(planes[i] for i in geometry.order)
    timings = {"preprocess": 0.0, "infer": 0.0}
    predictions: list[SlicePrediction] = []
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start:start + batch_size]
        t0 = clock()
        inputs, grids = zip(*(preprocess(p, backend.spec) for p in chunk), strict=True)
        t1 = clock()
        lesion, tumour = backend.infer(np.stack(inputs))
        t2 = clock()
        if not (np.isfinite(lesion).all() and np.isfinite(tumour).all()):
            raise BackendError(f"the {backend.name} backend gave NaN or infinite probabilities "
                               f"for slices {start}-{start + len(chunk) - 1}: the analysis is "
                               "not valid")
        if raw is not None:
            raw.append((lesion, tumour))
        timings["preprocess"] += (t1 - t0) * 1e3
        timings["infer"] += (t2 - t1) * 1e3
        for plane, image, grid, prob, tumour_p in zip(chunk, inputs, grids, lesion, tumour,
                                                      strict=True):
            predictions.append(SlicePrediction(
                plane.header.instance_key, to_u8(prob[0]), float(tumour_p[0]), grid,
                image_u8(image, backend.spec.intensity)))
    return SeriesPrediction(ordered, tuple(predictions), geometry, timings)


def analyze_series(planes: Sequence[Slice], backend: Backend | None, version: int = 1,
                   batch_size: int = 8) -> SeriesResult:
    """The result of one complete series: positive, negative, or failed with the reason."""
    first = planes[0].header
    base = dict(series_uid=first.series_uid, study_uid=first.study_uid,
                modality=first.modality, version=version, n_slices=len(planes))
    if backend is None:
        return SeriesResult(status="failed", reason=f"no model for modality "
                            f"{first.modality!r}", **base)
    geometry = analyse_geometry([p.header for p in planes])
    fatal = [str(p) for p in geometry.problems if p.kind in FATAL_PROBLEMS]
    if fatal:
        return SeriesResult(status="failed", reason="; ".join(fatal), **base)
    try:
        prediction = predict(planes, backend, batch_size)
    except ScansideError as error:
        return SeriesResult(status="failed", reason=str(error), **base)
    return summarise(prediction, backend, base)


def summarise(prediction: SeriesPrediction, backend: Backend, base: dict) -> SeriesResult:
    """Find the 3D lesions in a series prediction and state the result."""
    start = time.perf_counter()
    spacing = slice_spacing_mm(prediction)
    findings = find_lesions(prediction.predictions, spacing, backend.spec)
    timings = dict(prediction.timings_ms)
    timings["postprocess"] = (time.perf_counter() - start) * 1e3
    status, reason = verdict(findings, prediction.geometry.problems)
    return SeriesResult(status=status, reason=reason, findings=tuple(findings),
                        timings_ms=timings, **base)


def verdict(findings: Sequence, problems: Sequence[GeometryProblem]) -> tuple[str, str | None]:
    """Status and reason of an analysed series. Findings are reported whatever else is
    wrong; "negative" is said only of a whole series: one short of the slices it
    declares is failed, since the missing ones were never looked at."""
    reason = "; ".join(str(p) for p in problems) or None
    if findings:
        return "positive", reason
    if any(p.kind in INCOMPLETE_PROBLEMS for p in problems):
        return "failed", f"no lesion in the slices received, but {reason}"
    return "negative", reason


def slice_spacing_mm(prediction: SeriesPrediction) -> float:
    """Distance between slices: the median step, or the slice thickness for one slice."""
    if prediction.geometry.slice_spacing_mm:
        return prediction.geometry.slice_spacing_mm
    return prediction.planes[0].header.slice_thickness_mm or 1.0


def to_u8(probability: np.ndarray) -> np.ndarray:
    """Probabilities as stored in a SlicePrediction: x 255, rounded, uint8."""
    return np.clip(np.rint(probability * 255), 0, 255).astype(np.uint8)
