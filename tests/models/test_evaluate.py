"""Evaluation metrics on hand-made cases."""

from __future__ import annotations

import io
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge.inference.postprocess import find_lesions
from edge.inference.preprocess import SliceGrid
from edge.inference.series import SeriesPrediction
from edge.series.geometry import SeriesGeometry
from edge.values import Finding, Slice, SlicePrediction
from models.checkpoint import load_checkpoint, save_checkpoint
from models.evaluate import (
    CaseResult,
    Report,
    conspicuity,
    evaluate,
    froc,
    match,
    metrics,
    review_overlays,
    sensitivity_at,
    write_report,
)
from models.torch_backend import TorchBackend
from tests.edge.test_postprocess import SPEC, predictions, series


def lesion(x, diameter=20.0):
    return {"center_mm": [x, 0.0, 0.0], "diameter_mm": diameter, "volume_mm3": 1.0}


def finding(x, probability=0.9):
    return Finding((x, 0.0, 0.0), 10.0, 500.0, probability, (0, 1), 0)


def case(name, truth, findings, dice=(0.0, 0.0, 0.0)):
    findings = sorted(findings, key=lambda f: -f.probability)
    return CaseResult(name, "CT", truth, findings, match(truth, findings),
                      "positive" if findings else "negative", dice)


def test_a_hit_is_within_three_quarters_of_the_diameter_with_a_5_mm_floor():
    assert match([lesion(0, 20)], [finding(14.9)]) == [0]       # 0.75 x 20 = 15 mm
    assert match([lesion(0, 20)], [finding(15.1)]) == [None]
    assert match([lesion(0, 4)], [finding(4.9)]) == [0]         # floor: 5 mm
    assert match([lesion(0, 4)], [finding(5.1)]) == [None]


def test_each_lesion_is_hit_once_and_the_most_probable_finding_takes_it():
    assert match([lesion(0)], [finding(1, 0.9), finding(2, 0.6)]) == [0, None]


def test_perfect_detection():
    m = metrics([case("a", [lesion(0), lesion(100, 8)], [finding(0), finding(100)], (50, 50, 50)),
                 case("b", [], [])])
    assert m["lesion_sensitivity"] == 1.0 and m["lesion_sensitivity_10mm_or_more"] == 1.0
    assert m["false_positives_per_scan"] == 0.0
    assert m["series_sensitivity"] == 1.0 and m["series_specificity"] == 1.0
    assert m["series_auc"] == 1.0 and m["dice"] == 1.0
    assert m["froc"]["0.5"] == 1.0 and m["missed"] == [] and m["false_positives"] == []


def test_nothing_found():
    m = metrics([case("a", [lesion(0)], [], (0, 0, 30)), case("b", [], [])])
    assert m["lesion_sensitivity"] == 0.0 and m["series_sensitivity"] == 0.0
    assert m["series_specificity"] == 1.0 and m["dice"] == 0.0
    assert m["series_auc"] == 0.5           # every score is 0: a coin toss
    assert m["missed"] == [{"case": "a", **lesion(0), "conspicuity_sd": None,   # not measured
                            "candidate": None}]


def test_one_false_positive_in_two_scans():
    m = metrics([case("a", [lesion(0)], [finding(0, 0.9)]),
                 case("b", [], [finding(50, 0.7)])])
    assert m["lesion_sensitivity"] == 1.0
    assert m["false_positives_per_scan"] == 0.5
    assert m["series_specificity"] == 0.0
    assert m["series_auc"] == 1.0           # the true positive still scores higher
    assert m["false_positives"] == [{"case": "b", **finding(50, 0.7).to_json(),
                                     "series_has_lesions": False}]


def test_froc_walks_down_the_probabilities():
    cases = [case("a", [lesion(0), lesion(100)], [finding(0, 0.9), finding(50, 0.8),
                                                  finding(100, 0.4)]),
             case("b", [], [finding(10, 0.6)])]
    points = froc(cases)
    assert [(p["sensitivity"], p["fp_per_scan"]) for p in points] == [
        (0.5, 0.0), (0.5, 0.5), (0.5, 1.0), (1.0, 1.0)]
    assert sensitivity_at(points, 0.5) == 0.5
    assert sensitivity_at(points, 1.0) == 1.0


