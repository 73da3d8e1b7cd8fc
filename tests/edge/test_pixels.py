"""Native pixel data decoded with numpy matches pydicom's own decoder, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import dcmread, dcmwrite
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian

from edge.errors import DicomError
from edge.ingest.reader import read_file
from tests.factories import PYDICOM_DATA, pydicom_sample_files, tiny_series


def _native_samples():
    for path in pydicom_sample_files():
        try:
            planes = read_file(str(path))
        except DicomError:
            continue
        if not UID(planes[0].header.transfer_syntax_uid).is_encapsulated:
            yield pytest.param(path, planes, id=path.name)


@pytest.mark.parametrize("path,planes", list(_native_samples()))
def test_every_native_sample_decodes_like_pydicom(path, planes):
    expected = dcmread(path).pixel_array.reshape(len(planes), *planes[0].stored.shape)
    for plane in planes:
        np.testing.assert_array_equal(plane.stored, expected[plane.header.frame])
        assert plane.stored.dtype.kind == expected.dtype.kind


@pytest.mark.parametrize("bits_allocated,bits_stored,signed,syntax", [
    (16, 12, True, ExplicitVRLittleEndian),
    (16, 12, False, ExplicitVRLittleEndian),
    (16, 16, True, ExplicitVRBigEndian),
    (16, 12, True, ExplicitVRBigEndian),
    (8, 8, False, ExplicitVRLittleEndian),
    (8, 7, True, ExplicitVRLittleEndian),
    (32, 32, True, ExplicitVRLittleEndian),
    (32, 20, False, ExplicitVRLittleEndian),
])
def test_unusual_bit_layouts_decode_like_pydicom(tmp_path, bits_allocated, bits_stored, signed,
                                                 syntax):
    """Includes junk in the bits above BitsStored, which both must ignore."""
    path = tiny_series(1, "MR").write(tmp_path)[0]
    ds = dcmread(path)
    rng = np.random.default_rng(bits_allocated * 100 + bits_stored)
    dtype = np.dtype(f"{'i' if signed else 'u'}{bits_allocated // 8}")
    info = np.iinfo(dtype)
    raw = rng.integers(info.min, info.max, (8, 8), dtype=dtype, endpoint=True)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    big = syntax == ExplicitVRBigEndian
    ds.PixelData = raw.astype(dtype.newbyteorder(">" if big else "<")).tobytes()
    ds["PixelData"].VR = "OB" if bits_allocated == 8 else "OW"
    ds.file_meta.TransferSyntaxUID = syntax
    dcmwrite(path, ds, little_endian=not big, implicit_vr=False, force_encoding=True)
    (plane,) = read_file(str(path))
    np.testing.assert_array_equal(plane.stored, dcmread(path).pixel_array)


def test_a_decoder_panic_on_corrupt_rle_is_a_dicom_error_naming_the_file(tmp_path):
    data = bytearray(next(PYDICOM_DATA.rglob("MR_small_RLE.dcm")).read_bytes())
    data[4134] ^= 36             # an RLE segment that overruns the frame: pylibjpeg-rle
    path = tmp_path / "corrupt.dcm"                    # panics (a BaseException, not an
    path.write_bytes(bytes(data))                      # Exception) on it
    with pytest.raises(DicomError, match="PanicException") as error:
        read_file(str(path))
    assert str(path) in str(error.value) and "PixelData" in str(error.value)
