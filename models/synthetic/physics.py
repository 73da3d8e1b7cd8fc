"""Modality physics: tissues and lesions -> CT Hounsfield units, MR signal, PET activity.

Each case draws its own appearance (CT contrast phase, MR weighting and fat suppression,
PET uptake and count level, noise, blur), so no two series look alike. A slice is rendered
with partial volume through its thickness (sub-slices averaged), in-plane blur (the
system's point spread), 3D-consistent organ texture, then noise: Gaussian for CT, Rician
for MR (after a smooth bias field and an arbitrary scaling), Poisson counts for PET.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from models.synthetic.anatomy import (
    CYST_UPTAKE,
    DEFAULT_MIX,
    ORGAN_TISSUE,
    T1_SHARE,
    Grid,
    Lesion,
    Patient,
    Tissue,
    TrainingMix,
)

T = Tissue


@dataclass(frozen=True)
class Appearance:
    modality: str
    tissue: dict                   # Tissue -> value (HU, MR signal fraction, SUV)
    texture: float                 # organ heterogeneity amplitude, in value units
    blur_mm: float                 # Gaussian sigma of the in-plane point spread
    noise: float                   # CT: HU sigma; MR: fraction of liver signal; PET: counts
    scale: float = 1.0             # MR: arbitrary receiver scaling
    bias: float = 0.0              # MR: bias field strength
    weighting: str = ""            # MR: T1 or T2
    fat_suppressed: bool = False   # MR
    contrast_agent: str = ""       # CT: the intravenous agent of an enhanced series
    waves: tuple = ()              # 3D cosine waves for texture and bias


def sample_appearance(modality: str, rng: np.random.Generator,
                      mix: TrainingMix = DEFAULT_MIX) -> Appearance:
    """`mix.t1`: the share of MR series drawn T1-weighted (default T1_SHARE)."""
    waves = tuple((rng.normal(size=3) * rng.uniform(0.01, 0.05), rng.uniform(0, 2 * np.pi))
                  for _ in range(6))
    if modality == "CT":
        return _ct(rng, waves)
    if modality == "MR":
        return _mr(rng, waves, T1_SHARE if mix.t1 is None else mix.t1)
    if modality == "PT":
        return _pet(rng, waves)
    raise ValueError(f"modality {modality!r}: expected CT, MR or PT")


def _jitter(rng, values: dict, spread: float, floor: float = 1.0) -> dict:
    """Each value moved by a normal draw of `spread` times the value (at least `floor`, in
    the values' own units, so that values near zero move too)."""
    return {k: v + rng.normal(0, spread * max(abs(v), floor)) for k, v in values.items()}


CT_CONTRAST_AGENT = "IOHEXOL 350 MG I/ML"   # what an enhanced series' ContrastBolusAgent says


def _ct(rng, waves) -> Appearance:
    enhanced = rng.random() < 0.75
    tissue = {T.AIR: -1000, T.FAT: -100, T.MUSCLE: 55 if enhanced else 48, T.SOFT: 40,
              T.LUNG: -860, T.LIVER: 105 if enhanced else 58, T.SPLEEN: 115 if enhanced else 50,
              T.KIDNEY: 170 if enhanced else 32, T.BONE: 750, T.MARROW: 230,
              T.VESSEL: 165 if enhanced else 42, T.GAS: -950, T.CSF: 12, T.BLADDER: 8,
              T.DISC: 85}
    tissue = _jitter(rng, tissue, 0.08)
    tissue[T.AIR] = -1000.0
    return Appearance("CT", tissue, texture=rng.uniform(3, 9),
                      blur_mm=rng.uniform(0.35, 0.8), noise=rng.uniform(7, 22), waves=waves,
                      contrast_agent=CT_CONTRAST_AGENT if enhanced else "")


def _mr(rng, waves, t1_share: float) -> Appearance:
    weighting = "T1" if rng.random() < t1_share else "T2"
    fatsat = rng.random() < 0.4
    if weighting == "T1":
        tissue = {T.AIR: 0, T.FAT: 0.15 if fatsat else 1.0, T.MUSCLE: 0.35, T.SOFT: 0.38,
                  T.LUNG: 0.03, T.LIVER: 0.5, T.SPLEEN: 0.36, T.KIDNEY: 0.42, T.BONE: 0.05,
                  T.MARROW: 0.3 if fatsat else 0.75, T.VESSEL: rng.choice([0.08, 0.8]),
                  T.GAS: 0, T.CSF: 0.12, T.BLADDER: 0.1, T.DISC: 0.3}
    else:
        tissue = {T.AIR: 0, T.FAT: 0.12 if fatsat else 0.75, T.MUSCLE: 0.2, T.SOFT: 0.32,
                  T.LUNG: 0.04, T.LIVER: 0.22, T.SPLEEN: 0.45, T.KIDNEY: 0.5, T.BONE: 0.04,
                  T.MARROW: 0.2 if fatsat else 0.5, T.VESSEL: 0.05, T.GAS: 0, T.CSF: 1.0,
                  T.BLADDER: 1.0, T.DISC: 0.6}
    tissue = {k: max(0.0, float(v)) for k, v in _jitter(rng, tissue, 0.1, floor=0.05).items()}
    tissue[T.AIR] = tissue[T.GAS] = 0.0
    return Appearance("MR", tissue, texture=rng.uniform(0.01, 0.04),
                      blur_mm=rng.uniform(0.4, 1.0), noise=rng.uniform(0.015, 0.05),
                      scale=float(rng.uniform(150, 3000)), bias=rng.uniform(0.05, 0.3),
                      weighting=weighting, fat_suppressed=fatsat, waves=waves)


def _pet(rng, waves) -> Appearance:
    tissue = {T.AIR: 0, T.FAT: 0.35, T.MUSCLE: 0.7, T.SOFT: rng.uniform(0.9, 1.6), T.LUNG: 0.5,
              T.LIVER: rng.uniform(1.8, 2.8), T.SPLEEN: rng.uniform(1.5, 2.3),
              T.KIDNEY: rng.uniform(2.5, 8), T.BONE: 0.6, T.MARROW: rng.uniform(1.2, 2.0),
              T.VESSEL: rng.uniform(1.4, 2.2), T.GAS: 0.05, T.CSF: 0.3,
              T.BLADDER: rng.uniform(5, 40), T.DISC: 0.5}
    tissue = {k: max(0.0, float(v)) for k, v in _jitter(rng, tissue, 0.05).items()}
    return Appearance("PT", tissue, texture=rng.uniform(0.05, 0.2),
                      blur_mm=rng.uniform(5.0, 8.0) / 2.355, noise=rng.uniform(6, 25),
                      waves=waves)


def lesion_values(lesion: Lesion, a: Appearance) -> tuple[float, float]:
    """(value of the lesion, value of its core) in the modality's units."""
    host = a.tissue[ORGAN_TISSUE[lesion.organ]]
    s = lesion.strength
    if a.modality == "CT":
        if lesion.organ == "lung":
            solid = 20 + 40 * s
            return solid, solid
        if lesion.kind == "rim":
            return host + 30 + 40 * s, 15.0
        if lesion.kind == "cyst":
            return host + 10, 8.0
        return host + lesion.sign * (30 + 50 * s), host
    if a.modality == "MR":
        bright = a.weighting == "T2"
        if lesion.kind == "cyst":
            return host * 1.1, 0.95 if bright else 0.08
        if lesion.kind == "rim":
            return host * (1.4 if bright else 0.8), 0.85 if bright else 0.12
        factor = 1 + s * (1.5 if bright else -0.55) if lesion.organ != "lung" else 1
        value = host * factor if lesion.organ != "lung" else 0.25 + 0.2 * s
        return value, value
    uptake = max(host, 1.5) * lesion.uptake          # PET: SUV
    if lesion.kind == "rim":
        return uptake, max(host * 0.4, 0.3)
    if lesion.kind == "cyst":                        # a mildly avid cystic tumour
        return uptake * CYST_UPTAKE, uptake * CYST_UPTAKE
    return uptake, uptake


@dataclass(frozen=True)
class Plane:
    """One image plane: the DICOM geometry of a slice to render."""

    position_mm: np.ndarray      # ImagePositionPatient
    row_dir: np.ndarray          # first three ImageOrientationPatient values
    col_dir: np.ndarray          # last three
    spacing_mm: tuple[float, float]   # (between rows, between columns)
    rows: int
    columns: int
    thickness_mm: float

    def points(self, sub: int) -> np.ndarray:
        """(sub, rows*columns, 3) pixel centres across `sub` depths within the slice."""
        r = np.arange(self.rows) * self.spacing_mm[0]
        c = np.arange(self.columns) * self.spacing_mm[1]
        grid = (self.position_mm + r[:, None, None] * self.col_dir
                + c[None, :, None] * self.row_dir).reshape(-1, 3)
        normal = np.cross(self.row_dir, self.col_dir)
        depths = ((np.arange(sub) + 0.5) / sub - 0.5) * self.thickness_mm
        return grid[None] + depths[:, None, None] * normal


def render(patient: Patient, a: Appearance, plane: Plane, rng: np.random.Generator,
           sub: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """One slice: (values in physical units, lesion id per pixel: 0 or index + 1)."""
    points = plane.points(sub)
    flat = points.reshape(-1, 3)
    grid = Grid(points.reshape(sub, plane.rows, plane.columns, 3))
    tissue = patient.tissues(grid).reshape(-1)
    ids, core = (labels.reshape(-1) for labels in patient.lesion_ids(grid))
    lut = np.zeros(max(Tissue) + 1)
    for t, v in a.tissue.items():
        lut[t] = v
    values = lut[tissue]
    organs = np.isin(tissue, [T.LIVER, T.SPLEEN, T.KIDNEY, T.MUSCLE, T.SOFT])
    values[organs] += a.texture * _waves(flat[organs], a.waves)
    for i, lesion in enumerate(patient.lesions):
        hit = ids == i + 1
        if hit.any():
            solid, inner = lesion_values(lesion, a)
            values[hit] = np.where(core[hit], inner, solid)
    shape = (sub, plane.rows, plane.columns)
    image = values.reshape(shape).mean(axis=0)                 # partial volume in depth
    occupancy = (ids.reshape(shape) > 0).mean(axis=0)
    labels = np.where(occupancy >= 0.5, ids.reshape(shape).max(axis=0), 0).astype(np.uint8)
    sigma = (a.blur_mm / plane.spacing_mm[0], a.blur_mm / plane.spacing_mm[1])
    image = gaussian_filter(image, sigma)
    return _acquire(image, a, flat.reshape(shape + (3,))[sub // 2], rng), labels


def _waves(points: np.ndarray, waves) -> np.ndarray:
    total = np.zeros(len(points))
    for k, phase in waves:
        total += np.cos(points @ k + phase)
    return total / np.sqrt(len(waves))


def _acquire(image: np.ndarray, a: Appearance, points: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
    if a.modality == "CT":
        noise = gaussian_filter(rng.normal(0, 1, image.shape), 0.6)
        return image + noise * a.noise / noise.std()
    if a.modality == "MR":
        bias = np.exp(a.bias * _waves(points.reshape(-1, 3), a.waves[:3]).reshape(image.shape))
        signal = image * bias * a.scale
        sigma = a.noise * a.tissue[T.LIVER] * a.scale
        real = signal + rng.normal(0, sigma, image.shape)
        imaginary = rng.normal(0, sigma, image.shape)
        return np.sqrt(real**2 + imaginary**2)                 # Rician magnitude
    counts = rng.poisson(np.maximum(image, 0) * a.noise) / a.noise   # PET: SUV with counts
    return gaussian_filter(counts, 0.7)
