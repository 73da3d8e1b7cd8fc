"""One DICOM file -> validated `Slice` values.

The header is read first, up to the pixel data, and checked; then the pixel data element
is read once, checked for completeness and decoded. Every step is pydicom's own
(`read_preamble`, the file meta reader, `read_dataset`, `data_element_generator`,
`pixel_array`); this module only decides the order, bounds the work and turns failures
into `DicomError` with a reason a person can act on.

Runs inside the sandboxed reader workers (`edge.ingest.workers`), but is an ordinary
function: tests and `scanside inspect` call it directly.
"""

from __future__ import annotations

import io
import os
import zlib
from dataclasses import dataclass

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
from edge.ingest.pixels import check_pixel_element, decode
from edge.values import Slice

PREAMBLE_AND_PREFIX = 132
PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}  # PixelData, Float-, DoubleFloatPixelData


@dataclass(frozen=True)
class ReadLimits:
    """Bounds on the work one file may cause, beyond the worker's memory limit."""

    max_file_bytes: int = 2 << 30
    max_inflated_bytes: int = 2 << 30


def read_file(path: str, limits: ReadLimits = ReadLimits()) -> list[Slice]:
    """Read, check and decode one DICOM file: one Slice per image plane.

    Raises IncompleteDicomError when the file looks unfinished (it may still be arriving)
    and DicomError when it cannot be used at all.
    """
    data = _read_bytes(path, limits)
    meta, body = _file_meta(path, data)
    syntax = _transfer_syntax(path, meta)
    if syntax.is_deflated:
        body = io.BytesIO(_inflate(path, body.read(), limits.max_inflated_bytes))
    ds = _read_header(path, body, syntax)
    ds.file_meta = meta
    if body.tell() >= len(body.getbuffer()):
        try:
            _raise_if_truncated(path, ds, len(body.getbuffer()), limits)
        except DicomError:
            raise
        except Exception as error:  # converting a malformed element on the way
            raise _parse_failure(path, "the header", error) from error
    headers = _parse(ds, path)
    element = _pixel_element(path, body, syntax, limits)
    check_pixel_element(element, headers[0], len(data))
    frames = decode(ds, headers[0], element.value)
    return [Slice(header, frames[header.frame]) for header in headers]


def _read_bytes(path: str, limits: ReadLimits) -> bytes:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limits.max_file_bytes:
            raise DicomError(path, f"file is {size} bytes",
                             expected=f"at most {limits.max_file_bytes} (ingest.max_file_mb)")
        # Exactly the size seen: read(n) allocates n bytes up front. A file still growing
        # is caught by the caller, which compares size and mtime before and after.
        data = f.read(size)
    if len(data) < PREAMBLE_AND_PREFIX:
        raise IncompleteDicomError(path, f"file is {len(data)} bytes, shorter than the "
                                   "128-byte preamble and 'DICM' prefix")
    if data[128:132] != b"DICM":
        if not any(data[:PREAMBLE_AND_PREFIX]):
            raise IncompleteDicomError(path, "the first 132 bytes are all zero: pre-allocated "
                                       "and not yet written")
        raise DicomError(path, f"not a DICOM Part 10 file: found {data[128:132]!r} at byte 128",
                         expected="a 128-byte preamble followed by b'DICM'")
    return data


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


def _pixel_element(path: str, body: io.BytesIO, syntax: UID, limits: ReadLimits):
    try:
        element = next(data_element_generator(body, syntax.is_implicit_VR,
                                              syntax.is_little_endian), None)
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
