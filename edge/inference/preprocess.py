"""Slice -> network input, shared by training and deployment (pure numpy and scipy).

Three steps, each a pure function:

1. Geometry (`slice_grid`): the network sees a size x size grid at the model's pixel
   spacing, centred on the slice. Axial slices are turned to one canonical orientation
   (patient's left to the right, posterior down, as HFS is displayed) whatever the
   patient position, so a feet-first or prone scan looks like the training data. The grid
   maps every network pixel to the original pixel and to patient coordinates (mm).
2. Resampling (`resample`): anti-aliased when shrinking, linear interpolation.
3. Intensity (`normalise`): CT Hounsfield windows, MR z-score inside the body mask (and,
   if the model asks, its T1/T2 weighting as a channel), PET SUVbw from the
   radiopharmaceutical tags.

A 2.5D model (`ModelSpec.context_slices`) sees each slice with its neighbours in
anatomical order: `neighbours` says which, `with_neighbours` stacks them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import affine_transform, gaussian_filter

from edge.errors import DicomError
from edge.inference.spec import WEIGHTING_CODES, Intensity, ModelSpec
from edge.values import Slice, SliceHeader

FILL = {"CT": -1024.0, "MR": 0.0, "PT": 0.0}   # physical value outside the scanned field


@dataclass(frozen=True)
class SliceGrid:
    """Where network pixel (u, v) lies: in patient space and on the original slice.

    patient(u, v) = origin_mm + u * u_step_mm + v * v_step_mm
    pixel(u, v)   = pixel_origin + u * pixel_u + v * pixel_v     (row, column)
    """

    size: int
    spacing_mm: float
    origin_mm: tuple[float, float, float]
    u_step_mm: tuple[float, float, float]
    v_step_mm: tuple[float, float, float]
    pixel_origin: tuple[float, float]
    pixel_u: tuple[float, float]
    pixel_v: tuple[float, float]

    def to_patient(self, uv: np.ndarray) -> np.ndarray:
        """(N, 2) network pixel coordinates -> (N, 3) patient coordinates in mm."""
        uv = np.asarray(uv, float)
        return (np.asarray(self.origin_mm) + uv[:, :1] * np.asarray(self.u_step_mm)
                + uv[:, 1:2] * np.asarray(self.v_step_mm))

    def to_pixel(self, uv: np.ndarray) -> np.ndarray:
        """(N, 2) network pixel coordinates -> (N, 2) original (row, column)."""
        uv = np.asarray(uv, float)
        return (np.asarray(self.pixel_origin) + uv[:, :1] * np.asarray(self.pixel_u)
                + uv[:, 1:2] * np.asarray(self.pixel_v))


def slice_grid(header: SliceHeader, size: int, spacing_mm: float) -> SliceGrid:
    """The network grid for one slice: centred, canonical orientation for axial slices."""
    row_dir = np.asarray(header.orientation[:3])     # along a row: increasing column
    col_dir = np.asarray(header.orientation[3:])     # down a column: increasing row
    d_row, d_col = header.spacing_mm
    ipp = np.asarray(header.position_mm)
    centre = (ipp + (header.columns - 1) / 2 * d_col * row_dir
              + (header.rows - 1) / 2 * d_row * col_dir)
    e_u, e_v = _canonical_axes(row_dir, col_dir)
    half = (size - 1) / 2
    origin = centre - half * spacing_mm * (e_u + e_v)
    u_step, v_step = spacing_mm * e_u, spacing_mm * e_v

    def pixel(vector):  # patient displacement -> (row, column) displacement
        return (float(vector @ col_dir / d_row), float(vector @ row_dir / d_col))

    return SliceGrid(size, spacing_mm, tuple(origin), tuple(u_step), tuple(v_step),
                     pixel(origin - ipp), pixel(u_step), pixel(v_step))


def _canonical_axes(row_dir: np.ndarray, col_dir: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(down, right) unit vectors of the network image."""
    normal = np.cross(row_dir, col_dir)
    if abs(normal[2]) < 0.8:
        return col_dir, row_dir          # not axial: keep the scanner's own orientation
    right, down = (row_dir, col_dir) if abs(row_dir[0]) >= abs(col_dir[0]) else (col_dir, row_dir)
    return down * np.sign(down[1] or 1), right * np.sign(right[0] or 1)


def resample(image: np.ndarray, grid: SliceGrid, fill: float = 0.0, order: int = 1,
             antialias: bool = True) -> np.ndarray:
    """Sample `image` (rows, columns) on the network grid (size, size), float32."""
    matrix = np.array([[grid.pixel_u[0], grid.pixel_v[0]], [grid.pixel_u[1], grid.pixel_v[1]]])
    if antialias:
        shrink = np.abs(matrix).sum(axis=1)            # original pixels per network pixel
        sigma = np.maximum(shrink - 1, 0) / 2
        if sigma.max() > 0.1:
            image = gaussian_filter(image, sigma, mode="nearest")
    return affine_transform(image, matrix, offset=grid.pixel_origin, output_shape=(grid.size,) * 2,
                            order=order, mode="constant", cval=fill).astype(np.float32)


