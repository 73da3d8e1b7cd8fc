"""Choosing the operating point on a calibration set."""

from __future__ import annotations

import json
from dataclasses import replace
from operator import itemgetter

import numpy as np
import pytest

from edge.backends.onnxruntime import OnnxRuntimeBackend
from edge.inference.series import SeriesPrediction
from edge.inference.spec import LESION_FEATURES
from edge.series.geometry import SeriesGeometry
from export.onnx_export import export_onnx
from models.calibrate import (
    COMPANION,
    DETECTION,
    PIXEL,
    VOLUME_MM3,
    calibrate,
    choose,
    cross_fitted_classifiers,
    fit_classifier,
    specificity_bound,
    sweep,
    sweep_pixels,
)
from models.checkpoint import load_checkpoint
from models.torch_backend import TorchBackend
from tests.edge.test_postprocess import CONTRAST, SPEC, predictions, series
from tests.factories import scanside


def row(d, v, sens10, sens, fp, spec, negatives=1000):
    return {"detection_probability": d, "min_volume_mm3": v,
            "lesion_sensitivity_10mm_or_more": sens10, "lesion_sensitivity": sens,
            "false_positives_per_scan": fp, "series_specificity": spec,
            "series_sensitivity": sens, "negative_series": negatives}


def test_the_most_sensitive_point_within_the_limits_is_chosen():
    rows = [row(0.5, 5, 1.0, 0.95, 1.2, 0.6),       # too many false positives
            row(0.7, 15, 0.97, 0.9, 0.3, 0.92),
            row(0.9, 30, 0.95, 0.85, 0.1, 1.0)]
    assert choose(rows, max_fp=0.4, min_specificity=0.9)["detection_probability"] == 0.7


def test_the_specificity_limit_applies_one_standard_error_below_the_figure_measured():
    """Of 54 series without a lesion, 51 called negative (0.944) has a Wilson bound of 0.904
    and meets 0.9; 50 (0.926, bound 0.882) does not, nor does 0.9 itself on 30 (27 of 30).
    Measured on 1000 negatives, 0.92 has a bound of 0.911."""
    at_the_limit = row(0.5, 5, 1.0, 0.95, 0.2, 27 / 30, negatives=30)
    one_more_false = row(0.6, 5, 0.99, 0.94, 0.2, 50 / 54, negatives=54)
    margin = row(0.7, 15, 0.97, 0.9, 0.1, 51 / 54, negatives=54)
    rows = [at_the_limit, one_more_false, margin]
    assert specificity_bound(margin) == pytest.approx(0.904, abs=5e-4)
    assert specificity_bound(one_more_false) == pytest.approx(0.882, abs=5e-4)
    assert specificity_bound(margin, 0) == 51 / 54
    assert choose(rows, max_fp=0.4, min_specificity=0.9) is margin
    assert choose(rows, max_fp=0.4, min_specificity=0.9, specificity_se=0) is at_the_limit
    assert specificity_bound(row(0.7, 15, 0.97, 0.9, 0.1, 0.92)) == pytest.approx(0.911, abs=5e-4)
    few = [row(0.5, 5, 1.0, 0.95, 0.2, 3 / 4, negatives=4), row(0.9, 5, 0.9, 0.9, 0.1, 1.0, 4)]
    assert choose(few) is few[1]        # 4 of 4 cannot show 0.9 (bound 0.8) but is all there is
    all_diseased = row(0.5, 5, 1.0, 0.95, 0.2, float("nan"), negatives=0)
    assert choose([all_diseased, margin]) is all_diseased      # no negatives: nothing to limit


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
    assert calibrated.thresholds.lesion_probability == chosen["pixel_threshold"]
    assert calibrated.thresholds.lesion_score == chosen["lesion_score"]
    assert calibrated.thresholds.companion_probability == chosen["companion_probability"]
    assert calibrated.training_data["calibration"]["series"] == len(pet_cases)
    points = json.loads((tmp_path / "calibrated.pt.calibration.json").read_text())["points"]
    for pixel in PIXEL:
        at = [p for p in points if p["pixel_threshold"] == pixel]
        by_pixels = [d for d in DETECTION if d >= pixel]     # lower ones repeat the same point
        per_score = (len(DETECTION) + len(by_pixels)) * len(VOLUME_MM3)
        assert [sum(p["lesion_score"] == score for p in at) for score in ("peak", "mean")] == \
            [per_score] * 2
        classified = sum(p["lesion_score"] == "classifier" for p in at)
        with_companions = sum(1 + sum(c < d for c in COMPANION) for d in DETECTION)
        assert classified in (0, with_companions * len(VOLUME_MM3))
    assert bool(report["lesion_classifier"]) or chosen["lesion_score"] != "classifier"
    untouched = load_checkpoint(source).spec.thresholds
    assert (untouched.detection_probability, untouched.lesion_probability) == (0.5, 0.5)


