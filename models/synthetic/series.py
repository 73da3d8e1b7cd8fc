"""`scanside synth`: synthetic patients scanned as DICOM series, with ground truth.

One folder per series: the DICOM files, `truth.json` (the lesions the series images, in
DESIGN.md's format plus their kind and organ: `imaged_lesions`) and `mask.npz` (lesion
ids per voxel, slices in anatomical order, with their SOPInstanceUIDs). Protocols and
storage conventions vary per case like scanners and sites do: matrix and pixel size,
slice thickness and gaps, patient position, table offsets, signed or unsigned storage
and intercepts, transfer syntax, the order and names of the files.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import as_completed
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)
from tqdm import tqdm

from edge.errors import ScansideError
from edge.values import Patient as PatientIds
from models.pool import process_pool
from models.synthetic.anatomy import DEFAULT_MIX, Lesion, Patient, TrainingMix, sample_patient
from models.synthetic.dicom import (
    MRSequence,
    SeriesIdentity,
    StorageConvention,
    Tracer,
    make_dataset,
)
from models.synthetic.dicom import (
    Plane as DicomPlane,
)
from models.synthetic.physics import Appearance, Plane, render, sample_appearance

# Patient position -> ImageOrientationPatient for axial slices.
POSITIONS = {"HFS": (1, 0, 0, 0, 1, 0), "FFS": (-1, 0, 0, 0, 1, 0),
             "HFP": (-1, 0, 0, 0, -1, 0), "FFP": (1, 0, 0, 0, -1, 0)}
DESCRIPTIONS = {"CT": ["ABD PELVIS PV", "CHEST ABDOMEN", "LIVER 3 PHASE", "Body 2.5 mm"],
                "MR": ["T2 HASTE AX", "T1 VIBE AX", "AX T2 FS", "LIVER T1"],
                "PT": ["PET WB AC", "FDG WB", "PET AC 3D", "WB OSEM"]}


@dataclass(frozen=True)
class Protocol:
    rows: int
    columns: int
    pixel_mm: float
    thickness_mm: float
    step_mm: float               # distance between slice centres
    position: str                # HFS, FFS, HFP, FFP
    offset_mm: np.ndarray        # body frame -> scanner frame
    fov_shift_mm: np.ndarray     # field-of-view centre relative to the body axis
    storage: StorageConvention
    ascending_files: bool
    naming: str
    expected_count_tag: bool


def sample_protocol(modality: str, rng: np.random.Generator) -> Protocol:
    if modality == "CT":
        rows = 512
        pixel = rng.uniform(0.62, 0.98)
        thickness = float(rng.choice([1.25, 2.0, 2.5, 3.0, 5.0], p=[0.08, 0.15, 0.3, 0.2, 0.27]))
        step = thickness * float(rng.choice([1.0, 0.8], p=[0.8, 0.2]))
        storage = [StorageConvention(),
                   StorageConvention(signed=False, intercept=-1024),
                   StorageConvention(signed=False, intercept=-1024, bits_stored=12),
                   StorageConvention(signed=True, intercept=-1024)][int(rng.integers(4))]
    elif modality == "MR":
        rows = int(rng.choice([256, 256, 320]))
        pixel = rng.uniform(1.2, 1.8) * 256 / rows
        thickness = rng.uniform(4, 7)
        step = thickness + rng.uniform(0, 1.5)
        storage = StorageConvention(signed=False, bits_stored=16)
    else:
        rows = int(rng.choice([128, 128, 144]))
        pixel = rng.uniform(4.0, 5.5) * 128 / rows
        thickness = rng.uniform(2.0, 4.0)
        step = thickness
        storage = StorageConvention(slope=None)
    syntax = UID(rng.choice([ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless],
                            p=[0.7, 0.2, 0.1]))
    storage = StorageConvention(storage.signed, storage.bits_stored, storage.intercept,
                                storage.slope, syntax)
    return Protocol(rows, rows, float(pixel), float(thickness), float(step),
                    str(rng.choice(list(POSITIONS), p=[0.7, 0.15, 0.1, 0.05])),
                    np.array([rng.normal(0, 25), rng.normal(0, 25), rng.uniform(-900, 900)]),
                    rng.normal(0, 12, 2), storage, bool(rng.random() < 0.6),
                    str(rng.choice(["IM{n:05d}", "{uid}.dcm", "{hex}", "{mod}.{n}.dcm"])),
                    bool(modality == "PT" or rng.random() < 0.7))


def synthesize(modality: str, cases: int, seed: int, out: Path, workers: int = 1,
               first_case: int = 0, mix: TrainingMix = DEFAULT_MIX,
               lesions: bool = True) -> list[Path]:
    """Write `cases` series; case k uses the random stream (seed, k) whoever runs it.
    `mix`: for training sets, more of the lesions (and MR weightings) a network finds hard
    (`TrainingMix`); the default draws exactly as before.
    `lesions=False` draws every patient without a lesion (a quarter are, by default), for
    calibration sets whose specificity limit should rest on many such series.
    ScansideError, before anything is written, when a series' folder already holds files:
    synthesised again, a series gets new UIDs and often new file names, and the old
    files would stay in its folder as a second series."""
    indices = range(first_case, first_case + cases)
    folders = [series_folder(out, modality, seed, k) for k in indices]
    taken = [folder for folder in folders if folder.is_dir() and any(folder.iterdir())]
    if taken:
        raise ScansideError(f"{taken[0]}: already holds files ({len(taken)} of the {cases} "
                            "series folders do); synthesise into an empty folder, or move "
                            "the old series away first")
    out.mkdir(parents=True, exist_ok=True)
    done = []
    bar = tqdm(total=cases, desc=f"synth {modality}", unit="series")
    if workers <= 1:
        for k in indices:
            done.append(write_case(modality, seed, k, out, mix, lesions))
            bar.update()
    else:
        with process_pool(workers) as pool:
            futures = [pool.submit(write_case, modality, seed, k, out, mix, lesions)
                       for k in indices]
            for future in as_completed(futures):
                done.append(future.result())
                bar.update()
    bar.close()
    return sorted(done)


def series_folder(out: Path, modality: str, seed: int, index: int) -> Path:
    return out / f"{modality}-{seed}-{index:04d}"


def write_case(modality: str, seed: int, index: int, out: Path,
               mix: TrainingMix = DEFAULT_MIX, lesions: bool = True) -> Path:
    """Draw, render and write one series; returns its folder."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, _code(modality)]))
    patient = sample_patient(rng, None if lesions else 0, mix)
    appearance = sample_appearance(modality, rng, mix)
    protocol = sample_protocol(modality, rng)
    folder = series_folder(out, modality, seed, index)
    folder.mkdir(parents=True, exist_ok=True)
    identity, planes = _plan(modality, patient, appearance, protocol, rng, folder.name)
    labels = []
    for plane, dicom_plane in planes:
        values, lesion_ids = render(patient, appearance, plane, rng)
        if modality == "PT":
            values = values * _bq_per_ml_per_suv(identity)
        ds = make_dataset(values, identity, dicom_plane, protocol.storage)
        ds.save_as(folder / _name(protocol, dicom_plane, modality, rng), enforce_file_format=True)
        labels.append(lesion_ids)
    order = np.argsort([p.position_mm @ np.cross(p.row_dir, p.col_dir) for p, _ in planes])
    labels, imaged = imaged_lesions(np.stack(labels)[order])
    np.savez_compressed(folder / "mask.npz", labels=labels,
                        sop_instance_uids=np.array([planes[i][1].sop_uid for i in order]))
    _write_truth(folder, identity, [patient.lesions[i] for i in imaged], protocol, appearance,
                 seed, index, mix, not lesions)
    return folder