def normalise(values: np.ndarray, header: SliceHeader, spec: ModelSpec) -> np.ndarray:
    """Physical values on the network grid -> (channels, size, size) network input."""
    intensity = spec.intensity
    if intensity.kind == "ct_windows":
        return np.stack([(np.clip(values, lo, hi) - lo) / (hi - lo)
                         for lo, hi in intensity.windows]).astype(np.float32)
    if intensity.kind == "mr_zscore":
        body = values > 0.1 * np.percentile(values, 99)
        inside = values[body] if body.sum() >= 64 else values.ravel()
        z = np.clip((values - inside.mean()) / (inside.std() or 1.0), -intensity.clip,
                    intensity.clip)
        if intensity.weighting:
            return np.stack([z, np.full_like(z, WEIGHTING_CODES.get(header.mr_weighting, 0.0))
                             ]).astype(np.float32)
        return z[None].astype(np.float32)
    suv = values * suv_factor(header)
    return np.clip(suv / intensity.scale, 0, intensity.clip)[None].astype(np.float32)


def preprocess(plane: Slice, spec: ModelSpec) -> tuple[np.ndarray, SliceGrid]:
    """One slice -> (network input (channels, size, size), its grid)."""
    header = plane.header
    if header.modality != spec.modality:
        raise DicomError(header.path, "does not match the model", tag="Modality (0008,0060)",
                         value=header.modality, expected=spec.modality)
    grid = slice_grid(header, spec.size, spec.spacing_mm)
    values = resample(plane.pixels(), grid, FILL[spec.modality])
    return normalise(values, header, spec), grid


def suv_factor(header: SliceHeader) -> float:
    """SUVbw per Bq/ml for one PET slice: weight (g) / injected dose decayed to the time the
    image is decay-corrected to (DecayCorrection START: series start; ADMIN: injection;
    NONE: the slice's own acquisition time).

    Raises DicomError naming the missing or unusable tag.
    """
    pet, path = header.pet, header.path
    if pet is None or header.units.upper() != "BQML":
        raise DicomError(path, "cannot be converted to SUV", tag="Units (0054,1001)",
                         value=header.units, expected="BQML (activity concentration in Bq/ml)")
    for value, tag, what in (
            (pet.patient_weight_kg, "PatientWeight (0010,1030)", "the weight in kg"),
            (pet.injected_dose_bq, "RadionuclideTotalDose (0018,1074)", "the dose in Bq"),
            (pet.half_life_s, "RadionuclideHalfLife (0018,1075)", "the half-life in s"),
            (pet.injection_time, "RadiopharmaceuticalStartDateTime (0018,1078)",
             "the injection time")):
        if not value:
            raise DicomError(path, "missing; SUVbw cannot be computed", tag=tag,
                             expected=what)
    reference = {"START": pet.series_time, "ADMIN": pet.injection_time,
                 "NONE": pet.acquisition_time}.get(pet.decay_correction.upper())
    if reference is None:
        raise DicomError(path, "has no usable reference time", tag="DecayCorrection (0054,1102)",
                         value=pet.decay_correction,
                         expected="START (with SeriesTime), ADMIN or NONE (with AcquisitionTime)")
    elapsed = (reference - pet.injection_time).total_seconds()
    decayed_dose = pet.injected_dose_bq * 2 ** (-elapsed / pet.half_life_s)
    return pet.patient_weight_kg * 1000.0 / decayed_dose


def image_u8(network_input: np.ndarray, intensity: Intensity) -> np.ndarray:
    """The first channel of a (channels, size, size) network input as uint8 over the
    range `normalise` gives it (0-1 for CT windows, +-clip for MR, 0-clip for PET)."""
    low, high = {"ct_windows": (0.0, 1.0), "mr_zscore": (-intensity.clip, intensity.clip),
                 "pet_suv": (0.0, intensity.clip)}[intensity.kind]
    return np.clip(np.rint((network_input[0] - low) * (255 / (high - low))), 0, 255
                   ).astype(np.uint8)


def neighbours(index: int, count: int, context: int) -> list[int]:
    """Which slices (indices in anatomical order, of `count`) a 2.5D model sees beside
    slice `index`: one below, one above, two below, two above, ... to `context` each side.
    Beyond either end of the series the end slice stands in for the missing ones."""
    return [min(max(index + side * step, 0), count - 1)
            for step in range(1, context + 1) for side in (-1, 1)]


def with_neighbours(centre: np.ndarray, others: Sequence[np.ndarray],
                    image_channels: int) -> np.ndarray:
    """One 2.5D network input, float32: the pixel channels (the first `image_channels`) of
    the slice, then those of each neighbour in `neighbours` order, then the slice's own
    descriptive channels (an MR weighting code). The slice comes first, so a 2D model's
    stem fits it with zero weights on the neighbours (`models.transfer.fit_stem`) and
    `image_u8` shows it. With no neighbours, the slice's input as it is."""
    if not others:
        return centre
    return np.concatenate([centre[:image_channels], *(o[:image_channels] for o in others),
                           centre[image_channels:]], dtype=np.float32)


def held(network_input: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """A slice's input as kept while it waits for its neighbours: float16 for a 2.5D model,
    halving what a series in progress holds (training holds its inputs so too), unchanged
    for a 2D one, which keeps nothing."""
    return network_input.astype(np.float16) if spec.context_slices else network_input
