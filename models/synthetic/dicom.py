"""Write image planes as valid DICOM CT, MR and PET files.

Values come in physical units (HU, Bq/ml, MR signal) and are stored the way scanners
store them, with the storage convention chosen per series (signed or unsigned pixels,
rescale intercept, per-slice PET slope), so the appliance meets the variety it will meet
in a hospital. The files carry the modules their IOD requires and are checked in the
tests with dicom3tools' `dciodvfy` and dcmtk's `dcmdump`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    PositronEmissionTomographyImageStorage,
)

from edge.values import Orientation, Patient, Vector3

SOP_CLASSES = {"CT": CTImageStorage, "MR": MRImageStorage,
               "PT": PositronEmissionTomographyImageStorage}
F18_HALF_LIFE_S = 6586.2


@dataclass(frozen=True)
class StorageConvention:
    """How a scanner turns physical values into stored integers."""

    signed: bool = True
    bits_stored: int = 16
    intercept: float = 0.0
    slope: float | None = 1.0      # None: a per-slice slope that uses the full range (PET)
    transfer_syntax: UID = ExplicitVRLittleEndian


@dataclass(frozen=True)
class Tracer:
    """The PET radiopharmaceutical administration (what SUVbw needs)."""

    injected_dose_bq: float = 350e6
    injection_time: datetime = datetime(2026, 1, 5, 9, 0, 0)
    half_life_s: float = F18_HALF_LIFE_S
    patient_weight_kg: float = 75.0


@dataclass(frozen=True)
class MRSequence:
    """The MR contrast an acquisition's tags announce: T1 (short TR and TE, spin echo) or
    T2 (long TR and TE, fast spin echo), with or without fat saturation."""

    weighting: str = "T1"
    fat_suppressed: bool = False


@dataclass(frozen=True)
class SeriesIdentity:
    """What every slice of one series shares."""

    modality: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    series_number: int = 1
    description: str = ""
    acquired_at: datetime = datetime(2026, 1, 5, 10, 0, 0)
    patient: Patient = field(default=Patient("Phantom^Synthetic", "SYN0001", "19700101"))
    manufacturer: str = "scanside synthetic"
    expected_count: int | None = None      # ImagesInAcquisition / NumberOfSlices
    tracer: Tracer | None = None           # PET only
    sequence: MRSequence | None = None     # MR only
    contrast_agent: str = ""               # CT: ContrastBolusAgent of an enhanced series


@dataclass(frozen=True)
class Plane:
    """Where one slice sits, and its identity."""

    sop_uid: str
    position_mm: Vector3
    orientation: Orientation
    spacing_mm: tuple[float, float]
    thickness_mm: float
    instance_number: int


def make_dataset(values: np.ndarray, series: SeriesIdentity, plane: Plane,
                 storage: StorageConvention = StorageConvention()) -> Dataset:
    """One slice of physical `values` (rows x columns) as a complete DICOM dataset."""
    stored, slope = _to_stored(values, storage)
    compressed = storage.transfer_syntax.is_encapsulated
    ds = Dataset()
    ds.file_meta = _file_meta(series.modality, plane.sop_uid,
                              ExplicitVRLittleEndian if compressed else storage.transfer_syntax)
    _sop_common(ds, series, plane)
    _patient_study_series(ds, series)
    _image(ds, series, plane, stored, storage, slope)
    if series.modality == "CT":
        _ct(ds, series.contrast_agent)
    elif series.modality == "MR":
        _mr(ds, series.sequence or MRSequence())
    elif series.modality == "PT":
        _pet(ds, series, plane)
    if compressed:  # pydicom's own encoder; lossless, so the instance keeps its UID
        ds.compress(storage.transfer_syntax, generate_instance_uid=False)
    return ds


def write_slice(path: Path, values: np.ndarray, series: SeriesIdentity, plane: Plane,
                storage: StorageConvention = StorageConvention()) -> Path:
    """Write one slice as a DICOM Part 10 file; returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    make_dataset(values, series, plane, storage).save_as(path, enforce_file_format=True)
    return path


def _to_stored(values: np.ndarray, storage: StorageConvention) -> tuple[np.ndarray, float]:
    dtype = np.int16 if storage.signed else np.uint16
    high = 2 ** (storage.bits_stored - (1 if storage.signed else 0)) - 1
    low = -(high + 1) if storage.signed else 0
    slope = storage.slope
    if slope is None:
        peak = float(np.max(np.abs(values - storage.intercept))) or 1.0
        slope = peak / high
    stored = np.rint((values - storage.intercept) / slope)
    return np.clip(stored, low, high).astype(dtype), slope


