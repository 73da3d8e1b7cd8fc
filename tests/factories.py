"""Tiny DICOM series and damaged files for tests, written by the synthetic-series writer."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom.data
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

from edge.inference.spec import Intensity, ModelSpec
from models.synthetic.dicom import Plane, SeriesIdentity, StorageConvention, Tracer, write_slice

PYDICOM_DATA = Path(pydicom.data.__file__).parent
# A PET model spec tiny enough that preparing and training take seconds.
TINY_PET = ModelSpec("PT", 32, 16.0, Intensity("pet_suv", clip=4.0, scale=5.0), name="tiny")
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


@dataclass
class TinySeries:
    """A series description that tests can bend (gaps, duplicates, odd orientations)."""

    identity: SeriesIdentity
    planes: list[Plane]
    rows: int = 8
    columns: int = 8
    storage: StorageConvention = StorageConvention()

    def values(self, index: int) -> np.ndarray:
        """Distinct, recognisable physical values for plane `index`."""
        ramp = np.arange(self.rows * self.columns, dtype=np.float64).reshape(self.rows,
                                                                            self.columns)
        return ramp + 100.0 * index

    def write(self, folder: Path, indices=None, names=None) -> list[Path]:
        """Write planes (all, or `indices` in that order) as `folder/<name>`."""
        indices = range(len(self.planes)) if indices is None else indices
        paths = []
        for i in indices:
            name = names[i] if names else f"slice{i:03d}.dcm"
            paths.append(write_slice(folder / name, self.values(i), self.identity,
                                     self.planes[i], self.storage))
        return paths


def tiny_series(n: int = 5, modality: str = "CT", *, step_mm: float = 2.5,
                origin=(-10.0, -10.0, 0.0), orientation=AXIAL, rows: int = 8, columns: int = 8,
                expected: bool = True, storage: StorageConvention | None = None) -> TinySeries:
    """`n` contiguous planes stepping `step_mm` along the orientation's normal."""
    identity = SeriesIdentity(modality, generate_uid(), generate_uid(), generate_uid(),
                              description=f"tiny {modality}",
                              expected_count=n if expected else None,
                              tracer=Tracer() if modality == "PT" else None)
    normal = np.cross(orientation[:3], orientation[3:])
    planes = [Plane(generate_uid(), tuple(float(v) for v in np.add(origin, normal * step_mm * i)),
                    orientation, (0.7, 0.8), step_mm, i + 1) for i in range(n)]
    if storage is None:
        storage = StorageConvention(slope=None) if modality == "PT" else StorageConvention()
    return TinySeries(identity, planes, rows, columns, storage)


def moved(plane: Plane, **changes) -> Plane:
    return replace(plane, **changes)


def truncate(path: Path, keep: int) -> Path:
    """Cut the file to its first `keep` bytes (negative: drop that many from the end)."""
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    return path


def zero_filled_like(source: Path, target: Path) -> Path:
    """A file of the same size as `source`, all zeros: pre-allocated, not yet written."""
    target.write_bytes(bytes(source.stat().st_size))
    return target


def with_pixel_length(source: Path, target: Path, length: int) -> Path:
    """Copy `source` with the PixelData element's 4-byte length field replaced."""
    data = bytearray(source.read_bytes())
    at = data.rfind(b"\xe0\x7f\x10\x00OW\x00\x00")
    if at < 0:
        raise ValueError(f"{source}: no explicit-VR little-endian PixelData element")
    data[at + 8:at + 12] = struct.pack("<I", length)
    target.write_bytes(bytes(data))
    return target


def with_header_length(source: Path, target: Path, length: int) -> Path:
    """Copy `source` with a private OB element in the header declaring `length` bytes."""
    ds = dcmread(source)
    block = ds.private_block(0x0009, "SCANSIDE TEST", create=True)
    block.add_new(0x10, "OB", b"\x01" * 8)
    ds.save_as(target)
    data = bytearray(target.read_bytes())
    at = data.find(b"\x09\x00\x10\x10OB\x00\x00")
    data[at + 8:at + 12] = struct.pack("<I", length)
    target.write_bytes(bytes(data))
    return target


def deflate_bomb(source: Path, target: Path, inflated_bytes: int) -> Path:
    """`source`'s file meta, then a deflated dataset that expands to `inflated_bytes` of
    zeros: a few KiB on disk per MiB inflated."""
    meta = dcmread(source).file_meta
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    header = BytesIO()
    write_file_meta_info(header, meta, enforce_standard=True)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    # After a full flush no block refers back, so one compressed megabyte can be repeated.
    block = compressor.compress(bytes(1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    body = block * (inflated_bytes >> 20) + compressor.flush()
    target.write_bytes(bytes(128) + b"DICM" + header.getvalue() + body)
    return target


def enhanced_ct(path: Path, frames: int = 3, step_mm: float = 5.0) -> Path:
    """An Enhanced CT file: frame i sits at z = i * step_mm and stores the value 100 i,
    with the rescale (intercept -1024) in the shared functional group."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality, ds.NumberOfFrames = "CT", frames
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    shared = Dataset()
    measures, orientation, rescale = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = [0.5, 0.5], step_mm
    orientation.ImageOrientationPatient = list(AXIAL)
    rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = 1, -1024, "HU"
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelValueTransformationSequence = [rescale]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for i in range(frames):
        item, position = Dataset(), Dataset()
        position.ImagePositionPatient = [0.0, 0.0, i * step_mm]
        item.PlanePositionSequence = [position]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    pixels = np.stack([np.full((4, 4), 100 * i, np.int16) for i in range(frames)])
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def pydicom_sample_files() -> list[Path]:
    """Every file pydicom ships in its data folder, except its Python sources."""
    found = []
    for folder, dirs, names in os.walk(PYDICOM_DATA):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        found += [Path(folder) / n for n in sorted(names) if not n.endswith((".py", ".pyc"))]
    return found


def copy_to(source: Path, folder: Path, name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(source, folder / (name or source.name)))


def scanside(*args: str) -> subprocess.CompletedProcess:
    """The `scanside` command line, run as a user would (python -m edge)."""
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True,
                          text=True, timeout=120)
