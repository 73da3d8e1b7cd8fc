"""`scanside analyze --json` on real files, with a small model in a zoo of its own."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.factories import tiny_series


@pytest.fixture
def zoo(tiny_zoo):
    return tiny_zoo


def analyze(*args):
    result = subprocess.run([sys.executable, "-m", "edge", "analyze", *map(str, args),
                             "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_each_series_gets_one_result_in_the_documented_shape(zoo, pet_cases, backend):
    report = analyze(pet_cases[0], pet_cases[1], "--zoo", zoo, "--backend", backend)
    truths = {json.loads((f / "truth.json").read_text())["series_uid"] for f in pet_cases[:2]}
    assert {s["series_uid"] for s in report["series"]} == truths
    for series in report["series"]:
        assert set(series) == {"series_uid", "study_uid", "modality", "status", "reason",
                               "findings", "timings_ms"}
        assert series["modality"] == "PT" and series["status"] in ("positive", "negative")
        assert set(series["timings_ms"]) == {"preprocess", "infer", "postprocess"}
        for finding in series["findings"]:
            assert set(finding) == {"center_mm", "diameter_mm", "volume_mm3", "probability",
                                    "slices"}
            assert len(finding["center_mm"]) == 3 and 0 <= finding["probability"] <= 1
            assert finding["slices"][0] <= finding["slices"][1]


def test_a_series_without_a_model_is_failed_not_negative(zoo, tmp_path):
    series = tiny_series(3)
    series.write(tmp_path)
    (result,) = analyze(tmp_path, "--zoo", zoo)["series"]
    assert result["status"] == "failed"
    assert result["reason"] == "no model for modality 'CT'"
    assert result["findings"] == []


def test_unreadable_files_are_listed_with_their_reason(zoo, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image\n" * 20)
    report = analyze(tmp_path, "--zoo", zoo)
    assert report["series"] == []
    assert "not a DICOM Part 10 file" in report["rejected"][0]["reason"]


def test_auto_and_torch_agree_on_the_findings(zoo, pet_cases):
    by_backend = {b: analyze(*pet_cases, "--zoo", zoo, "--backend", b)["series"]
                  for b in ("auto", "torch")}
    for a, t in zip(*by_backend.values(), strict=True):
        assert a["status"] == t["status"]
        assert [f["slices"] for f in a["findings"]] == [f["slices"] for f in t["findings"]]
