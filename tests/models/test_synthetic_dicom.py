"""The synthetic-series writer produces DICOM that independent tools accept."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace

import pytest

from models.synthetic.dicom import StorageConvention
from models.synthetic.physics import CT_CONTRAST_AGENT
from tests.factories import tiny_series

needs_dicom3tools = pytest.mark.skipif(shutil.which("dciodvfy") is None,
                                       reason="dicom3tools' dciodvfy is not installed "
                                              "(make deps installs it)")
needs_dcmtk = pytest.mark.skipif(shutil.which("dcmdump") is None,
                                 reason="dcmtk's dcmdump is not installed (make deps installs it)")


@needs_dicom3tools
@pytest.mark.parametrize("modality,contrast_agent", [
    ("CT", ""), ("CT", CT_CONTRAST_AGENT), ("MR", ""), ("PT", "")])
def test_dciodvfy_finds_no_error_in_a_written_slice(tmp_path, modality, contrast_agent):
    series = tiny_series(2, modality)
    series = replace(series, identity=replace(series.identity, contrast_agent=contrast_agent))
    path = series.write(tmp_path)[0]
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert errors == []


def test_a_compressed_slice_keeps_its_identity_and_its_values(tmp_path):
    from pydicom import dcmread
    from pydicom.uid import RLELossless

    series = tiny_series(1, storage=StorageConvention(transfer_syntax=RLELossless))
    path = series.write(tmp_path)[0]
    ds = dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == RLELossless
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID == series.planes[0].sop_uid
    assert (ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) ==
            series.values(0)).all()


@needs_dcmtk
@pytest.mark.parametrize("storage", [StorageConvention(),
                                     StorageConvention(signed=False, intercept=-1024)],
                         ids=["signed", "unsigned"])
def test_dcmtk_reads_back_the_rescale_and_pixel_representation(tmp_path, storage):
    path = tiny_series(1, storage=storage).write(tmp_path)[0]
    dump = subprocess.run(["dcmdump", "+L", str(path)], capture_output=True, text=True,
                          check=True).stdout
    assert f"(0028,0103) US {int(storage.signed)}" in dump
    assert f"(0028,1052) DS [{storage.intercept:g}]" in dump