def imaged_lesions(labels: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """(the lesion ids renumbered 1, 2, ... in the order of the lesions kept, the indices of
    the lesions kept): a lesion is kept when at least one voxel of the mask is its, that is
    when it fills at least half of a voxel's depth at a pixel centre. A lesion smaller than
    a pixel, between two slices or beyond the scanned range is in the patient but not in
    the series: left in truth.json, it would be a lesion that evaluation counts missed,
    and training, from the mask, teaches is not there."""
    present = np.unique(labels)
    present = present[present > 0]
    renumber = np.zeros(int(labels.max()) + 1, labels.dtype)
    renumber[present] = np.arange(1, len(present) + 1)
    return renumber[labels], [int(i) - 1 for i in present]


def _code(modality: str) -> int:
    return {"CT": 1, "MR": 2, "PT": 3}[modality]


def _plan(modality, patient: Patient, appearance: Appearance, protocol: Protocol, rng,
          case: str):
    iop = np.array(POSITIONS[protocol.position], float)
    row_dir, col_dir = iop[:3], iop[3:]
    zs = np.arange(patient.scan_z[0], patient.scan_z[1], protocol.step_mm)
    acquired = datetime(2026, 1, 5, 8, 0) + timedelta(minutes=int(rng.integers(0, 600)),
                                                      days=int(rng.integers(0, 300)))
    tracer = None
    if modality == "PT":
        tracer = Tracer(injected_dose_bq=float(rng.uniform(180e6, 450e6)),
                        injection_time=acquired - timedelta(minutes=float(rng.uniform(45, 90))),
                        patient_weight_kg=round(patient.weight_kg, 1))
    identity = SeriesIdentity(
        modality, generate_uid(), generate_uid(), generate_uid(),
        series_number=int(rng.integers(1, 900)),
        description=str(rng.choice(DESCRIPTIONS[modality])), acquired_at=acquired,
        patient=PatientIds(f"Synthetic^{case}", case, "19600101"),
        expected_count=len(zs) if protocol.expected_count_tag else None, tracer=tracer,
        sequence=(MRSequence(appearance.weighting, appearance.fat_suppressed)
                  if modality == "MR" else None),
        contrast_agent=appearance.contrast_agent)
    half = np.array([(protocol.columns - 1) / 2, (protocol.rows - 1) / 2]) * protocol.pixel_mm
    numbers = range(1, len(zs) + 1) if protocol.ascending_files else range(len(zs), 0, -1)
    planes = []
    for z, number in zip(zs, numbers, strict=True):
        centre = np.array([*protocol.fov_shift_mm, z])
        corner = centre - half[0] * row_dir - half[1] * col_dir
        render_plane = Plane(corner, row_dir, col_dir, (protocol.pixel_mm, protocol.pixel_mm),
                             protocol.rows, protocol.columns, protocol.thickness_mm)
        planes.append((render_plane, DicomPlane(
            generate_uid(), tuple(float(v) for v in corner + protocol.offset_mm),
            tuple(float(v) for v in iop), (protocol.pixel_mm, protocol.pixel_mm),
            protocol.thickness_mm, number)))
    return identity, planes


def _bq_per_ml_per_suv(identity: SeriesIdentity) -> float:
    """Activity concentration of SUV 1, decay-corrected to the series start."""
    tracer = identity.tracer
    elapsed = (identity.acquired_at - tracer.injection_time).total_seconds()
    dose = tracer.injected_dose_bq * 2 ** (-elapsed / tracer.half_life_s)
    return dose / (tracer.patient_weight_kg * 1000)


def _name(protocol: Protocol, plane: DicomPlane, modality: str, rng) -> str:
    return protocol.naming.format(n=plane.instance_number, uid=plane.sop_uid,
                                  hex=os.urandom(6).hex() if rng is None else
                                  f"{int(rng.integers(1 << 40)):010x}", mod=modality)


def _write_truth(folder: Path, identity: SeriesIdentity, lesions: list[Lesion], protocol: Protocol,
                 appearance: Appearance, seed: int, index: int, mix: TrainingMix,
                 without_lesions: bool = False) -> None:
    truth = {
        "series_uid": identity.series_uid,
        "modality": identity.modality,
        "lesions": [{
            "center_mm": [round(float(v), 2) for v in lesion.center_mm + protocol.offset_mm],
            "diameter_mm": round(lesion.diameter_mm, 2),
            "volume_mm3": round(lesion.volume_mm3, 1),
            "kind": lesion.kind,
            "organ": lesion.organ,
        } for lesion in lesions],
        "study_uid": identity.study_uid,
        "generator": {"seed": seed, "case": index, "position": protocol.position,
                      "pixel_mm": round(protocol.pixel_mm, 3),
                      "thickness_mm": round(protocol.thickness_mm, 2),
                      "step_mm": round(protocol.step_mm, 2),
                      "transfer_syntax": str(protocol.storage.transfer_syntax.name),
                      "weighting": appearance.weighting or None,
                      **({"contrast_agent": appearance.contrast_agent or None}
                         if identity.modality == "CT" else {}),
                      **({"fat_suppressed": appearance.fat_suppressed}
                         if identity.modality == "MR" else {}),
                      **mix.recorded(),
                      **({"without_lesions": True} if without_lesions else {})},
    }
    (folder / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
