"""The DICOM reader: physical units, geometry, completeness checks, hostile files."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import EnhancedMRImageStorage, RLELossless

from edge.errors import DicomError, IncompleteDicomError
from edge.ingest.reader import ReadLimits, parse_file, read_file
from models.synthetic.dicom import StorageConvention
from tests.factories import (
    PYDICOM_DATA,
    SAGITTAL,
    deflate_bomb,
    enhanced_ct,
    pydicom_sample_files,
    tiny_series,
    truncate,
    with_header_length,
    with_pixel_length,
    zero_filled_like,
)


def test_ct_pixels_come_out_in_hounsfield_units_for_signed_and_unsigned_storage(tmp_path):
    signed = tiny_series(1).write(tmp_path / "signed")[0]
    unsigned_series = tiny_series(1, storage=StorageConvention(signed=False, intercept=-1024))
    unsigned = unsigned_series.write(tmp_path / "unsigned")[0]
    for path, series in ((signed, None), (unsigned, unsigned_series)):
        (plane,) = read_file(str(path))
        assert plane.header.units == "HU"
        expected = (series or tiny_series(1)).values(0)
        np.testing.assert_allclose(plane.pixels(), expected, atol=1e-3)
    assert read_file(str(unsigned))[0].stored.dtype == np.uint16


def test_pet_pixels_use_each_slice_own_rescale_slope(tmp_path):
    series = tiny_series(3, "PT")
    paths = series.write(tmp_path)
    slopes = set()
    for i, path in enumerate(paths):
        (plane,) = read_file(str(path))
        slopes.add(plane.header.rescale.slope)
        np.testing.assert_allclose(plane.pixels(), series.values(i), rtol=1e-3, atol=0.5)
        assert plane.header.pet.injected_dose_bq == pytest.approx(350e6)
        assert plane.header.pet.patient_weight_kg == pytest.approx(75.0)
        assert plane.header.pet.injection_time is not None
    assert len(slopes) == 3


def test_mr_pixels_are_returned_as_stored(tmp_path):
    path = tiny_series(1, "MR").write(tmp_path)[0]
    (plane,) = read_file(str(path))
    assert plane.header.units == "stored"
    np.testing.assert_array_equal(plane.pixels(), dcmread(path).pixel_array)


def test_geometry_comes_from_image_position_orientation_and_pixel_spacing(tmp_path):
    series = tiny_series(2, orientation=SAGITTAL, origin=(12.5, -3.0, 40.0))
    (plane,) = read_file(str(series.write(tmp_path, indices=[1])[0]))
    assert plane.header.orientation == pytest.approx(SAGITTAL)
    assert plane.header.position_mm == pytest.approx((12.5 - 2.5, -3.0, 40.0))  # normal is -x
    assert plane.header.spacing_mm == pytest.approx((0.7, 0.8))
    assert plane.header.normal == pytest.approx([-1.0, 0.0, 0.0])
    assert plane.header.expected_count == 2


def test_compressed_transfer_syntax_decodes_through_pydicom(tmp_path):
    path = tiny_series(1).write(tmp_path)[0]
    ds = dcmread(path)
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm")
    (plane,) = read_file(str(tmp_path / "rle.dcm"))
    np.testing.assert_array_equal(plane.stored, dcmread(path).pixel_array)


@pytest.mark.parametrize("name", ["MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "MR_small_RLE.dcm", "MR_small_bigendian.dcm"])
def test_pydicom_encodings_of_the_same_image_decode_identically(name):
    reference = read_file(str(PYDICOM_DATA / "test_files" / "MR_small.dcm"))[0].stored
    (plane,) = read_file(str(PYDICOM_DATA / "test_files" / name))
    np.testing.assert_array_equal(plane.stored.astype(np.int32), reference.astype(np.int32))


def test_enhanced_multiframe_is_split_into_frames_with_their_own_geometry(tmp_path):
    path = enhanced_ct(tmp_path / "enhanced.dcm", frames=3)
    planes = read_file(str(path))
    assert [p.header.frame for p in planes] == [0, 1, 2]
    assert [p.header.position_mm[2] for p in planes] == pytest.approx([0.0, 5.0, 10.0])
    assert {p.header.instance_key for p in planes} == {
        f"{planes[0].header.sop_instance_uid}#{i}" for i in (1, 2, 3)}
    assert planes[2].pixels()[0, 0] == pytest.approx(2 * 100.0 - 1024.0)


@pytest.mark.parametrize("echo_ms,repetition_ms,weighting", [
    ("15", "500", "T1"),          # spin-echo T1
    ("2.1", "4.5", "T1"),         # gradient-echo T1 (VIBE, LAVA)
    ("90", "4000", "T2"),         # fast spin-echo T2
    ("120", "9000", "T2"),        # FLAIR
    ("20", "3000", ""),           # proton density
    ("15", None, ""),             # a short echo alone says nothing
    (None, None, "")])
def test_mr_weighting_is_read_from_the_echo_and_repetition_times(
        tmp_path, echo_ms, repetition_ms, weighting):
    path = tiny_series(1, "MR").write(tmp_path)[0]
    ds = dcmread(path)
    for keyword, value in (("EchoTime", echo_ms), ("RepetitionTime", repetition_ms)):
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)
    (plane,) = read_file(str(path))
    assert plane.header.mr_weighting == weighting


def test_a_genuine_mr_file_is_t2_weighted_and_other_modalities_have_no_weighting(tmp_path):
    (plane,) = read_file(str(PYDICOM_DATA / "test_files" / "MR_small.dcm"))   # TE 240, TR 4000
    assert plane.header.mr_weighting == "T2"
    (ct,) = read_file(str(tiny_series(1, "CT").write(tmp_path)[0]))
    assert ct.header.mr_weighting == ""


def test_enhanced_mr_frames_take_their_weighting_from_their_own_echo(tmp_path):
    """A dual-echo enhanced MR: the echo time of each frame in its MREchoSequence, the
    repetition time in the shared MRTimingAndRelatedParametersSequence."""
    path = enhanced_ct(tmp_path / "enhanced.dcm", frames=2)
    ds = dcmread(path)
    ds.Modality, ds.SOPClassUID = "MR", EnhancedMRImageStorage
    ds.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    timing = Dataset()
    timing.RepetitionTime = 600
    ds.SharedFunctionalGroupsSequence[0].MRTimingAndRelatedParametersSequence = [timing]
    for frame, echo_ms in zip(ds.PerFrameFunctionalGroupsSequence, (12.0, 80.0), strict=True):
        echo = Dataset()
        echo.EffectiveEchoTime = echo_ms
        frame.MREchoSequence = [echo]
    ds.save_as(path)
    assert [p.header.mr_weighting for p in read_file(str(path))] == ["T1", "T2"]


def test_the_contrast_agent_is_read_where_a_series_records_one(tmp_path):
    (ct,) = read_file(str(PYDICOM_DATA / "test_files" / "CT_small.dcm"))
    assert ct.header.contrast_agent == "ISOVUE300/100"
    (mr,) = read_file(str(PYDICOM_DATA / "test_files" / "MR_small.dcm"))   # the tag, empty
    assert mr.header.contrast_agent == ""
    path = enhanced_ct(tmp_path / "enhanced.dcm", frames=2)   # enhanced: coded, in a sequence
    ds = dcmread(path)
    agent = Dataset()
    agent.CodeValue, agent.CodingSchemeDesignator, agent.CodeMeaning = "C-B0322", "SRT", "Iohexol"
    ds.ContrastBolusAgentSequence = [agent]
    ds.save_as(path)
    assert [p.header.contrast_agent for p in read_file(str(path))] == ["Iohexol", "Iohexol"]


def test_multiframe_without_per_frame_geometry_is_rejected_with_the_reason():
    with pytest.raises(DicomError, match=r"PerFrameFunctionalGroupsSequence \(5200,9230\)"):
        read_file(str(PYDICOM_DATA / "test_files" / "rtdose.dcm"))


def test_file_cut_in_the_pixel_data_is_incomplete(tmp_path):
    path = truncate(tiny_series(1).write(tmp_path)[0], -40)
    with pytest.raises(IncompleteDicomError, match="40 bytes into the pixel data"):
        read_file(str(path))


def test_file_cut_in_the_header_is_incomplete(tmp_path):
    path = truncate(tiny_series(1).write(tmp_path)[0], 600)
    with pytest.raises(IncompleteDicomError):
        read_file(str(path))


def test_zero_filled_preallocated_file_is_incomplete_not_invalid(tmp_path):
    source = tiny_series(1).write(tmp_path)[0]
    path = zero_filled_like(source, tmp_path / "prealloc.dcm")
    with pytest.raises(IncompleteDicomError, match="pre-allocated"):
        read_file(str(path))


def test_non_dicom_file_is_rejected_naming_what_was_found(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("shift handover notes\n" * 20)
    with pytest.raises(DicomError, match="not a DICOM Part 10 file") as caught:
        read_file(str(path))
    assert not isinstance(caught.value, IncompleteDicomError)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("uid_keyword", ["SOPInstanceUID", "SeriesInstanceUID"])
def test_path_traversal_uid_is_rejected_by_the_uid_grammar(tmp_path, uid_keyword):
    path = tiny_series(1).write(tmp_path)[0]
    ds = dcmread(path)
    setattr(ds, uid_keyword, "../../../etc/passwd")
    ds.save_as(path)
    with pytest.raises(DicomError, match=f"{uid_keyword} .*'../../../etc/passwd'.*not a valid "
                                         "DICOM UID"):
        read_file(str(path))


def test_huge_declared_pixel_length_is_rejected_without_allocating(tmp_path):
    source = tiny_series(1).write(tmp_path)[0]
    path = with_pixel_length(source, tmp_path / "huge.dcm", 0xFFFFFFF0)
    with pytest.raises(DicomError, match="PixelData .* length is 4294967280") as caught:
        read_file(str(path))
    assert not isinstance(caught.value, IncompleteDicomError)


def test_huge_declared_header_element_length_is_rejected_naming_the_element(tmp_path):
    source = tiny_series(1).write(tmp_path)[0]
    path = with_header_length(source, tmp_path / "huge-header.dcm", 0xFFFFFFF0)
    with pytest.raises(DicomError, match=r"\(0009,1010\) length is 4294967280") as caught:
        read_file(str(path))
    assert not isinstance(caught.value, IncompleteDicomError)


def test_pixel_data_of_the_wrong_size_is_rejected_with_the_expected_size(tmp_path):
    source = tiny_series(1).write(tmp_path)[0]
    path = with_pixel_length(source, tmp_path / "short.dcm", 100)
    with pytest.raises(DicomError, match=r"expected 128 bytes \(Rows 8 x Columns 8"):
        read_file(str(path))


def test_deflate_bomb_is_refused_before_it_expands(tmp_path):
    source = tiny_series(1).write(tmp_path)[0]
    path = deflate_bomb(source, tmp_path / "bomb.dcm", inflated_bytes=64 << 20)
    assert path.stat().st_size < 200_000
    with pytest.raises(DicomError, match="deflate bomb"):
        read_file(str(path), ReadLimits(max_inflated_bytes=16 << 20))


def test_colour_image_is_rejected_naming_samples_per_pixel():
    with pytest.raises(DicomError, match=r"SamplesPerPixel \(0028,0002\) is 3"):
        read_file(str(PYDICOM_DATA / "test_files" / "SC_rgb_rle.dcm"))


def test_structured_report_is_rejected_as_no_image():
    with pytest.raises(DicomError, match="no image to analyse"):
        read_file(str(PYDICOM_DATA / "test_files" / "test-SR.dcm"))


def test_reading_never_modifies_the_file(tmp_path):
    path = tiny_series(1).write(tmp_path)[0]
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    read_file(str(path))
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_error_names_file_tag_value_and_expectation(tmp_path):
    path = tiny_series(1).write(tmp_path)[0]
    ds = dcmread(path)
    ds.PixelSpacing = [0.0, 0.7]
    ds.save_as(path)
    with pytest.raises(DicomError) as caught:
        read_file(str(path))
    message = str(caught.value)
    assert message.startswith(str(path))
    assert "PixelSpacing (0028,0030) is [0.0, 0.7]" in message
    assert "expected two positive numbers in mm" in message



# Native pixel data is located by the header check and read by the process that uses it;
# only the first `ReadLimits.head_bytes` are read for the check when they hold the header.

SMALL_HEAD = ReadLimits(head_bytes=256)


def test_a_header_longer_than_the_first_bytes_is_read_from_the_whole_file(tmp_path):
    source = tiny_series(1, rows=64, columns=64).write(tmp_path)[0]
    ds = dcmread(source)
    ds.private_block(0x0009, "SCANSIDE TEST", create=True).add_new(0x10, "OB", b"\x02" * 4000)
    ds.save_as(source)
    (plane,) = read_file(str(source), SMALL_HEAD)
    np.testing.assert_array_equal(plane.stored, dcmread(source).pixel_array)


def test_a_large_file_cut_in_the_pixel_data_is_incomplete_from_its_first_bytes(tmp_path):
    path = truncate(tiny_series(1, rows=64, columns=64).write(tmp_path)[0], -40)
    with pytest.raises(IncompleteDicomError, match="40 bytes into the pixel data"):
        parse_file(str(path), SMALL_HEAD)     # from the file's size: the end is never read


def test_a_file_changed_between_its_header_check_and_its_pixel_read_is_incomplete(tmp_path):
    path = tiny_series(1, rows=64, columns=64).write(tmp_path)[0]
    parsed = parse_file(str(path))
    data = bytearray(path.read_bytes())
    data[-2:] = b"\x7f\x7f"
    path.write_bytes(bytes(data))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    with pytest.raises(IncompleteDicomError, match="changed after its header was read"):
        parsed.slices()


def test_reading_the_first_bytes_decides_every_pydicom_file_like_reading_it_whole(tmp_path):
    """The head-first path may only be faster: every file of pydicom's corpus gives the same
    slices or the same rejection as when the whole file is read first."""
    whole = ReadLimits(head_bytes=1 << 40)
    for path in pydicom_sample_files():
        if path.stat().st_size > 20 << 20:
            continue                      # the large samples are read by the corpus test
        outcome = {}
        for name, limits in (("head", SMALL_HEAD), ("whole", whole)):
            try:
                outcome[name] = [(s.header, s.stored) for s in read_file(str(path), limits)]
            except DicomError as error:
                outcome[name] = (type(error), error.reason)
        head, full = outcome["head"], outcome["whole"]
        if isinstance(full, tuple):
            assert head == full, path
        else:
            assert [h for h, _ in head] == [h for h, _ in full], path
            for (_, a), (_, b) in zip(head, full, strict=True):
                np.testing.assert_array_equal(a, b, err_msg=str(path))
