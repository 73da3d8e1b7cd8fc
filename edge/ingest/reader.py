"""One DICOM file -> validated `Slice` values.

The header is read first, up to the pixel data, and checked; then the pixel data element
is checked for completeness and read once: decoded here when compressed, located here and
read by the process that uses it when native (`parse_file`, `ParsedFile`). Every step is
pydicom's own (`read_preamble`, the file meta reader, `read_dataset`,
`data_element_generator`, `pixel_array`); this module only decides the order, bounds the
work and turns failures into `DicomError` with a reason a person can act on.

Runs inside the sandboxed reader workers (`edge.ingest.workers`), but is an ordinary
function: tests and `scanside inspect` call it directly.
"""

from __future__ import annotations

import io
import os
import zlib
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import (
    _read_file_meta_info,  # the meta reader behind pydicom's public read_file_meta_info
    data_element_generator,
    read_dataset,
    read_preamble,
)
from pydicom.uid import UID

from edge.errors import DicomError, IncompleteDicomError
from edge.ingest.header import parse_headers
from edge.ingest.pixels import (
    NativeLocation,
    check_pixel_element,
    decode,
    native_length,
    read_native,
)
from edge.values import Slice, SliceHeader

PREAMBLE_AND_PREFIX = 132
PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}  # PixelData, Float-, DoubleFloatPixelData


@dataclass(frozen=True)
class ReadLimits:
    """Bounds on the work one file may cause, beyond the worker's memory limit."""

    max_file_bytes: int = 2 << 30
    max_inflated_bytes: int = 2 << 30
    head_bytes: int = 64 << 10      # read first; headers of single images are a few kB


def read_file(path: str, limits: ReadLimits = ReadLimits()) -> list[Slice]:
    """Read, check and decode one DICOM file: one Slice per image plane.

    Raises IncompleteDicomError when the file looks unfinished (it may still be arriving)
    and DicomError when it cannot be used at all.
    """
    return parse_file(path, limits).slices()


@dataclass(frozen=True)
class ParsedFile:
    """A checked file: its planes' headers, and their frames decoded or, for native pixel
    data, where to read them (the sandboxed workers parse; see NativeLocation)."""

    headers: tuple[SliceHeader, ...]
    frames: np.ndarray | None = None          # (frames, rows, columns), stored values
    native: NativeLocation | None = None

    def slices(self) -> list[Slice]:
        """The planes with their pixels, reading native pixel data from the file now."""
        frames = self.frames
        if frames is None:
            frames = read_native(self.headers[0], self.native)
        return [Slice(header, frames[header.frame]) for header in self.headers]


def parse_file(path: str, limits: ReadLimits = ReadLimits()) -> ParsedFile:
    """Everything `read_file` does except reading native pixel values: the header and the
    pixel data element are checked, compressed pixel data is decoded.

    Only the first `limits.head_bytes` are read when they hold the whole header of a
    native image; anything else, including every doubt, is decided on the whole file.
    """
    head = _read_bytes(path, limits, limits.head_bytes)
    if len(head.data) < head.size:
        try:
            return _parse_bytes(path, head, limits)
        except (DicomError, _WholeFileNeeded):
            pass
        head = _read_bytes(path, limits)
    return _parse_bytes(path, head, limits)


class _WholeFileNeeded(Exception):
    """The first bytes of a file are not enough to check it."""


@dataclass(frozen=True)
class _FileBytes:
    data: bytes             # the whole file, or its first bytes
    size: int               # of the file when it was read
    mtime_ns: int


