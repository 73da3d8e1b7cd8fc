"""Probability maps -> lesions in patient coordinates (pure numpy and scipy).

Across a series: threshold, 3D connected components over the slices in anatomical order,
drop components below the minimum volume or whose probability stays below the detection
threshold (or, in a series where one reaches it, below the lower companion threshold),
then measure each one (centre in DICOM patient coordinates weighted by
probability, volume, equivalent diameter, probability, slice range, and an outline on its
largest slice for overlays). On one slice: the 2D components that can raise a
provisional alert while the series is still arriving.

A lesion's probability is the highest pixel probability inside it, or the mean over its
pixels when the model's thresholds say `lesion_score = "mean"`; under `slice_head` it is
capped by the highest slice-level tumour probability over the slices it spans
(calibration chooses both). The pixel maps saturate (true and false spots alike reach
1.0, and the maps are kept as uint8), so the peak alone cannot rank findings; the mean
still can, and so can a well-trained slice head: on the held-out PET set the head
separated true from false findings with an AUC of 0.94 against 0.64 for the peak, and on
the held-out CT set, whose head is weak, the mean did with 0.88.

Under `lesion_score = "classifier"` a lesion's probability is instead a logistic
regression (fitted by `scanside calibrate`) over its measures (`LESION_FEATURES`): its
pixel probabilities, size and slices, the slice head over them, how much the network
input inside it stands out from a ring around it, and whether that goes on past its end
slices as a vessel's does, which is why each slice prediction keeps its input's first
channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import contourpy
import numpy as np
from scipy import ndimage

from edge.inference.spec import LESION_FEATURES, ModelSpec
from edge.values import Finding, SlicePrediction

MAX_OUTLINE_POINTS = 96
NEIGHBOURS = np.ones((3, 3, 3), bool)   # voxels touching by a face, edge or corner join
RING = 3                # pixels around a candidate whose input its contrast is measured against
BEYOND_MM = 5.0         # how far past a candidate's end slices its persistence is looked for


def find_lesions(predictions: Sequence[SlicePrediction], slice_spacing_mm: float,
                 spec: ModelSpec) -> list[Finding]:
    """Lesions in a series whose slice predictions are in anatomical order, largest
    probability first."""
    found = reported([f for f, _ in candidate_lesions(predictions, slice_spacing_mm, spec)],
                     spec.thresholds.detection_probability,
                     spec.thresholds.companion_probability)
    return sorted(found, key=lambda f: -f.probability)


def reported(candidates: Sequence[Finding], detection: float,
             companion: float | None = None) -> list[Finding]:
    """The candidates reported: those whose probability reaches `detection`, and, where
    one does, those reaching `companion` beside it. The series is called positive by the
    first alone, so its specificity stays `detection`'s; a less certain finding is worth
    reporting in a series already called positive (a patient with one lesion often has
    more)."""
    if companion is not None and any(f.probability >= detection for f in candidates):
        detection = companion
    return [f for f in candidates if f.probability >= detection]


def candidate_lesions(predictions: Sequence[SlicePrediction], slice_spacing_mm: float,
                      spec: ModelSpec) -> list[tuple[Finding, dict[str, float]]]:
    """Every 3D component above the pixel threshold and the minimum volume, whatever its
    probability, with its measures (`LESION_FEATURES`)."""
    if not predictions:
        return []
    probabilities = np.stack([p.lesion_probability for p in predictions])
    mask = probabilities >= spec.thresholds.lesion_probability
    if not mask.any():
        return []
    images = (None if any(p.image_u8 is None for p in predictions)
              else np.stack([p.image_u8 for p in predictions]))
    if images is None and spec.thresholds.lesion_score == "classifier":
        raise ValueError("the lesion classifier needs each slice's network input (image_u8)")
    heads = np.array([p.tumour_probability for p in predictions])
    # Components are labelled inside the box around every voxel above the threshold:
    # lesions are small against a series, and labelling costs by the voxel.
    around = tuple(slice(*_extent(mask.any(axis=other)))
                   for other in ((1, 2), (0, 2), (0, 1)))
    labels, count = ndimage.label(mask[around], structure=NEIGHBOURS)
    voxel_mm3 = spec.spacing_mm**2 * slice_spacing_mm
    found = []
    for index, inner in enumerate(ndimage.find_objects(labels), start=1):
        component = labels[inner] == index
        box = tuple(slice(a.start + b.start, a.start + b.stop)
                    for a, b in zip(around, inner, strict=True))
        volume = float(component.sum()) * voxel_mm3
        if volume < spec.thresholds.min_volume_mm3:
            continue
        measures = _measures(component, box, probabilities, heads, images, voxel_mm3,
                             slice_spacing_mm)
        if spec.thresholds.lesion_score == "classifier":
            probability = spec.lesion_classifier.probability(measures)
        else:
            probability = _score(probabilities[box][component], spec)
            if spec.thresholds.slice_head:
                probability = min(probability, float(heads[box[0]].max()))
        found.append((_finding(component, box, probabilities, predictions, volume,
                               probability), measures))
    return found


def _extent(present: np.ndarray) -> tuple[int, int]:
    """First and one-past-last index where `present` is true (somewhere)."""
    where = np.flatnonzero(present)
    return int(where[0]), int(where[-1]) + 1


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)     # uint8 maps: 0 and 1 are 0.5/255 from their neighbours
    return float(np.log(p / (1 - p)))


def _measures(component: np.ndarray, box: tuple[slice, ...], probabilities: np.ndarray,
              heads: np.ndarray, images: np.ndarray | None, voxel_mm3: float,
              slice_spacing_mm: float) -> dict:
    """A candidate lesion's LESION_FEATURES."""
    pixels = probabilities[box][component]
    span = heads[box[0]]
    depth_mm = component.shape[0] * slice_spacing_mm
    cross_section_mm = 2 * np.sqrt(component.sum() * voxel_mm3 / depth_mm / np.pi)
    measures = {
        "peak_logit": _logit(pixels.max()), "mean_logit": _logit(pixels.mean()),
        "log_soft_volume": float(np.log1p(pixels.sum() * voxel_mm3)),
        "log_volume": float(np.log(component.sum() * voxel_mm3)),
        "slices": float(component.shape[0]),
        "log_depth_ratio": float(np.log(depth_mm / cross_section_mm)),
        "head_max_logit": _logit(span.max()), "head_mean_logit": _logit(span.mean()),
        "saturated": float((pixels >= 0.99).mean()),
    }
    if images is None:
        return measures | {name: float("nan") for name in LESION_FEATURES
                           if name not in measures}
    # The ring: up to RING pixels around the component, in the slices around it too.
    wide = tuple(slice(max(0, s.start - RING), s.stop + RING) for s in box)
    inside = np.zeros(probabilities[wide].shape, bool)
    inside[tuple(slice(s.start - w.start, s.stop - w.start)
                 for s, w in zip(box, wide, strict=True))] = component
    ring = ndimage.binary_dilation(inside, iterations=RING) & ~inside
    image = images[wide].astype(np.float32) / 255.0
    within, around = image[inside], image[ring]
    contrast = float(within.mean() - around.mean()) if around.size else 0.0
    spread = float(around.std()) if around.size else 0.0
    return measures | {"image_mean": float(within.mean()), "image_max": float(within.max()),
                       "contrast": contrast, "contrast_sd": contrast / (spread + 1e-3),
                       "abs_contrast": abs(contrast),
                       "abs_contrast_sd": abs(contrast) / (spread + 1e-3),
                       "persistence": _persistence(component, box, images, slice_spacing_mm,
                                                   float(around.mean()) if around.size
                                                   else float(within.mean()), contrast)}


