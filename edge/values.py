"""The frozen values that travel between the appliance's stages.

Each arrow of the data flow in DESIGN.md carries one of these. They hold plain data only;
the functions that make and consume them live with their stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

Vector3 = tuple[float, float, float]
Orientation = tuple[float, float, float, float, float, float]


@dataclass(frozen=True)
class Rescale:
    """Stored value -> physical value: ``physical = stored * slope + intercept``."""

    slope: float = 1.0
    intercept: float = 0.0


@dataclass(frozen=True)
class PetTags:
    """What SUV conversion needs from a PET slice; None where the file lacks the tag."""

    units: str                         # (0054,1001) Units: BQML, CNTS, GML, ...
    decay_correction: str              # (0054,1102) DecayCorrection: START, ADMIN or NONE
    injected_dose_bq: float | None     # RadionuclideTotalDose (0018,1074)
    half_life_s: float | None          # RadionuclideHalfLife (0018,1075)
    injection_time: datetime | None    # RadiopharmaceuticalStartDateTime or StudyDate + Time
    series_time: datetime | None       # SeriesDate + SeriesTime: START decay reference
    acquisition_time: datetime | None  # AcquisitionDate + AcquisitionTime of this slice
    patient_weight_kg: float | None    # PatientWeight (0010,1030)


@dataclass(frozen=True)
class Patient:
    """Patient identifiers. Never logged or published unless the operator allows it."""

    name: str = ""
    id: str = ""
    birth_date: str = ""


@dataclass(frozen=True)
class SliceHeader:
    """Everything known about one image plane before its pixels are decoded.

    Single-frame files give one header; an enhanced multi-frame file gives one per frame,
    each with the frame's own geometry.
    """

    path: str
    sop_instance_uid: str
    frame: int                          # 0-based frame index in the file
    n_frames: int                       # frames in the file
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str | None
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str
    rows: int
    columns: int
    bits_allocated: int                 # 8, 16 or 32 bits per stored value
    bits_stored: int                    # significant bits; the rest is masked
    signed: bool                        # PixelRepresentation 1
    position_mm: Vector3                # ImagePositionPatient: centre of the first pixel
    orientation: Orientation            # ImageOrientationPatient: row then column cosines
    spacing_mm: tuple[float, float]     # PixelSpacing: between rows, between columns
    slice_thickness_mm: float | None
    expected_count: int | None          # slices the series should have, from its tags
    instance_number: int | None
    rescale: Rescale
    units: str                          # unit of Slice.pixels(): HU, BQML, ... or "stored"
    series_description: str
    pet: PetTags | None = None
    mr_weighting: str = ""              # MR: "T1", "T2" or "" (proton density or unknown)
    contrast_agent: str = ""            # ContrastBolusAgent: "" when none is recorded
    patient: Patient = field(default=Patient(), repr=False)

    @property
    def instance_key(self) -> str:
        """Identifies this plane: the SOPInstanceUID, with the frame for multi-frame files."""
        if self.n_frames == 1:
            return self.sop_instance_uid
        return f"{self.sop_instance_uid}#{self.frame + 1}"

    @property
    def normal(self) -> np.ndarray:
        """Unit normal of the slice plane (row cosines x column cosines)."""
        row, col = np.asarray(self.orientation[:3]), np.asarray(self.orientation[3:])
        n = np.cross(row, col)
        return n / np.linalg.norm(n)


@dataclass(frozen=True, eq=False)
class Slice:
    """One decoded image plane.

    `stored` keeps the file's own integer type, half the size of float32 (native pixel
    data is a view of the bytes read from the file). `pixels()` gives physical units.
    """

    header: SliceHeader
    stored: np.ndarray                  # rows x columns, as stored in the file

    def pixels(self, out: np.ndarray | None = None) -> np.ndarray:
        """The plane in physical units (see `SliceHeader.units`) as float32, written into
        `out` (rows x columns, float32) when given: one pass, no temporary."""
        r = self.header.rescale
        if out is None:
            out = np.empty(self.stored.shape, np.float32)
        np.multiply(self.stored, np.float32(r.slope), out=out, casting="unsafe")
        if r.intercept != 0.0:
            out += np.float32(r.intercept)
        return out


@dataclass(frozen=True, eq=False)
class SlicePrediction:
    """What the network said about one slice, kept until the series' 3D analysis.

    The lesion probability map is stored as uint8 (probability x 255) on the network
    grid: a quarter of float32, so a 1,000-slice series stays within tens of MB; so is the
    network input's first channel, which the lesion classifier measures.
    """

    instance_key: str
    lesion_u8: np.ndarray               # (size, size) uint8
    tumour_probability: float           # slice-level head
    grid: object                        # edge.inference.preprocess.SliceGrid
    image_u8: np.ndarray | None = None  # (size, size) uint8: the input's first channel over
                                        # its range (edge.inference.preprocess.image_u8),
                                        # for the lesion classifier's image measures

    @property
    def lesion_probability(self) -> np.ndarray:
        return self.lesion_u8.astype(np.float32) / 255.0


@dataclass(frozen=True)
class Finding:
    """One lesion found in a series, in patient coordinates."""

    center_mm: Vector3
    diameter_mm: float                  # of the sphere with the same volume
    volume_mm3: float
    probability: float                  # peak or mean pixel probability, capped by the
                                        # slice head, or the lesion classifier's (the
                                        # model's thresholds say which)
    slices: tuple[int, int]             # first and last slice, 0-based, anatomical order
    key_slice: int                      # the slice where it is largest
    outline: tuple[tuple[float, float], ...] = ()   # (row, column) on the key slice

    def to_json(self) -> dict:
        return {"center_mm": [round(v, 2) for v in self.center_mm],
                "diameter_mm": round(self.diameter_mm, 2),
                "volume_mm3": round(self.volume_mm3, 1),
                "probability": round(self.probability, 4),
                "slices": list(self.slices)}


@dataclass(frozen=True)
class SeriesResult:
    """The analysis of one series version: positive, negative or failed."""

    series_uid: str
    study_uid: str
    modality: str
    status: str                         # positive | negative | failed
    reason: str | None
    findings: tuple[Finding, ...] = ()
    timings_ms: dict = field(default_factory=dict)
    version: int = 1
    n_slices: int = 0

    def to_json(self) -> dict:
        """The series entry of `scanside analyze --json` (DESIGN.md)."""
        return {"series_uid": self.series_uid, "study_uid": self.study_uid,
                "modality": self.modality, "status": self.status, "reason": self.reason,
                "findings": [f.to_json() for f in self.findings],
                "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()}}
