"""`scanside inspect`: the read-only survey, through the real console script."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.factories import scanside, tiny_series, truncate


@pytest.fixture
def scanner_output(tmp_path):
    """A folder as a scanner might leave it: two series, a partial upload, junk."""
    root = tmp_path / "export"
    ct = tiny_series(4)
    ct.write(root / "ct")
    mr = tiny_series(5, "MR", expected=False)
    mr.write(root / "mr", indices=[0, 1, 3, 4])         # a gap, and no count in the tags
    tiny_series(1).write(root, names={0: "IM9.dcm.part"})
    truncate(tiny_series(1).write(root / "cut")[0], -10)
    (root / "DICOMDIR.txt").write_text("index\n" * 40)
    return root, ct, mr


def test_json_survey_accounts_for_every_file_exactly_once(scanner_output):
    root, ct, mr = scanner_output
    result = scanside("inspect", str(root), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    listed = [f for s in report["series"] for f in s["files"]] + \
             [r["path"] for r in report["rejected"]]
    on_disk = sorted(str(p) for p in root.rglob("*") if p.is_file())
    assert sorted(listed) == on_disk


def test_json_survey_describes_each_series(scanner_output):
    root, ct, mr = scanner_output
    report = json.loads(scanside("inspect", str(root), "--json").stdout)
    by_modality = {s["modality"]: s for s in report["series"]}
    assert by_modality["CT"] | {"files": None} == {
        "series_uid": ct.identity.series_uid, "study_uid": ct.identity.study_uid,
        "modality": "CT", "description": "tiny CT", "n_slices": 4, "rows": 8, "columns": 8,
        "spacing_mm": [0.7, 0.8, 2.5], "expected_slices": 4, "complete": True, "problems": [],
        "files": None}
    assert by_modality["MR"]["complete"] is False
    assert by_modality["MR"]["expected_slices"] is None
    assert any(p.startswith("gap of 5.00 mm") for p in by_modality["MR"]["problems"])


def test_json_survey_gives_each_rejected_file_its_reason(scanner_output):
    root, *_ = scanner_output
    rejected = {r["path"].rsplit("/", 1)[1]: r["reason"]
                for r in json.loads(scanside("inspect", str(root), "--json").stdout)["rejected"]}
    assert rejected["IM9.dcm.part"].startswith("temporary name")
    assert rejected["slice000.dcm"].startswith("incomplete: ")
    assert "not a DICOM Part 10 file" in rejected["DICOMDIR.txt"]


def test_inspect_never_changes_or_moves_a_file(scanner_output):
    root, *_ = scanner_output

    def snapshot():
        return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*")
                if p.is_file()}

    before = snapshot()
    scanside("inspect", str(root))
    assert snapshot() == before


def test_text_survey_is_a_readable_table(scanner_output):
    root, ct, _ = scanner_output
    out = scanside("inspect", str(root)).stdout
    assert f"CT  {ct.identity.series_uid}  4/4 slices  8x8  0.7x0.8x2.5 mm  complete" in out
    assert "rejected (3):" in out


def test_a_bad_config_stops_with_a_message_naming_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[ingest]\nworkers = -1\n")
    result = scanside("inspect", str(tmp_path), "--config", str(bad))
    assert result.returncode == 2
    assert "[ingest] workers = -1" in result.stderr