def _parse_bytes(path: str, read: _FileBytes, limits: ReadLimits) -> ParsedFile:
    whole = len(read.data) == read.size
    meta, body = _file_meta(path, read.data)
    syntax = _transfer_syntax(path, meta)
    if not whole and (syntax.is_encapsulated or syntax.is_deflated):
        raise _WholeFileNeeded                # their pixel data is decoded here
    if syntax.is_deflated:
        body = io.BytesIO(_inflate(path, body.read(), limits.max_inflated_bytes))
    ds = _read_header(path, body, syntax)
    ds.file_meta = meta
    if body.tell() >= len(body.getbuffer()):
        if not whole:
            raise _WholeFileNeeded            # the header runs past the first bytes
        try:
            _raise_if_truncated(path, ds, len(body.getbuffer()), limits)
        except DicomError:
            raise
        except Exception as error:  # converting a malformed element on the way
            raise _parse_failure(path, "the header", error) from error
    headers = tuple(_parse(ds, path))
    # Native values in the file itself are located, not read; deflated ones are in `body`.
    locate = not syntax.is_encapsulated and not syntax.is_deflated
    element = _pixel_element(path, body, syntax, limits, locate)
    check_pixel_element(element, headers[0], read.size if locate else len(body.getbuffer()))
    if locate:
        return ParsedFile(headers, native=NativeLocation(
            element.value_tell, native_length(headers[0]), read.size, read.mtime_ns,
            syntax.is_little_endian))
    return ParsedFile(headers, frames=decode(ds, headers[0], element.value))


def _read_bytes(path: str, limits: ReadLimits, at_most: int | None = None) -> _FileBytes:
    """The file's bytes (its first `at_most`, if given), size and modification time."""
    with open(path, "rb") as f:
        stat = os.fstat(f.fileno())
        size = stat.st_size
        if size > limits.max_file_bytes:
            raise DicomError(path, f"file is {size} bytes",
                             expected=f"at most {limits.max_file_bytes} (ingest.max_file_mb)")
        # Exactly the size seen: read(n) allocates n bytes up front. A file still growing
        # is caught by the caller, which compares size and mtime before and after.
        data = f.read(size if at_most is None else min(size, at_most))
    if len(data) < PREAMBLE_AND_PREFIX:
        raise IncompleteDicomError(path, f"file is {len(data)} bytes, shorter than the "
                                   "128-byte preamble and 'DICM' prefix")
    if data[128:132] != b"DICM":
        if not any(data[:PREAMBLE_AND_PREFIX]):
            raise IncompleteDicomError(path, "the first 132 bytes are all zero: pre-allocated "
                                       "and not yet written")
        raise DicomError(path, f"not a DICOM Part 10 file: found {data[128:132]!r} at byte 128",
                         expected="a 128-byte preamble followed by b'DICM'")
    return _FileBytes(data, size, stat.st_mtime_ns)


def _file_meta(path: str, data: bytes) -> tuple[FileMetaDataset, io.BytesIO]:
    body = io.BytesIO(data)
    try:
        read_preamble(body, False)
        meta = _read_file_meta_info(body)
    except Exception as error:  # pydicom raises many types on malformed meta groups
        raise _parse_failure(path, "the file meta information (group 0002)", error) from error
    return meta, body


def _transfer_syntax(path: str, meta: FileMetaDataset) -> UID:
    syntax = meta.get("TransferSyntaxUID")
    if not syntax:
        raise DicomError(path, "missing from the file meta information",
                         tag="TransferSyntaxUID (0002,0010)", expected="a transfer syntax UID")
    syntax = UID(str(syntax).strip())
    if not syntax.is_transfer_syntax:
        raise DicomError(path, "not a transfer syntax pydicom can read",
                         tag="TransferSyntaxUID (0002,0010)", value=str(syntax),
                         expected="a standard DICOM transfer syntax")
    return syntax