def _file_meta(modality: str, sop_uid: str, syntax: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASSES[modality]
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "SCANSIDE_SYNTH"
    return meta


def _sop_common(ds: Dataset, series: SeriesIdentity, plane: Plane) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SOP_CLASSES[series.modality]
    ds.SOPInstanceUID = plane.sop_uid
    ds.InstanceCreationDate = series.acquired_at.strftime("%Y%m%d")
    ds.InstanceCreationTime = series.acquired_at.strftime("%H%M%S")


def _patient_study_series(ds: Dataset, series: SeriesIdentity) -> None:
    when = series.acquired_at
    ds.PatientName = series.patient.name
    ds.PatientID = series.patient.id
    ds.PatientBirthDate = series.patient.birth_date
    ds.PatientSex = "O"
    ds.StudyInstanceUID = series.study_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.Modality = series.modality
    ds.SeriesInstanceUID = series.series_uid
    ds.SeriesNumber = series.series_number
    ds.SeriesDescription = series.description
    ds.FrameOfReferenceUID = series.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = series.manufacturer
    if series.modality != "PT":  # PET states it with PatientOrientationCodeSequence
        ds.PatientPosition = "HFS"
    ds.BodyPartExamined = "ABDOMEN"


def _image(ds: Dataset, series: SeriesIdentity, plane: Plane, stored: np.ndarray,
           storage: StorageConvention, slope: float) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber = plane.instance_number
    ds.PatientOrientation = ""
    ds.ImagePositionPatient = [_ds(v) for v in plane.position_mm]
    ds.ImageOrientationPatient = [_ds(v) for v in plane.orientation]
    ds.PixelSpacing = [_ds(v) for v in plane.spacing_mm]
    ds.SliceThickness = _ds(plane.thickness_mm)
    normal = np.cross(plane.orientation[:3], plane.orientation[3:])
    ds.SliceLocation = _ds(float(np.dot(plane.position_mm, normal)))
    if series.expected_count is not None and series.modality != "PT":
        ds.ImagesInAcquisition = series.expected_count
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = storage.bits_stored
    ds.HighBit = storage.bits_stored - 1
    ds.PixelRepresentation = 1 if storage.signed else 0
    if series.modality != "MR":
        ds.RescaleIntercept = _ds(storage.intercept)
        ds.RescaleSlope = _ds(slope)
        if series.modality == "CT":
            ds.RescaleType = "HU"
    ds.PixelData = stored.tobytes()
    if storage.transfer_syntax == ImplicitVRLittleEndian:
        ds.set_original_encoding(True, True)


def _ct(ds: Dataset, contrast_agent: str) -> None:
    ds.KVP = "120"
    ds.AcquisitionNumber = 1
    ds.ConvolutionKernel = "STANDARD"
    if contrast_agent:                # the Contrast/Bolus module, as an enhanced scan has it
        ds.ContrastBolusAgent = contrast_agent
        ds.ContrastBolusRoute = "IV"


def _mr(ds: Dataset, sequence: MRSequence) -> None:
    t2 = sequence.weighting == "T2"
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "SK" if t2 else "NONE"        # segmented k-space: fast spin echo
    ds.ScanOptions = "FS" if sequence.fat_suppressed else ""
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime = "4000" if t2 else "500"
    ds.EchoTime = "90" if t2 else "15"
    ds.EchoTrainLength = 16 if t2 else 1
    ds.MagneticFieldStrength = "1.5"
    ds.AcquisitionNumber = 1


def _pet(ds: Dataset, series: SeriesIdentity, plane: Plane) -> None:
    tracer = series.tracer or Tracer()
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Units = "BQML"
    ds.CountsSource = "EMISSION"
    ds.SeriesType = ["STATIC", "IMAGE"]
    ds.CorrectedImage = ["DECY", "ATTN", "SCAT", "RAN"]
    ds.DecayCorrection = "START"
    ds.RandomsCorrectionMethod = "DLYD"
    ds.ReconstructionMethod = "OSEM"
    ds.AttenuationCorrectionMethod = "CT"
    ds.NumberOfSlices = series.expected_count or 1
    ds.CollimatorType = "NONE"
    ds.PatientOrientationCodeSequence = []
    ds.PatientGantryRelationshipCodeSequence = []
    ds.ImageIndex = plane.instance_number
    ds.FrameReferenceTime = "0"
    ds.ActualFrameDuration = 120_000
    elapsed = (series.acquired_at - tracer.injection_time).total_seconds()
    ds.DecayFactor = _ds(2 ** (elapsed / tracer.half_life_s))
    ds.PatientWeight = _ds(tracer.patient_weight_kg)
    drug = Dataset()
    drug.Radiopharmaceutical = "Fluorodeoxyglucose"
    drug.RadiopharmaceuticalStartTime = tracer.injection_time.strftime("%H%M%S")
    drug.RadiopharmaceuticalStartDateTime = tracer.injection_time.strftime("%Y%m%d%H%M%S")
    drug.RadionuclideTotalDose = _ds(tracer.injected_dose_bq)
    drug.RadionuclideHalfLife = _ds(tracer.half_life_s)
    drug.RadionuclidePositronFraction = "0.9673"
    nuclide = Dataset()
    nuclide.CodeValue, nuclide.CodingSchemeDesignator = "77004003", "SCT"
    nuclide.CodeMeaning = "^18^Fluorine"
    drug.RadionuclideCodeSequence = [nuclide]
    ds.RadiopharmaceuticalInformationSequence = [drug]


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters, as the DS value representation allows."""
    text = f"{value:.10g}"
    if len(text) > 16:
        text = f"{value:.6e}"
    return "0" if text in ("-0", "0") else text