def test_findings_of_equal_probability_count_together_on_the_froc():
    cases = [case("a", [lesion(0)], [finding(0, 1.0), finding(50, 1.0)]),
             case("b", [], [finding(10, 1.0)])]
    points = froc(cases)
    assert [(p["sensitivity"], p["fp_per_scan"]) for p in points] == [(1.0, 1.0)]
    assert sensitivity_at(points, 0.5) == 0.0   # no threshold keeps the hit alone


def test_the_froc_goes_on_below_the_operating_point_through_the_candidates():
    reported = [finding(0, 0.97)]
    below = [finding(100, 0.6), finding(50, 0.7)]
    cases = [replace(case("a", [lesion(0), lesion(100)], reported),
                     candidates=reported + below),
             replace(case("b", [], []), candidates=[finding(10, 0.8)])]
    points = froc(cases)
    assert [(p["threshold"], p["sensitivity"], p["fp_per_scan"]) for p in points] == [
        (0.97, 0.5, 0.0), (0.8, 0.5, 0.5), (0.7, 0.5, 1.0), (0.6, 1.0, 1.0)]
    m = metrics(cases)
    assert (m["lesion_sensitivity"], m["false_positives_per_scan"]) == (0.5, 0.0)
    assert m["froc"]["1"] == 1.0            # the curve, not the operating point


def test_a_set_without_negatives_has_no_specificity():
    assert math.isnan(metrics([case("a", [lesion(0)], [finding(0)])])["series_specificity"])
    assert metrics([case("a", [lesion(0)], [finding(0)])])["series_auc"] != pytest.approx(0)


def test_mr_lesion_figures_are_also_given_per_weighting():
    def mr(name, truth, findings, weighting):
        return replace(case(name, truth, findings), modality="MR", mr_weighting=weighting)

    cases = [mr("t1", [lesion(0), lesion(100)], [finding(0)], "T1"),
             mr("t2", [lesion(0)], [finding(0), finding(60)], "T2"),
             mr("pd", [lesion(0)], [], "")]
    m = metrics(cases)
    groups = m["by_mr_weighting"]
    assert sorted(groups) == ["T1", "T2", "unknown"]
    assert (groups["T1"]["lesions"], groups["T1"]["lesion_sensitivity"]) == (2, 0.5)
    assert groups["T2"]["false_positives_per_scan"] == 1.0
    assert groups["unknown"]["lesion_sensitivity"] == 0.0
    assert m["lesion_sensitivity"] == 0.5 and m["lesions"] == 4      # the whole set
    table = Report({"MR": m}).table()
    assert "| MR | T1 | 1 | 2 | 0.500 |" in table and "| MR | unknown |" in table
    assert "by_mr_weighting" not in metrics([case("a", [lesion(0)], [finding(0)])])


def test_lesion_figures_are_also_given_with_and_without_a_recorded_contrast_agent():
    cases = [replace(case("a", [lesion(0), lesion(100)], [finding(0)]), contrast_agent="Iohexol"),
             case("b", [lesion(0)], [finding(0), finding(60)])]
    m = metrics(cases)
    groups = m["by_contrast"]
    assert sorted(groups) == ["contrast agent", "none recorded"]
    assert (groups["contrast agent"]["lesions"], groups["contrast agent"]["lesion_sensitivity"],
            groups["none recorded"]["false_positives_per_scan"]) == (2, 0.5, 1.0)
    assert "| CT | contrast agent | 1 | 2 | 0.500 |" in Report({"CT": m}).table()
    assert "by_contrast" not in metrics(cases[1:])     # no series records one: no split


def test_sets_pooled_in_one_evaluation_are_also_scored_each_on_its_own():
    cases = [replace(case("a", [lesion(0)], [finding(0)]), source="heldout-1"),
             replace(case("b", [], [finding(50)]), source="heldout-1"),
             replace(case("c", [lesion(0)], []), source="heldout-2"),
             replace(case("d", [], []), source="heldout-2")]
    m = metrics(cases)
    one, two = m["by_source"]["heldout-1"], m["by_source"]["heldout-2"]
    assert (one["series"], one["lesion_sensitivity"], one["false_positives_per_scan"],
            one["series_specificity"]) == (2, 1.0, 0.5, 0.0)
    assert (two["lesion_sensitivity"], two["series_specificity"]) == (0.0, 1.0)
    assert (m["lesion_sensitivity"], m["series_specificity"]) == (0.5, 0.5)     # pooled
    assert "| CT | heldout-2 | 2 | 1 | 0.000 |" in Report({"CT": m}).table()
    assert "by_source" not in metrics(cases[:2])


