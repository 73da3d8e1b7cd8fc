"""Structural checks on a PixelData element, then decoding through pydicom.

A slice is accepted only when its PixelData is complete: for native transfer syntaxes
the value holds exactly Rows x Columns x frames x BitsAllocated/8 bytes (plus the one
padding byte DICOM allows); for compressed ones the encapsulated sequence is terminated
and holds a fragment for every frame; and every frame decodes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID

from edge.errors import DicomError, IncompleteDicomError
from edge.values import SliceHeader

PIXEL_DATA = "PixelData (7FE0,0010)"
UNDEFINED_LENGTH = 0xFFFFFFFF


def native_length(header: SliceHeader) -> int:
    """Bytes a native PixelData value must hold for this image."""
    return header.rows * header.columns * header.n_frames * header.bits_allocated // 8


def check_pixel_element(element: RawDataElement, header: SliceHeader, file_size: int) -> None:
    """Raise unless `element` holds complete pixel data for `header`'s image.

    IncompleteDicomError when the file ends inside the value (it may still be arriving),
    DicomError when the value is the wrong size or malformed.
    """
    path, value = header.path, element.value or b""
    # A value left in the file (see NativeLocation) is present up to the end of the file.
    present = len(value) if element.value is not None else file_size - element.value_tell
    if UID(header.transfer_syntax_uid).is_encapsulated:
        if element.length != UNDEFINED_LENGTH:
            raise DicomError(path, "compressed pixel data must be encapsulated",
                             tag=f"{PIXEL_DATA} length", value=element.length,
                             expected="undefined length (an item sequence)")
        _check_fragments(value, header)
        return
    expected = native_length(header)
    if present < element.length:
        raise IncompleteDicomError(path, f"file ends {element.length - present} bytes "
                                   f"into the pixel data (file size {file_size})",
                                   tag=f"{PIXEL_DATA} length", value=element.length,
                                   expected="the whole value to be present")
    if element.length not in (expected, expected + 1):
        raise DicomError(path, "does not match the image size", tag=f"{PIXEL_DATA} length",
                         value=element.length,
                         expected=f"{expected} bytes (Rows {header.rows} x Columns "
                                  f"{header.columns} x {header.n_frames} frames x "
                                  f"{header.bits_allocated // 8} bytes)")


def _check_fragments(value: bytes, header: SliceHeader) -> None:
    try:
        frames = sum(1 for _ in generate_frames(value, number_of_frames=header.n_frames))
    except Exception as error:  # pydicom raises ValueError, KeyError, struct.error alike
        raise DicomError(header.path, f"encapsulated pixel data is malformed: {error}",
                         tag=PIXEL_DATA) from error
    if frames < header.n_frames:
        raise DicomError(header.path, f"encapsulated pixel data holds {frames} frames",
                         tag=PIXEL_DATA, expected=f"{header.n_frames} (NumberOfFrames)")


def decode(ds: Dataset, header: SliceHeader, value: bytes) -> np.ndarray:
    """Every frame of `ds` as stored values, shape (frames, rows, columns).

    Compressed transfer syntaxes decode through pydicom's own decoders (pylibjpeg plugins
    for JPEG, JPEG-LS, JPEG 2000, RLE). Native ones are a fixed-size integer array, read
    with numpy: pydicom's generic path costs a hundred times more for the same result,
    which the tests check against pydicom on every native file in its corpus.
    """
    syntax = UID(header.transfer_syntax_uid)
    shape = (header.n_frames, header.rows, header.columns)
    if not syntax.is_encapsulated:
        return _native(value, header, syntax.is_little_endian)
    ds.PixelData = value
    try:
        stored = ds.pixel_array
    except BaseException as error:  # decoder plugins raise their own exception types,
        # and a Rust one (pylibjpeg-rle) panics on some corrupt data with pyo3's
        # PanicException, a BaseException: a bad file must not take the reader down
        if not isinstance(error, Exception) and type(error).__name__ != "PanicException":
            raise
        raise DicomError(header.path, f"pixel data could not be decoded by pydicom "
                         f"({syntax.name}): {type(error).__name__}: {error}",
                         tag=PIXEL_DATA) from error
    if stored.size != np.prod(shape):
        raise DicomError(header.path, f"decoded to shape {stored.shape}", tag=PIXEL_DATA,
                         expected=f"{shape[0]} frame(s) of {shape[1]} x {shape[2]}")
    return stored.reshape(shape)


@dataclass(frozen=True)
class NativeLocation:
    """Where a checked native PixelData value lies in its file, and the file as it was then.

    Native pixels need no parsing, only a read of a known length. The reader workers check
    the header and these bounds; the process that uses the pixels reads them from the file
    itself (from the page cache: one copy) instead of receiving them through a pipe
    (pickled, written, read and unpickled: three quarters of the cost of a CT slice).
    """

    offset: int
    length: int                     # exactly the bytes the image needs (checked)
    file_size: int
    mtime_ns: int
    little_endian: bool


def read_native(header: SliceHeader, where: NativeLocation) -> np.ndarray:
    """The frames of a native PixelData value located by a reader, read from its file.

    Raises IncompleteDicomError when the file is no longer the one that was checked.
    """
    with open(header.path, "rb") as f:
        now = os.fstat(f.fileno())
        if (now.st_size, now.st_mtime_ns) != (where.file_size, where.mtime_ns):
            raise IncompleteDicomError(header.path, "the file changed after its header was "
                                       f"read (size {where.file_size} -> {now.st_size})")
        value = os.pread(f.fileno(), where.length, where.offset)
    if len(value) != where.length:
        raise IncompleteDicomError(header.path, f"file ends {where.length - len(value)} "
                                   "bytes into the pixel data", tag=f"{PIXEL_DATA} length",
                                   value=where.length, expected="the whole value to be present")
    return _native(value, header, where.little_endian)


def _native(value: bytes, header: SliceHeader, little_endian: bool) -> np.ndarray:
    """Native PixelData as integers, values outside BitsStored masked or sign-extended."""
    allocated, stored_bits = header.bits_allocated, header.bits_stored
    shape = (header.n_frames, header.rows, header.columns)
    unsigned = np.dtype(f"u{allocated // 8}").newbyteorder("<" if little_endian else ">")
    raw = np.frombuffer(value, dtype=unsigned, count=int(np.prod(shape)))
    raw = raw.astype(unsigned.newbyteorder("="), copy=False)
    shift, signed = allocated - stored_bits, f"i{allocated // 8}"
    if shift == 0:
        pixels = raw.view(signed) if header.signed else raw          # no copy
    elif header.signed:
        pixels = (raw << shift).view(signed) >> shift                 # sign-extend
    else:
        pixels = raw & ((1 << stored_bits) - 1)                       # mask
    return pixels.reshape(shape)