def run(i, spheres, bright, lesions):
    """Series i with each (centre, radius, probability) sphere painted into its maps and
    each (centre, radius, value) sphere into its image, and its truth: a lesion 8 mm
    across at each centre in `lesions`."""
    maps = predictions(series((1, 0, 0, 0, 1, 0), (-31.5, -31.5, 0.0)), spheres, bright=bright)
    geometry = SeriesGeometry(tuple(range(len(maps))), tuple(map(float, range(len(maps)))),
                              1.0, ())
    truth = {"series_uid": f"1.2.{i}", "modality": "CT",
             "lesions": [{"center_mm": centre, "diameter_mm": 8.0} for centre in lesions]}
    return SeriesPrediction((), tuple(maps), geometry, {}), truth


def spot_and_lesion_runs():
    """Eight series, each with a saturated false spot; the even ones also have a saturated
    lesion that stands out in the image."""
    lesion, spot = (15.0, 15.0, 20.0), (-15.0, -15.0, 10.0)
    runs = []
    for i in range(8):
        diseased = i % 2 == 0
        runs.append(run(i, [(spot, 4.0, 1.0)] + [(lesion, 4.0, 1.0)] * diseased,
                        [(lesion, 4.0, 120 + 20 * i)] if diseased else [(spot, 1, 50)],
                        [lesion] * diseased))
    return runs


def test_the_lesion_classifier_tells_a_lesion_from_a_saturated_false_spot_by_its_contrast():
    """Peak, mean and slice head cannot tell the lesions from the spots; the classifier
    can, scored out of fold as calibration scores it, and calibration chooses it."""
    runs = spot_and_lesion_runs()
    classifier = fit_classifier(runs, SPEC)
    assert classifier.features == LESION_FEATURES
    rows = sweep(runs, replace(SPEC, lesion_classifier=classifier),
                 classifiers=cross_fitted_classifiers(runs, SPEC))
    assert max(r["series_specificity"] for r in rows if r["lesion_score"] != "classifier"
               and r["lesion_sensitivity"] > 0) == 0.0
    chosen = choose(rows)
    assert chosen["lesion_score"] == "classifier"
    assert (chosen["lesion_sensitivity"], chosen["false_positives_per_scan"],
            chosen["series_specificity"]) == (1.0, 0.0, 1.0)
    healthy = [run for run in runs if not run[1]["lesions"]]
    assert fit_classifier(healthy, SPEC) is None           # nothing true to learn from


def test_a_lesion_marked_only_faintly_is_found_at_a_lower_pixel_threshold():
    """Lesions whose pixels the network puts at 0.3 form no candidate at 0.5 or 0.35;
    at 0.2 they do, and calibration chooses it over 0.1, which finds the same."""
    lesion = (15.0, 15.0, 20.0)
    runs = [run(i, [(lesion, 4.0, 0.3)], [(lesion, 4.0, 150)], [lesion]) for i in range(4)]
    rows, classifiers = sweep_pixels(runs, SPEC)
    found = {pixel: max(r["lesion_sensitivity"] for r in rows if r["pixel_threshold"] == pixel)
             for pixel in PIXEL}
    assert found == {0.5: 0.0, 0.35: 0.0, 0.2: 1.0, 0.1: 1.0}
    assert choose(rows)["pixel_threshold"] == 0.2
    assert set(classifiers) == set(PIXEL)


def test_a_companion_threshold_finds_faint_lesions_beside_sure_ones_without_false_series():
    """Series with a lesion hold a sure one and a faint one; series without hold a spot
    as faint. One threshold finds the faint lesions only by calling every series
    positive; a companion threshold beside the sure lesion finds them all, none false."""
    sure, faint = (15.0, 15.0, 20.0), (-15.0, -15.0, 10.0)
    runs = []
    for i in range(8):
        diseased = i % 2 == 0
        runs.append(run(i, [(faint, 4.0, 1.0)] + [(sure, 4.0, 1.0)] * diseased,
                        [(faint, 4.0, 60)] + [(sure, 4.0, 200)] * diseased,
                        [sure, faint] * diseased))
    spec = replace(SPEC, lesion_classifier=CONTRAST)
    rows = [r for r in sweep(runs, spec) if r["lesion_score"] == "classifier"]
    alone = [r for r in rows if r["companion_probability"] is None]
    assert max(r["lesion_sensitivity"] for r in alone if r["series_specificity"] == 1.0) == 0.5
    assert max(r["series_specificity"] for r in alone if r["lesion_sensitivity"] == 1.0) == 0.0
    chosen = choose(rows)
    assert chosen["companion_probability"] < chosen["detection_probability"]
    assert (chosen["lesion_sensitivity"], chosen["false_positives_per_scan"],
            chosen["series_specificity"]) == (1.0, 0.0, 1.0)
    without = [r for r in sweep(runs, spec, companions=()) if r["lesion_score"] == "classifier"]
    point = itemgetter("detection_probability", "min_volume_mm3", "lesion_sensitivity",
                       "false_positives_per_scan", "series_specificity")
    assert [point(r) for r in without] == [point(r) for r in alone]     # no companion rows
    assert choose(without)["lesion_sensitivity"] == 0.5


