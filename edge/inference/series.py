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
from edge.errors import ScansideError
from edge.inference.postprocess import find_lesions
from edge.inference.preprocess import (
    SliceGrid,
    held,
    image_u8,
    neighbours,
    preprocess,
    with_neighbours,
)
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
    """Run the network over every slice, in anatomical order, `batch_size` at a time; a
    2.5D model sees each with its neighbours, each slice preprocessed once.

    The stored maps are quantised to uint8; pass a list as `raw` to also receive each
    batch's float outputs (lesion, tumour), as parity checks need.
    """
    spec = backend.spec
    geometry = analyse_geometry([p.header for p in planes])
    ordered = tuple(planes[i] for i in geometry.order)
    timings = {"preprocess": 0.0, "infer": 0.0}
    predictions: list[SlicePrediction] = []
    prepared: dict[int, tuple[np.ndarray, SliceGrid]] = {}
    for start in range(0, len(ordered), batch_size):
        chunk = range(start, min(start + batch_size, len(ordered)))
        t0 = clock()
        for i in range(max(0, start - spec.context_slices),
                       min(len(ordered), chunk.stop + spec.context_slices)):
            if i not in prepared:
                image, grid = preprocess(ordered[i], spec)
                prepared[i] = held(image, spec), grid
        inputs = np.stack([with_neighbours(prepared[i][0], [
            prepared[j][0] for j in neighbours(i, len(ordered), spec.context_slices)],
            spec.intensity.image_channels) for i in chunk])
        t1 = clock()
        lesion, tumour = backend.infer(inputs)
        t2 = clock()
        if raw is not None:
            raw.append((lesion, tumour))
        timings["preprocess"] += (t1 - t0) * 1e3
        timings["infer"] += (t2 - t1) * 1e3
        for i, prob, tumour_p in zip(chunk, lesion, tumour, strict=True):
            image, grid = prepared[i]
            predictions.append(SlicePrediction(
                ordered[i].header.instance_key, to_u8(prob[0]), float(tumour_p[0]), grid,
                image_u8(image, spec.intensity)))
        for i in [i for i in prepared if i < chunk.stop - spec.context_slices]:
            del prepared[i]                  # no later slice needs it
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
