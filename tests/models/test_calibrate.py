"""Choosing the operating point on a calibration set."""

from __future__ import annotations

import json

from edge.inference.spec import LESION_SCORES
from models.calibrate import DETECTION, VOLUME_MM3, calibrate, choose
from models.checkpoint import load_checkpoint
from models.torch_backend import TorchBackend


def row(d, v, sens10, sens, fp, spec):
    return {"detection_probability": d, "min_volume_mm3": v,
            "lesion_sensitivity_10mm_or_more": sens10, "lesion_sensitivity": sens,
            "false_positives_per_scan": fp, "series_specificity": spec,
            "series_sensitivity": sens}


def test_the_most_sensitive_point_within_the_limits_is_chosen():
    rows = [row(0.5, 5, 1.0, 0.95, 1.2, 0.6),       # too many false positives
            row(0.7, 15, 0.97, 0.9, 0.3, 0.9),
            row(0.9, 30, 0.95, 0.85, 0.1, 1.0)]
    assert choose(rows, max_fp=0.4, min_specificity=0.9)["detection_probability"] == 0.7


def test_with_no_point_within_the_limits_the_most_sensitive_at_one_fp_per_scan_wins():
    rows = [row(0.5, 5, 1.0, 0.95, 1.2, 0.6), row(0.9, 30, 0.5, 0.4, 0.2, 0.8),
            row(0.8, 30, 0.9, 0.8, 0.9, 0.5)]
    assert choose(rows, max_fp=0.4, min_specificity=0.9)["detection_probability"] == 0.8


def test_with_every_point_above_one_fp_per_scan_the_fewest_false_positives_win():
    rows = [row(0.5, 5, 1.0, 0.95, 2.2, 0.6), row(0.9, 30, 0.9, 0.8, 1.3, 0.0),
            row(0.7, 30, 0.1, 0.1, 2.1, 0.25)]
    assert choose(rows, max_fp=0.4, min_specificity=0.9)["detection_probability"] == 0.9


def test_a_point_that_finds_nothing_is_never_chosen():
    rows = [row(0.8, 5, 0.6, 0.5, 0.6, 0.8), row(0.99, 5, 0.0, 0.0, 0.0, 1.0)]
    assert choose(rows, max_fp=0.4, min_specificity=0.9)["detection_probability"] == 0.8


def test_calibration_writes_the_chosen_thresholds_into_a_copy_of_the_model(tiny_zoo, pet_cases,
                                                                           tmp_path):
    source = tiny_zoo / "PT" / "model.pt"
    with TorchBackend(source) as backend:
        report = calibrate(pet_cases, source, tmp_path / "calibrated.pt", backend)
    calibrated = load_checkpoint(tmp_path / "calibrated.pt").spec
    chosen = report["chosen"]
    assert calibrated.thresholds.detection_probability == chosen["detection_probability"]
    assert calibrated.thresholds.min_volume_mm3 == chosen["min_volume_mm3"]
    assert calibrated.thresholds.slice_head == chosen["slice_head"]
    assert calibrated.thresholds.lesion_score == chosen["lesion_score"]
    assert calibrated.training_data["calibration"]["series"] == len(pet_cases)
    points = json.loads((tmp_path / "calibrated.pt.calibration.json").read_text())["points"]
    pixel = load_checkpoint(source).spec.thresholds.lesion_probability
    by_pixels = [d for d in DETECTION if d >= pixel]     # lower ones repeat the same point
    per_score = (len(DETECTION) + len(by_pixels)) * len(VOLUME_MM3)
    assert [sum(p["lesion_score"] == score for p in points) for score in LESION_SCORES] == \
        [per_score] * len(LESION_SCORES)
    assert load_checkpoint(source).spec.thresholds.detection_probability == 0.5   # untouched