def _inflate(path: str, compressed: bytes, limit: int) -> bytes:
    """Inflate a deflated dataset, refusing to expand beyond `limit` bytes."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        data = inflater.decompress(compressed, limit + 1)
    except zlib.error as error:
        raise DicomError(path, f"deflated dataset is corrupt: {error}") from error
    if len(data) > limit:
        raise DicomError(path, f"deflated dataset expands to more than {limit} bytes from "
                         f"{len(compressed)} (a deflate bomb)",
                         expected=f"at most {limit} bytes inflated (ingest.max_file_mb)")
    if not inflater.eof:
        raise IncompleteDicomError(path, "deflated dataset ends before its end-of-stream marker")
    return data


def _read_header(path: str, body: io.BytesIO, syntax: UID) -> Dataset:
    try:
        return read_dataset(body, syntax.is_implicit_VR, syntax.is_little_endian,
                            stop_when=lambda tag, vr, length: tag in PIXEL_TAGS)
    except Exception as error:
        raise _parse_failure(path, "the header", error) from error


def _parse(ds: Dataset, path: str):
    try:
        return parse_headers(ds, path)
    except DicomError:
        raise
    except Exception as error:  # value conversion of a malformed element inside pydicom
        raise _parse_failure(path, "a header value", error) from error


def _pixel_element(path: str, body: io.BytesIO, syntax: UID, limits: ReadLimits,
                   locate: bool):
    """The next element, which must be PixelData; with `locate`, its value is left unread
    (pydicom's deferred read: value None, value_tell and length set)."""
    try:
        element = next(data_element_generator(body, syntax.is_implicit_VR,
                                              syntax.is_little_endian,
                                              defer_size=0 if locate else None), None)
    except EOFError as error:
        raise IncompleteDicomError(path, f"file ends inside the pixel data: {error}",
                                   tag="PixelData (7FE0,0010)") from error
    except Exception as error:
        raise _parse_failure(path, "the pixel data element", error) from error
    if element is None:  # only a non-image gets here; _raise_if_truncated saw the rest
        raise DicomError(path, "no PixelData (7FE0,0010) element", expected="pixel data")
    if element.tag != 0x7FE00010:
        raise DicomError(path, "floating-point pixel data is not analysed",
                         tag=f"({element.tag.group:04X},{element.tag.element:04X})",
                         expected="integer PixelData (7FE0,0010)")
    if element.length != 0xFFFFFFFF and element.length > limits.max_file_bytes:
        raise DicomError(path, "declares more bytes than any file the appliance accepts",
                         tag="PixelData (7FE0,0010) length", value=element.length,
                         expected=f"at most {limits.max_file_bytes} (ingest.max_file_mb)")
    return element


def _raise_if_truncated(path: str, ds: Dataset, size: int, limits: ReadLimits) -> None:
    """The header ran to the end of the data without reaching pixel data. Name the element
    whose declared length runs past the end, if any; an image that simply stops before its
    pixels is incomplete; anything else is left for the header checks to describe."""
    for element in ds.elements():
        length = getattr(element, "length", 0)
        if length == 0xFFFFFFFF or getattr(element, "value_tell", None) is None:
            continue
        end = element.value_tell + length
        if end > size:
            tag = f"({element.tag.group:04X},{element.tag.element:04X}) length"
            if length > limits.max_file_bytes:
                raise DicomError(path, f"runs past the end of the file (byte {size})", tag=tag,
                                 value=length, expected=f"at most {limits.max_file_bytes} "
                                 "bytes (ingest.max_file_mb)")
            raise IncompleteDicomError(path, f"file ends at byte {size}, inside this element",
                                       tag=tag, value=length,
                                       expected=f"{end - size} more bytes")
    sop_class = UID(str(ds.get("SOPClassUID", "")))
    if "Rows" in ds or "Image Storage" in sop_class.name:
        raise IncompleteDicomError(path, f"file ends at byte {size} of the dataset before the "
                                   "PixelData (7FE0,0010) element")


def _parse_failure(path: str, part: str, error: Exception) -> DicomError:
    if isinstance(error, EOFError):
        return IncompleteDicomError(path, f"file ends inside {part}: {error}")
    if isinstance(error, MemoryError):
        return DicomError(path, f"parsing {part} exhausted the reader's memory limit")
    return DicomError(path, f"pydicom could not parse {part}: {type(error).__name__}: {error}")