def test_each_series_is_scored_by_a_classifier_that_never_saw_it():
    runs = spot_and_lesion_runs()
    crossed = cross_fitted_classifiers(runs, SPEC, folds=3)
    for i, own in enumerate(crossed):
        others = [run for j, run in enumerate(runs) if j % 3 != i % 3]
        assert own == fit_classifier(others, SPEC)
        assert own != fit_classifier(runs, SPEC)
    assert len({id(c) for c in crossed}) == 3


def test_the_command_takes_series_folders_or_folders_of_them_and_names_a_bad_one(
        tiny_zoo, pet_cases, tmp_path):
    source = tiny_zoo / "PT" / "model.pt"
    for n, data in enumerate(([str(pet_cases[0].parent)], [str(f) for f in pet_cases])):
        result = scanside("calibrate", "--data", *data, "--model", str(source),
                          "--out", str(tmp_path / f"{n}.pt"))
        assert result.returncode == 0, result.stderr
        calibration = load_checkpoint(tmp_path / f"{n}.pt").spec.training_data["calibration"]
        assert calibration["series"] == len(pet_cases)
    (tmp_path / "empty").mkdir()
    result = scanside("calibrate", "--data", str(tmp_path / "empty"), "--model", str(source),
                      "--out", str(tmp_path / "2.pt"))
    assert result.returncode != 0 and not (tmp_path / "2.pt").exists()
    assert f"no series with truth.json under {tmp_path / 'empty'}" in result.stderr
    assert "Traceback" not in result.stderr
    result = scanside("calibrate", "--data", str(tmp_path / "nowhere"), "--model", str(source),
                      "--out", str(tmp_path / "2.pt"))
    assert f"{tmp_path / 'nowhere'}: no such folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_companion_leaves_the_companion_threshold_out_of_the_sweep(tiny_zoo, pet_cases,
                                                                     tmp_path):
    source = tiny_zoo / "PT" / "model.pt"
    result = scanside("calibrate", "--no-companion", "--data", *map(str, pet_cases),
                      "--model", str(source), "--out", str(tmp_path / "alone.pt"))
    assert result.returncode == 0, result.stderr
    spec = load_checkpoint(tmp_path / "alone.pt").spec
    assert spec.thresholds.companion_probability is None
    assert spec.training_data["calibration"]["companions"] == []
    points = json.loads((tmp_path / "alone.pt.calibration.json").read_text())["points"]
    assert points and all(p["companion_probability"] is None for p in points)


def test_calibrating_with_the_mirror_writes_it_into_the_model_and_its_onnx_export(
        tiny_zoo, pet_cases, tmp_path):
    source = tiny_zoo / "PT" / "model.pt"
    mirrored = tmp_path / "mirrored.pt"
    scanside("calibrate", "--mirror", "--data", *map(str, pet_cases), "--model", str(source),
             "--out", str(mirrored), "--backend", "torch")
    assert load_checkpoint(mirrored).spec.mirror
    assert not load_checkpoint(source).spec.mirror
    with OnnxRuntimeBackend(export_onnx(mirrored, tmp_path / "mirrored.onnx")) as backend:
        assert backend.spec.mirror
    with TorchBackend(mirrored) as backend:
        plain = calibrate(pet_cases, mirrored, tmp_path / "plain.pt", replace_spec(
            backend, mirror=False))
    assert not load_checkpoint(tmp_path / "plain.pt").spec.mirror
    assert plain["chosen"]


def replace_spec(backend, **changes):
    backend.spec = replace(backend.spec, **changes)
    return backend


def test_the_mirror_averages_each_slice_with_its_mirror_image(tiny_zoo):
    batch = np.random.default_rng(3).random((2, 1, 32, 32), dtype=np.float32) * 2
    with OnnxRuntimeBackend(tiny_zoo / "PT" / "model.onnx") as backend:
        lesion, tumour = backend.infer(batch)
        lesion_of_mirror, _ = backend.infer(batch[..., ::-1])
        assert not np.allclose(lesion_of_mirror, lesion[..., ::-1], atol=1e-4)  # a real test
        replace_spec(backend, mirror=True)
        averaged, averaged_tumour = backend.infer(batch)
        mirror_averaged, mirror_tumour = backend.infer(batch[..., ::-1])
    assert averaged.dtype == np.float32 and averaged.shape == lesion.shape
    np.testing.assert_allclose(averaged, (lesion + lesion_of_mirror[..., ::-1]) / 2, atol=1e-6)
    np.testing.assert_allclose(mirror_averaged, averaged[..., ::-1], atol=1e-6)
    np.testing.assert_allclose(mirror_tumour, averaged_tumour, atol=1e-6)
    assert not np.allclose(averaged_tumour, tumour, atol=1e-6)