def painted_series(centre, radius_mm, step, noise=5.0, slices=11, size=64, seed=0):
    """Axial slices 2 mm apart on a 2 mm grid: noise around 100, a sphere `step` above it."""
    rng = np.random.default_rng(seed)
    predictions, masks = [], []
    u, v = np.mgrid[:size, :size]
    for k in range(slices):
        z = 2.0 * k
        grid = SliceGrid(size, 2.0, (-63.0, -63.0, z), (0.0, 2.0, 0.0), (2.0, 0.0, 0.0),
                         (0.0, 0.0), (1.0, 0.0), (0.0, 1.0))
        x, y = -63.0 + 2 * v, -63.0 + 2 * u
        distance = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
        inside = distance <= radius_mm
        image = rng.normal(100, noise, (size, size)) + step * inside
        predictions.append(SlicePrediction(f"{k}", np.zeros((size, size), np.uint8), 0.0, grid,
                                           np.clip(image, 0, 255).astype(np.uint8)))
        masks.append(inside)
    return predictions, masks


def test_conspicuity_is_a_lesion_s_contrast_in_standard_deviations_of_its_surroundings():
    centre = (6.0, -4.0, 10.0)
    truth = {"center_mm": list(centre), "diameter_mm": 12.0}
    bright = conspicuity(truth, *painted_series(centre, 6.0, 15.0))     # 3 SD above
    dark = conspicuity(truth, *painted_series(centre, 6.0, -10.0))      # 2 SD below
    unseen = conspicuity(truth, *painted_series(centre, 6.0, 0.0))
    assert bright == pytest.approx(3.0, abs=0.3)
    assert dark == pytest.approx(-2.0, abs=0.3)                         # the sign says darker
    assert abs(unseen) < 0.3


def test_conspicuity_of_a_lesion_smaller_than_a_voxel_uses_the_voxel_nearest_its_centre():
    predictions, masks = painted_series((0.0, 0.0, 10.0), 0.5, 0.0, noise=2.0)
    predictions[5].image_u8[31, 31] += 40               # the voxel at (-1, -1, 10) mm
    truth = {"center_mm": [-0.5, -0.5, 10.0], "diameter_mm": 1.0}
    assert conspicuity(truth, predictions, [np.zeros_like(m) for m in masks]) > 10


def test_conspicuity_is_not_measured_without_the_network_input():
    predictions, masks = painted_series((0.0, 0.0, 10.0), 6.0, 15.0)
    predictions = [replace(p, image_u8=None) for p in predictions]
    assert math.isnan(conspicuity({"center_mm": [0, 0, 10], "diameter_mm": 12}, predictions,
                                  masks))


def test_sensitivity_is_reported_per_band_of_conspicuity_and_per_polarity():
    faint, clear, dark = lesion(0), lesion(100), lesion(200, 12.0)
    found = replace(case("a", [faint, clear, dark], [finding(100)]),
                    conspicuity=[1.2, 4.0, -2.5])
    unmeasured = replace(case("b", [lesion(0)], []), conspicuity=[float("nan")])
    m = metrics([found, unmeasured])
    assert m["by_conspicuity"] == {
        "below 2 SD": {"lesions": 1, "sensitivity": 0.0},
        "2-3 SD": {"lesions": 1, "sensitivity": 0.0},               # by size, whatever the sign
        "3 SD or more": {"lesions": 1, "sensitivity": 1.0}}
    assert m["by_polarity"] == {
        "brighter": {"lesions": 2, "found": 1, "lesions_10mm_or_more": 2,
                     "found_10mm_or_more": 1},
        "darker": {"lesions": 1, "found": 0, "lesions_10mm_or_more": 1,
                   "found_10mm_or_more": 0}}
    assert [x["conspicuity_sd"] for x in m["missed"]] == [1.2, -2.5, None]
    table = Report({"CT": m}).table()
    assert "below 2 SD" in table and "| CT | darker | 0 of 1 | 0 of 1 |" in table