def _persistence(component: np.ndarray, box: tuple[slice, ...], images: np.ndarray,
                 slice_spacing_mm: float, ring_mean: float, contrast: float) -> float:
    """How much of a candidate's contrast goes on past its ends: over the footprint of
    each end slice, the network input BEYOND_MM further on, less the ring's, as a fraction
    of the candidate's own contrast (clipped to -1..2), averaged over the ends the series
    reaches. A lesion ends (near 0); a vessel seen along its length goes on (near 1). 0
    when no end has a slice beyond it or the candidate does not stand out at all."""
    if abs(contrast) < 1e-3:
        return 0.0
    step = max(1, round(BEYOND_MM / slice_spacing_mm))
    rows, columns = box[1], box[2]
    fractions = []
    for end, beyond in ((0, box[0].start - step), (-1, box[0].stop - 1 + step)):
        if 0 <= beyond < len(images):
            under = images[beyond, rows, columns][component[end]].astype(np.float32) / 255.0
            fractions.append(np.clip((under.mean() - ring_mean) / contrast, -1.0, 2.0))
    return float(np.mean(fractions)) if fractions else 0.0


def _finding(component: np.ndarray, box: tuple[slice, ...], probabilities: np.ndarray,
             predictions: Sequence[SlicePrediction], volume: float,
             probability: float) -> Finding:
    k, u, v = np.nonzero(component)         # in C order: slice after slice
    u, v = u + box[1].start, v + box[2].start
    weights = probabilities[box][component]
    firsts = np.flatnonzero(np.diff(k, prepend=-1))     # where each slice's voxels begin
    points = np.concatenate([
        predictions[box[0].start + k[a]].grid.to_patient(np.stack([u[a:b], v[a:b]], axis=1))
        for a, b in zip(firsts, [*firsts[1:], len(k)], strict=True)])
    centre = (points * weights[:, None]).sum(axis=0) / weights.sum()
    areas = component.sum(axis=(1, 2))
    key = int(np.argmax(areas)) + box[0].start
    key_mask = np.zeros(probabilities.shape[1:], bool)
    key_mask[box[1:]] = component[key - box[0].start]
    return Finding(
        center_mm=tuple(float(c) for c in centre),
        diameter_mm=float((6 * volume / np.pi) ** (1 / 3)),
        volume_mm3=volume,
        probability=probability,
        slices=(box[0].start + int(k[0]), box[0].start + int(k[-1])),
        key_slice=key,
        outline=outline(key_mask, predictions[key].grid),
    )


