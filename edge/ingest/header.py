"""A parsed DICOM header -> one `SliceHeader` per image plane.

Pure: takes a pydicom `Dataset` (read without its pixels) and returns values, or raises
`DicomError` naming the tag, the value found and what was expected. Enhanced multi-frame
files are split into frames with each frame's own geometry from the functional groups.
"""

from __future__ import annotations

import functools
import math
from datetime import datetime

import numpy as np
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pydicom.valuerep import DA, DT, TM
from pydicom.values import convert_value

from edge.errors import DicomError
from edge.values import Patient, PetTags, Rescale, SliceHeader

#: Orthonormality tolerance for ImageOrientationPatient direction cosines.
ORIENTATION_TOLERANCE = 1e-3


def tag_name(keyword: str) -> str:
    """'Rows' -> 'Rows (0028,0010)', the form every message uses."""
    tag = tag_for_keyword(keyword)
    return keyword if tag is None else f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


def parse_headers(ds: Dataset, path: str) -> list[SliceHeader]:
    """Validate the header of one file and describe each of its image planes.

    Raises DicomError when the file is not a greyscale image that can be placed in patient
    coordinates.
    """
    f = _Fields(ds, path)
    sop_class = f.uid("SOPClassUID")
    if "Rows" not in ds or "Columns" not in ds:
        raise DicomError(path, f"no image to analyse: {sop_class.name!r} ({sop_class}) "
                               "without Rows (0028,0010) and Columns (0028,0011)",
                         expected="an image storage object with pixel data")
    modality = f.text("Modality")
    if not modality.isalnum() or len(modality) > 16:
        raise DicomError(path, "not a DICOM modality code", tag=tag_name("Modality"),
                         value=modality, expected="up to 16 capital letters or digits")
    rows, columns = f.integer("Rows", 1, 65535), f.integer("Columns", 1, 65535)
    n_frames = f.integer("NumberOfFrames", 1, 100_000, default=1)
    bits_allocated, bits_stored, signed = _pixel_format(f)
    enhanced = "PerFrameFunctionalGroupsSequence" in ds
    if n_frames > 1 and not enhanced:
        raise DicomError(path, f"missing: the {n_frames} frames of this file have no "
                               "geometry of their own",
                         tag=tag_name("PerFrameFunctionalGroupsSequence"),
                         expected="an enhanced multi-frame image or single-frame files")
    if enhanced:
        frames = f.sequence("PerFrameFunctionalGroupsSequence")
        if len(frames) != n_frames:
            raise DicomError(path, f"has {len(frames)} items", expected=f"{n_frames}, one "
                             "per frame (NumberOfFrames)",
                             tag=tag_name("PerFrameFunctionalGroupsSequence"))
    common = dict(
        path=path,
        sop_instance_uid=str(f.uid("SOPInstanceUID")),
        n_frames=n_frames,
        series_uid=str(f.uid("SeriesInstanceUID")),
        study_uid=str(f.uid("StudyInstanceUID")),
        frame_of_reference_uid=(str(f.uid("FrameOfReferenceUID"))
                                if "FrameOfReferenceUID" in ds else None),
        sop_class_uid=str(sop_class),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        modality=modality,
        rows=rows,
        columns=columns,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        signed=signed,
        expected_count=n_frames if enhanced else _expected_count(f, modality),
        instance_number=f.integer("InstanceNumber", -(2**31), 2**31 - 1, default=None),
        series_description=str(ds.get("SeriesDescription", "") or ""),
        contrast_agent=_contrast_agent(f),
        pet=_pet_tags(f) if modality == "PT" else None,
        patient=Patient(str(ds.get("PatientName", "") or ""), str(ds.get("PatientID", "") or ""),
                        str(ds.get("PatientBirthDate", "") or "")),
    )
    headers = []
    for frame in range(n_frames):
        g = _FrameFields(f, frame) if enhanced else f
        rescale, units = _rescale(g, modality)
        headers.append(SliceHeader(
            frame=frame,
            position_mm=g.vector("ImagePositionPatient", 3, via="PlanePositionSequence"),
            orientation=_orientation(g),
            spacing_mm=_spacing(g),
            slice_thickness_mm=g.number("SliceThickness", via="PixelMeasuresSequence",
                                        default=None),
            rescale=rescale,
            units=units,
            mr_weighting=_mr_weighting(g) if modality == "MR" else "",
            **common,
        ))
    return headers


def _pixel_format(f: _Fields) -> tuple[int, int, bool]:
    """(BitsAllocated, BitsStored, signed) of a greyscale image, or DicomError."""
    samples = f.integer("SamplesPerPixel", 1, 4, default=1)
    if samples != 1:
        raise DicomError(f.path, "colour images are not analysed", tag=tag_name("SamplesPerPixel"),
                         value=samples, expected="1 (greyscale)")
    photometric = f.text("PhotometricInterpretation", default="MONOCHROME2")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(f.path, "not a greyscale image",
                         tag=tag_name("PhotometricInterpretation"), value=photometric,
                         expected="MONOCHROME1 or MONOCHROME2")
    bits = f.integer("BitsAllocated", 1, 64)
    if bits not in (8, 16, 32):
        raise DicomError(f.path, "unsupported pixel size", tag=tag_name("BitsAllocated"),
                         value=bits, expected="8, 16 or 32")
    return (bits, f.integer("BitsStored", 1, bits, default=bits),
            f.integer("PixelRepresentation", 0, 1, default=0) == 1)