def test_missed_lesions_are_told_apart_by_whether_the_network_made_a_candidate_of_them():
    found, scored_low, unmarked = lesion(0), lesion(100, 8.0), lesion(200, 12.0)
    candidates = [finding(0), finding(100, probability=0.1), finding(400, probability=0.2)]
    scored = replace(case("a", [found, scored_low, unmarked], [finding(0)]),
                     candidates=candidates)
    m = metrics([scored, case("b", [lesion(0)], [])])     # b kept no candidates: left out
    assert m["by_candidate"] == {
        "a candidate": {"lesions": 2, "found": 1, "lesions_10mm_or_more": 1,
                        "found_10mm_or_more": 1},
        "no candidate": {"lesions": 1, "found": 0, "lesions_10mm_or_more": 1,
                         "found_10mm_or_more": 0}}
    assert [x["candidate"] for x in m["missed"]] == ["a candidate", "no candidate", None]
    table = Report({"CT": m}).table()
    assert "Lesions found by whether the network made a candidate of them:" in table
    assert "| CT | no candidate | 0 of 1 | 0 of 1 |" in table


def test_lesions_found_are_counted_per_kind_and_organ_where_the_truth_names_them():
    cyst = {**lesion(0, 25.0), "kind": "cyst", "organ": "liver"}
    round_ = {**lesion(100, 8.0), "kind": "round", "organ": "kidney"}
    cases = [case("a", [cyst, round_], [finding(100)]),
             case("b", [{**lesion(0, 12.0), "kind": "cyst", "organ": "liver"}], [finding(0)])]
    m = metrics(cases)
    assert m["by_kind"] == {
        "cyst": {"lesions": 2, "found": 1, "lesions_10mm_or_more": 2, "found_10mm_or_more": 1},
        "round": {"lesions": 1, "found": 1, "lesions_10mm_or_more": 0, "found_10mm_or_more": 0}}
    assert m["by_organ"] == {
        "kidney": {"lesions": 1, "found": 1, "lesions_10mm_or_more": 0, "found_10mm_or_more": 0},
        "liver": {"lesions": 2, "found": 1, "lesions_10mm_or_more": 2, "found_10mm_or_more": 1}}
    table = Report({"CT": m}).table()
    assert "| CT | cyst | 1 of 2 | 1 of 2 |" in table
    assert "| CT | kidney | 1 of 1 | 0 of 0 |" in table
    assert metrics([case("c", [lesion(0)], [])])["by_kind"] == {}
    assert metrics([case("c", [lesion(0)], [])])["by_organ"] == {}


def test_each_missed_lesion_and_false_positive_gets_a_review_overlay(tiny_zoo, pet_cases,
                                                                     tmp_path):
    with TorchBackend(tiny_zoo / "PT" / "model.pt") as backend:
        cases = evaluate(pet_cases, backend, overlays=True)
    write_report({"PT": cases}, tmp_path)
    missed = {f"{c.name}-missed-{i}.png" for c in cases for i in range(len(c.truth))
              if i not in c.matches}
    false = {f"{c.name}-false-{rank}.png" for c in cases
             for rank in range(len(c.false_positives))}
    assert missed or false
    overlays = {p.name: p for p in (tmp_path / "overlays").iterdir()}
    assert set(overlays) == missed | false
    for name in missed:               # the true lesion outlined in cyan on its centre slice
        pixels = np.asarray(Image.open(overlays[name]).convert("RGB"))
        assert pixels.shape[:2] == (256, 256)
        assert (np.abs(pixels.astype(int) - (0, 220, 255)).sum(axis=2) < 60).any(), name


def colour_pixels(png: bytes, rgb) -> int:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return int((np.abs(pixels - rgb).sum(axis=2) < 60).sum())


def test_a_false_positive_is_drawn_on_its_largest_slice_and_a_missed_lesion_on_its_centre():
    headers = series((1, 0, 0, 0, 1, 0), (-31.5, -31.5, 0.0))       # slice i at z = i mm
    spot, lesion_centre = (-15.0, -15.0, 10.0), (15.0, 15.0, 20.0)
    maps = predictions(headers, [(spot, 4.0, 1.0)], bright=[(lesion_centre, 4.0, 120)])
    true_masks = [m.lesion_u8 > 0 for m in predictions(headers, [(lesion_centre, 4.0, 1.0)])]
    findings = find_lesions(maps, 1.0, SPEC)
    truth = [{"center_mm": list(lesion_centre), "diameter_mm": 8.0, "kind": "round"}]
    prediction = SeriesPrediction(tuple(Slice(h, np.zeros((64, 64), np.int16)) for h in headers),
                                  tuple(maps), SeriesGeometry(tuple(range(30)),
                                                              tuple(map(float, range(30))),
                                                              1.0, ()), {})
    assert len(findings) == 1 and abs(findings[0].key_slice - 10) <= 1   # ties on a 1 mm grid
    images = review_overlays(case("s", truth, findings), prediction, true_masks, 0.5)
    assert set(images) == {"false-0", "missed-0"}
    green, cyan = (40, 255, 90), (0, 220, 255)
    assert colour_pixels(images["false-0"], green) and not colour_pixels(images["false-0"], cyan)
    assert colour_pixels(images["missed-0"], cyan) and not colour_pixels(images["missed-0"], green)


