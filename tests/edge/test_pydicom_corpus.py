"""Every file pydicom ships goes through the sandboxed reader: each one is read or
rejected with a specific reason, and none crashes or hangs the caller."""

from __future__ import annotations

import re

import pytest

from tests.factories import pydicom_sample_files

SPECIFIC = re.compile(r"\([0-9A-F]{4},[0-9A-F]{4}\)|DICOM Part 10|pydicom could not parse|"
                      r"no image to analyse|file ends|pre-allocated")


@pytest.fixture(scope="module")
def outcomes(reader_pool):
    files = pydicom_sample_files()
    futures = [reader_pool.submit(str(f)) for f in files]
    return {f: future.result(timeout=120) for f, future in zip(files, futures, strict=True)}


def test_the_corpus_is_the_whole_pydicom_data_folder(outcomes):
    assert len(outcomes) >= 190
    assert any(p.name == "CT_small.dcm" for p in outcomes)


def test_every_file_is_read_or_rejected_with_a_specific_reason(outcomes):
    vague = {str(p): o.rejection.reason for p, o in outcomes.items()
             if o.rejection is not None and not SPECIFIC.search(o.rejection.reason)}
    assert vague == {}
    for path, outcome in outcomes.items():
        assert bool(outcome.slices) != (outcome.rejection is not None), path


def test_the_greyscale_images_with_geometry_are_read(outcomes):
    read = {p.name for p, o in outcomes.items() if o.slices}
    assert {"CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
            "MR_small_jpeg_ls_lossless.dcm", "693_J2KI.dcm"} <= read
    assert len(read) >= 40


def test_the_truncated_sample_is_recognised_as_incomplete(outcomes):
    (truncated,) = [o for p, o in outcomes.items() if p.name == "MR_truncated.dcm"]
    assert truncated.rejection.kind == "incomplete"