def _expected_count(f: _Fields, modality: str) -> int | None:
    """Slices the series should have, from ImagesInAcquisition or (PET) NumberOfSlices."""
    keyword = "NumberOfSlices" if modality == "PT" else "ImagesInAcquisition"
    return f.integer(keyword, 1, 100_000, default=None)


def _orientation(g) -> tuple[float, ...]:
    iop = np.array(g.vector("ImageOrientationPatient", 6, via="PlaneOrientationSequence"))
    row, col = iop[:3], iop[3:]
    if (abs(np.linalg.norm(row) - 1) > ORIENTATION_TOLERANCE
            or abs(np.linalg.norm(col) - 1) > ORIENTATION_TOLERANCE
            or abs(float(row @ col)) > ORIENTATION_TOLERANCE):
        raise DicomError(g.path, "direction cosines are not orthonormal",
                         tag=tag_name("ImageOrientationPatient"), value=[round(v, 6) for v in iop],
                         expected="two unit vectors at right angles")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    return tuple(float(v) for v in (*row, *col))


def _spacing(g) -> tuple[float, float]:
    spacing = g.vector("PixelSpacing", 2, via="PixelMeasuresSequence")
    if min(spacing) <= 0:
        raise DicomError(g.path, "not a positive distance", tag=tag_name("PixelSpacing"),
                         value=list(spacing), expected="two positive numbers in mm")
    return (spacing[0], spacing[1])


def _rescale(g, modality: str) -> tuple[Rescale, str]:
    """Rescale to physical units and the units' name. MR stays as stored."""
    if modality == "MR":
        return Rescale(), "stored"
    via = "PixelValueTransformationSequence"
    default = None if modality == "CT" else 1.0
    slope = g.number("RescaleSlope", via=via, default=default)
    intercept = g.number("RescaleIntercept", via=via, default=None if modality == "CT" else 0.0)
    if slope == 0:
        raise DicomError(g.path, "maps every pixel to one value", tag=tag_name("RescaleSlope"),
                         value=slope, expected="a non-zero number")
    if modality == "CT":
        units = "HU"
    elif modality == "PT":
        units = g.text("Units", default="BQML")
    else:
        units = g.text("RescaleType", via=via, default="stored") or "stored"
    return Rescale(slope, intercept), units


def _contrast_agent(f: _Fields) -> str:
    """The contrast agent the series was acquired with: ContrastBolusAgent, or in an
    enhanced multi-frame file the first agent's CodeMeaning in ContrastBolusAgentSequence;
    "" when none is recorded (which does not prove a plain scan)."""
    agent = f.text("ContrastBolusAgent", default="")
    if agent:
        return agent
    agents = f.sequence("ContrastBolusAgentSequence", default=[])
    return str(agents[0].get("CodeMeaning", "") or "").strip() if agents else ""


def _mr_weighting(g) -> str:
    """T1, T2 or "" from the echo and repetition times, as a radiologist reads them: a long
    echo (TE >= 60 ms) weights by T2, FLAIR and diffusion included; a short echo
    (TE <= 30 ms) after a short repetition (TR <= 1000 ms) by T1, spin echo and gradient
    echo alike; a short echo after a long repetition is proton density, and missing times
    say nothing. Enhanced MR keeps them in the frame's MREchoSequence and
    MRTimingAndRelatedParametersSequence."""
    echo = g.number("EchoTime", default=None)
    if echo is None:
        echo = g.number("EffectiveEchoTime", via="MREchoSequence", default=None)
    repetition = g.number("RepetitionTime", via="MRTimingAndRelatedParametersSequence",
                          default=None)
    if echo is None:
        return ""
    if echo >= 60:
        return "T2"
    if echo <= 30 and repetition is not None and repetition <= 1000:
        return "T1"
    return ""


def _pet_tags(f: _Fields) -> PetTags:
    drug = f.sequence("RadiopharmaceuticalInformationSequence", default=[])
    d = _Fields(drug[0], f.path) if drug else None
    study_date = f.text("StudyDate", default="")
    injection = None
    if d is not None:
        injection = (d.datetime("RadiopharmaceuticalStartDateTime")
                     or _combine(f.text("SeriesDate", default=study_date),
                                 d.text("RadiopharmaceuticalStartTime", default="")))
    return PetTags(
        units=f.text("Units", default="BQML"),
        decay_correction=f.text("DecayCorrection", default="NONE"),
        injected_dose_bq=d.number("RadionuclideTotalDose", default=None) if d else None,
        half_life_s=d.number("RadionuclideHalfLife", default=None) if d else None,
        injection_time=injection,
        series_time=_combine(f.text("SeriesDate", default=study_date),
                             f.text("SeriesTime", default="")),
        acquisition_time=_combine(f.text("AcquisitionDate", default=study_date),
                                  f.text("AcquisitionTime", default="")),
        patient_weight_kg=f.number("PatientWeight", default=None),
    )