def test_overlays_of_pooled_sets_go_in_a_folder_per_set(tmp_path):
    cases = [replace(case("a", [lesion(0)], []), source=f"data/{source}",
                     overlays={"missed-0": source.encode()}) for source in ("one", "two")]
    write_report({"CT": cases}, tmp_path)
    for source in ("one", "two"):
        assert (tmp_path / "overlays" / source / "a-missed-0.png").read_bytes() == source.encode()


def test_eval_runs_the_checkpoint_in_onnx_runtime_by_default_with_torch_s_figures(
        tiny_zoo, pet_cases, tmp_path):
    """`scanside eval` exports a checkpoint with no export beside it to a temporary ONNX
    file and runs it in ONNX Runtime (several times faster on a CPU); `--backend torch`
    runs the reference, and every figure agrees."""
    from edge.cli import main
    from models.backend import open_checkpoint

    checkpoint = Path(shutil.copy(tiny_zoo / "PT" / "model.pt", tmp_path / "alone.pt"))
    with open_checkpoint(checkpoint) as onnx, TorchBackend(checkpoint) as reference:
        assert onnx.name == "onnxruntime" and onnx.spec == reference.spec
        assert onnx.path.parent.name.startswith("scanside-eval-")    # a temporary export
        batch = np.random.default_rng(0).normal(
            size=(2, onnx.spec.channels, onnx.spec.size, onnx.spec.size)).astype(np.float32)
        for ours, theirs in zip(onnx.run(batch), reference.run(batch), strict=True):
            np.testing.assert_allclose(ours, theirs, atol=1e-4)
    figures = {}
    for backend in ("onnxruntime", "torch"):
        out = tmp_path / backend
        assert main(["eval", "--data", str(pet_cases[0].parent), "--model", str(checkpoint),
                     "--out", str(out), "--backend", backend]) == 0
        figures[backend] = json.loads((out / "eval.json").read_text())["PT"]
    ours, theirs = figures["onnxruntime"], figures["torch"]
    assert ours["lesions"] == theirs["lesions"] > 0
    assert abs(ours.pop("dice") - theirs.pop("dice")) < 1e-4
    assert json.dumps(ours, sort_keys=True) == json.dumps(theirs, sort_keys=True)


def test_a_checkpoint_runs_in_the_export_beside_it_only_when_made_from_its_bytes(tiny_zoo,
                                                                               tmp_path):
    """A zoo model.pt runs in its model.onnx, whose metadata names the checkpoint's SHA-256.
    Once the checkpoint is changed in place (recalibrated), or where the file beside it is
    the FP16 copy or cut short, a fresh FP32 export is run instead."""
    from models.backend import open_checkpoint, own_export

    entry = Path(shutil.copytree(tiny_zoo / "PT", tmp_path / "PT"))
    with open_checkpoint(entry / "model.pt") as backend:
        assert backend.path == entry / "model.onnx"
    shutil.copy(entry / "model.fp16.onnx", entry / "model.onnx")
    assert own_export(entry / "model.pt") is None
    (entry / "model.onnx").write_bytes((tiny_zoo / "PT" / "model.onnx").read_bytes()[:100])
    assert own_export(entry / "model.pt") is None
    with open_checkpoint(entry / "model.pt") as backend:
        assert backend.path != entry / "model.onnx"
    shutil.copy(tiny_zoo / "PT" / "model.onnx", entry / "model.onnx")
    checkpoint = load_checkpoint(entry / "model.pt")
    recalibrated = replace(checkpoint.spec.thresholds, detection_probability=0.123)
    save_checkpoint(entry / "model.pt",
                    replace(checkpoint, spec=replace(checkpoint.spec, thresholds=recalibrated)),
                    slim=True)
    with open_checkpoint(entry / "model.pt") as backend:
        assert backend.path != entry / "model.onnx"
        assert backend.spec.thresholds.detection_probability == 0.123