def _score(probabilities: np.ndarray, spec: ModelSpec) -> float:
    """A slice lesion's probability from its pixels' (before any slice-head cap): their
    mean under "mean", else their peak (the classifier scores only series lesions)."""
    if spec.thresholds.lesion_score == "mean":
        return float(probabilities.mean())
    return float(probabilities.max())


def outline(mask: np.ndarray, grid) -> tuple[tuple[float, float], ...]:
    """The longest contour of a 2D mask, as (row, column) on the original slice."""
    padded = np.pad(mask.astype(np.float32), 1)
    lines = contourpy.contour_generator(z=padded).lines(0.5)
    if not lines:
        return ()
    line = max(lines, key=len)
    if len(line) > MAX_OUTLINE_POINTS:
        line = line[np.linspace(0, len(line) - 1, MAX_OUTLINE_POINTS).astype(int)]
    uv = line[:, ::-1] - 1.0                        # contourpy gives (x, y) = (v, u)
    return tuple((round(float(r), 1), round(float(c), 1)) for r, c in grid.to_pixel(uv))


@dataclass(frozen=True)
class SliceLesion:
    """A lesion seen on one slice: the material of a provisional alert."""

    center_mm: tuple[float, float, float]
    diameter_mm: float                  # of the circle with the same area
    probability: float


def lesions_on_slice(prediction: SlicePrediction, spec: ModelSpec) -> list[SliceLesion]:
    """2D components of one slice's probability map, most probable first; a component's
    probability is scored as a series' lesions are (peak or mean, capped by the slice's
    tumour probability under `slice_head`). Under the classifier, which weighs a whole 3D
    lesion, a slice's component is its peak capped by the slice head."""
    thresholds = spec.thresholds
    capped = thresholds.slice_head or thresholds.lesion_score == "classifier"
    cap = prediction.tumour_probability if capped else 1.0
    probability = prediction.lesion_probability
    labels, count = ndimage.label(probability >= spec.thresholds.lesion_probability,
                                  structure=np.ones((3, 3), bool))
    found = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        u, v = np.nonzero(labels[box] == index)
        u, v = u + box[0].start, v + box[1].start
        weights = probability[u, v]
        points = prediction.grid.to_patient(np.stack([u, v], axis=1))
        centre = (points * weights[:, None]).sum(axis=0) / weights.sum()
        diameter = 2 * np.sqrt(len(u) * spec.spacing_mm**2 / np.pi)
        found.append(SliceLesion(tuple(float(c) for c in centre), float(diameter),
                                 min(_score(weights, spec), cap)))
    return sorted(found, key=lambda lesion: -lesion.probability)