def _combine(date_text: str, time_text: str) -> datetime | None:
    if not date_text or not time_text:
        return None
    try:
        return datetime.combine(DA(date_text), TM(time_text))
    except (ValueError, TypeError):
        return None


_MISSING = object()


@functools.cache
def _tag_and_vr(keyword: str) -> tuple[int, str]:
    tag = tag_for_keyword(keyword)
    return tag, dictionary_VR(tag)


def _value(ds: Dataset, keyword: str):
    """An element's value. Numbers, codes and UIDs are converted straight from the raw
    element (pydicom's `convert_value`, a third of the cost of `Dataset.get`); text that
    needs the character set, sequences and ambiguous VRs go through `Dataset.get`."""
    tag, vr = _tag_and_vr(keyword)
    element = ds.get_item(tag)
    if element is None:
        return None
    if not isinstance(element, RawDataElement):
        return element.value
    if vr not in _PLAIN_VRS:
        return ds.get(keyword)
    return convert_value(element.VR or vr, element)


# VRs whose values need no character set: numbers, codes, dates and UIDs.
_PLAIN_VRS = {"US", "SS", "UL", "SL", "FL", "FD", "IS", "DS", "CS", "UI", "DA", "TM", "DT"}


class _Fields:
    """Typed access to a dataset's elements with errors that name the tag."""

    def __init__(self, ds: Dataset, path: str):
        self.ds, self.path = ds, path

    def raw(self, keyword: str, via: str | None = None, default=_MISSING):
        value = _value(self.ds, keyword)
        if value is None or value == "":
            if default is _MISSING:
                raise DicomError(self.path, "missing", tag=tag_name(keyword),
                                 expected="a value")
            return default
        return value

    def text(self, keyword: str, via: str | None = None, default=_MISSING) -> str:
        value = self.raw(keyword, via, default)
        return value if value is default else str(value).strip()

    def uid(self, keyword: str) -> UID:
        value = UID(str(self.raw(keyword)).strip())
        if not value.is_valid:
            raise DicomError(self.path, "not a valid DICOM UID", tag=tag_name(keyword),
                             value=str(value), expected="digits and dots, at most 64 "
                             "characters, no empty component or leading zero")
        return value

    def sequence(self, keyword: str, default=_MISSING) -> list[Dataset]:
        return list(self.raw(keyword, default=default))

    def number(self, keyword: str, via: str | None = None, default=_MISSING) -> float | None:
        value = self.raw(keyword, via, default)
        return value if value is default else self._finite(keyword, value)

    def integer(self, keyword: str, low: int, high: int, default=_MISSING) -> int | None:
        value = self.raw(keyword, default=default)
        if value is default:
            return value
        number = self._finite(keyword, value)
        if number != int(number) or not low <= number <= high:
            raise DicomError(self.path, "out of range", tag=tag_name(keyword), value=value,
                             expected=f"an integer from {low} to {high}")
        return int(number)

    def vector(self, keyword: str, n: int, via: str | None = None) -> tuple[float, ...]:
        value = self.raw(keyword, via)
        items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
        if len(items) != n:
            raise DicomError(self.path, f"has {len(items)} values", tag=tag_name(keyword),
                             value=items, expected=f"{n} numbers")
        return tuple(self._finite(keyword, v) for v in items)

    def datetime(self, keyword: str) -> datetime | None:
        value = self.raw(keyword, default=None)
        if value is None:
            return None
        try:
            return DT(str(value))
        except ValueError:
            return None

    def _finite(self, keyword: str, value) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise DicomError(self.path, "not a finite number", tag=tag_name(keyword),
                             value=value, expected="a finite number")
        return number


class _FrameFields(_Fields):
    """Field access for one frame of an enhanced image: the frame's functional group
    first, then the shared one, then the top level."""

    def __init__(self, parent: _Fields, frame: int):
        super().__init__(parent.ds, parent.path)
        self.frame = frame
        self.groups = [parent.ds.PerFrameFunctionalGroupsSequence[frame]]
        shared = parent.ds.get("SharedFunctionalGroupsSequence")
        if shared:
            self.groups.append(shared[0])

    def raw(self, keyword: str, via: str | None = None, default=_MISSING):
        if via is not None:
            for group in self.groups:
                items = group.get(via)
                if items and items[0].get(keyword) not in (None, ""):
                    return items[0].get(keyword)
        try:
            return super().raw(keyword, None, default)
        except DicomError as missing:
            where = f" in {via} of frame {self.frame + 1} or the shared group" if via else ""
            raise DicomError(self.path, f"missing{where}", tag=tag_name(keyword),
                             expected="a value") from missing
