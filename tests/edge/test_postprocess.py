"""Postprocessing: 3D lesions in patient coordinates from per-slice probability maps."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edge.errors import ModelError
from edge.inference.postprocess import candidate_lesions, find_lesions, lesions_on_slice
from edge.inference.preprocess import slice_grid
from edge.inference.spec import (
    LESION_FEATURES,
    Intensity,
    LesionClassifier,
    ModelSpec,
    Thresholds,
)
from edge.values import SlicePrediction
from tests.edge.test_geometry import plane

SPEC = ModelSpec("CT", 64, 1.0, Intensity("ct_windows", ((-100.0, 100.0),)),
                 thresholds=Thresholds(lesion_probability=0.5, min_volume_mm3=20))
ROTATED = (0.8660254, 0.5, 0.0, -0.5, 0.8660254, 0.0)      # axial, turned 30 degrees


def series(orientation, origin, n=30, step=1.0):
    """Headers of an axial stack whose first pixel sits at `origin`."""
    normal = np.cross(orientation[:3], orientation[3:])
    return [replace(plane(0.0, orientation, i), rows=64, columns=64, spacing_mm=(1.0, 1.0),
                    position_mm=tuple(np.add(origin, normal * step * i)))
            for i in range(n)]


def predictions(headers, spheres, bright=()):
    """Probability maps with each (centre, radius, probability) sphere painted in; with
    `bright`, network inputs (grey 50 of 255, noise of 5) with each (centre, radius, value)
    sphere painted in."""
    out = []
    noise = np.random.default_rng(0)
    for h in headers:
        grid = slice_grid(h, SPEC.size, SPEC.spacing_mm)
        uv = np.stack(np.meshgrid(np.arange(64), np.arange(64), indexing="ij"), -1).reshape(-1, 2)
        points = grid.to_patient(uv)
        probability = np.zeros(64 * 64)
        for centre, radius, p in spheres:
            probability[np.linalg.norm(points - centre, axis=1) <= radius] = p
        image = 50 + noise.normal(0, 5, 64 * 64)
        for centre, radius, value in bright:
            image[np.linalg.norm(points - centre, axis=1) <= radius] = value
        out.append(SlicePrediction(h.instance_key, np.rint(probability.reshape(64, 64) * 255)
                                   .astype(np.uint8), float(probability.max()), grid,
                                   np.clip(image, 0, 255).astype(np.uint8).reshape(64, 64)
                                   if bright else None))
    return out


@pytest.mark.parametrize("orientation,origin", [
    ((-1, 0, 0, 0, -1, 0), (140.0, 95.0, -612.5)),       # prone, far from the origin
    (ROTATED, (-20.0, -45.0, 880.0)),                     # rotated in plane
], ids=["prone", "rotated"])
def test_centre_size_and_slices_of_a_sphere_in_patient_coordinates(orientation, origin):
    headers = series(orientation, origin)
    grid = slice_grid(headers[12], 64, 1.0)
    centre = grid.to_patient(np.array([[40.3, 22.7]]))[0]   # a point inside slice 12
    (finding,) = find_lesions(predictions(headers, [(centre, 6.0, 0.9)]), 1.0, SPEC)
    assert finding.center_mm == pytest.approx(centre, abs=0.6)
    assert finding.volume_mm3 == pytest.approx(4 / 3 * np.pi * 6**3, rel=0.1)
    assert finding.diameter_mm == pytest.approx(12.0, rel=0.05)
    assert finding.probability == pytest.approx(0.9, abs=0.01)
    assert finding.slices == (7, 17)
    assert finding.key_slice == 12


def test_the_outline_lies_on_the_original_pixels_of_the_key_slice():
    headers = series((1, 0, 0, 0, 1, 0), (-31.5, -31.5, 0.0))
    centre = np.array([5.0, -8.0, 15.0])
    (finding,) = find_lesions(predictions(headers, [(centre, 5.0, 0.8)]), 1.0, SPEC)
    key = headers[finding.key_slice]
    outline = np.array(finding.outline)
    # pixel (r, c) of this series is at (x, y) = (-31.5 + c, -31.5 + r)
    radii = np.hypot(-31.5 + outline[:, 1] - centre[0], -31.5 + outline[:, 0] - centre[1])
    assert key.position_mm[2] == pytest.approx(15.0)
    assert len(outline) >= 8
    assert radii == pytest.approx(np.full(len(radii), 5.0), abs=1.0)


def test_components_below_the_minimum_volume_are_dropped():
    headers = series((1, 0, 0, 0, 1, 0), (-31.5, -31.5, 0.0))
    found = find_lesions(predictions(headers, [((0, 0, 15.0), 1.2, 0.9),
                                               ((15, 15, 15.0), 5.0, 0.7)]), 1.0, SPEC)
    assert [round(f.probability, 2) for f in found] == [0.7]


def test_separate_lesions_come_out_most_probable_first():
    headers = series((1, 0, 0, 0, 1, 0), (-31.5, -31.5, 0.0))
    found = find_lesions(predictions(headers, [((-15, -15, 10.0), 4.0, 0.6),
                                               ((15, 15, 20.0), 4.0, 0.95)]), 1.0, SPEC)
    assert [round(f.probability, 2) for f in found] == [0.95, 0.6]
    assert found[0].center_mm == pytest.approx((15, 15, 20), abs=0.6)


def test_nothing_above_threshold_means_no_lesion():
    headers = series((1, 0, 0, 0, 1, 0), (-31.5, -31.5, 0.0))
    assert find_lesions(predictions(headers, [((0, 0, 15.0), 6.0, 0.3)]), 1.0, SPEC) == []


def test_a_lesion_on_one_slice_has_the_diameter_of_its_area():
    headers = series((1, 0, 0, 0, 1, 0), (-31.5, -31.5, 0.0), n=1)
    (on_slice,) = lesions_on_slice(predictions(headers, [((4, 4, 0.0), 8.0, 0.85)])[0], SPEC)
    assert on_slice.diameter_mm == pytest.approx(16.0, rel=0.05)
    assert on_slice.center_mm == pytest.approx((4, 4, 0), abs=0.5)


def test_a_lesion_whose_peak_stays_below_the_detection_threshold_is_not_reported():
    headers = series((1, 0, 0, 0, 1, 0), (-31.5, -31.5, 0.0))
    spec = replace(SPEC, thresholds=Thresholds(lesion_probability=0.5,
                                               detection_probability=0.7, min_volume_mm3=20))
    found = find_lesions(predictions(headers, [((-15, -15, 10.0), 4.0, 0.6),
                                               ((15, 15, 20.0), 4.0, 0.8)]), 1.0, spec)
    assert [round(f.probability, 2) for f in found] == [0.8]


def test_beside_a_lesion_at_the_detection_threshold_a_less_certain_one_is_reported_too():
    """Never alone: a series with nothing at the detection threshold stays negative."""
    headers = series((1, 0, 0, 0, 1, 0), (-31.5, -31.5, 0.0))
    spec = replace(SPEC, thresholds=Thresholds(lesion_probability=0.5, min_volume_mm3=20,
                                               detection_probability=0.7,
                                               companion_probability=0.55))
    weak, strong = ((-15, -15, 10.0), 4.0, 0.6), ((15, 15, 20.0), 4.0, 0.8)
    found = find_lesions(predictions(headers, [weak, strong]), 1.0, spec)
    assert [round(f.probability, 2) for f in found] == [0.8, 0.6]
    assert find_lesions(predictions(headers, [weak]), 1.0, spec) == []
    fainter = ((-15, -15, 10.0), 4.0, 0.52)
    found = find_lesions(predictions(headers, [fainter, strong]), 1.0, spec)
    assert [round(f.probability, 2) for f in found] == [0.8]


def test_a_companion_threshold_above_the_detection_threshold_is_refused_naming_both():
    text = replace(SPEC, thresholds=replace(SPEC.thresholds, companion_probability=0.8)).to_json()
    with pytest.raises(ModelError, match=r"companion_probability 0.8: expected from 0 to the "
                                         r"detection probability \(0.5\)"):
        ModelSpec.from_json(text, "model.onnx")


def test_under_slice_head_a_saturated_spot_the_tumour_head_doubts_takes_its_probability():
    headers = series((1, 0, 0, 0, 1, 0), (-31.5, -31.5, 0.0))
    spec = replace(SPEC, thresholds=Thresholds(lesion_probability=0.5, slice_head=True,
                                               detection_probability=0.7, min_volume_mm3=20))
    maps = predictions(headers, [((-15, -15, 10.0), 4.0, 1.0), ((15, 15, 20.0), 4.0, 1.0)])
    doubted = [replace(p, tumour_probability=0.3) if i < 15 else p
               for i, p in enumerate(maps)]
    (finding,) = find_lesions(doubted, 1.0, spec)
    assert finding.center_mm == pytest.approx((15, 15, 20), abs=0.6)
    lenient = replace(spec, thresholds=replace(spec.thresholds, detection_probability=0.2))
    assert [round(f.probability, 2) for f in find_lesions(doubted, 1.0, lenient)] == [1.0, 0.3]
    (on_slice,) = lesions_on_slice(doubted[10], spec)
    assert on_slice.probability == pytest.approx(0.3)
    pixels_only = replace(spec, thresholds=replace(spec.thresholds, slice_head=False))
    assert [f.probability for f in find_lesions(doubted, 1.0, pixels_only)] == [1.0, 1.0]
    assert lesions_on_slice(doubted[10], pixels_only)[0].probability == 1.0
    assert SPEC.thresholds.slice_head is False       # models calibrated before it: unchanged


def test_scored_by_the_mean_a_confident_lesion_outranks_a_saturated_core_in_a_doubtful_rim():
    headers = series((1, 0, 0, 0, 1, 0), (-31.5, -31.5, 0.0))
    maps = predictions(headers, [((-15, -15, 10.0), 5.0, 0.6), ((-15, -15, 10.0), 2.0, 1.0),
                                 ((15, 15, 20.0), 5.0, 0.95)])
    by_peak = find_lesions(maps, 1.0, SPEC)
    assert [round(f.probability, 2) for f in by_peak] == [1.0, 0.95]
    mean = replace(SPEC, thresholds=replace(SPEC.thresholds, lesion_score="mean"))
    by_mean = find_lesions(maps, 1.0, mean)
    assert [round(f.probability, 2) for f in by_mean] == [0.95, pytest.approx(0.64, abs=0.03)]
    assert by_mean[0].center_mm == pytest.approx((15, 15, 20), abs=0.6)
    (on_slice,) = lesions_on_slice(maps[10], mean)
    assert on_slice.probability == pytest.approx(0.6 + 0.4 * 13 / 81, abs=0.02)


def test_a_spec_with_an_unknown_lesion_score_is_refused_naming_the_value():
    text = replace(SPEC, thresholds=replace(SPEC.thresholds, lesion_score="median")).to_json()
    with pytest.raises(ModelError, match="lesion_score 'median': expected one of"):
        ModelSpec.from_json(text, "model.onnx")


CONTRAST = LesionClassifier(features=("contrast_sd",), mean=(0.0,), scale=(2.0,),
                            weights=(1.0,), bias=0.0)
BY_CLASSIFIER = replace(SPEC, lesion_classifier=CONTRAST, thresholds=replace(
    SPEC.thresholds, lesion_score="classifier", detection_probability=0.6))


def test_the_classifier_reports_the_saturated_spot_that_stands_out_in_the_image_only():
    headers = series((1, 0, 0, 0, 1, 0), (-31.5, -31.5, 0.0))
    maps = predictions(headers, [((-15, -15, 10.0), 4.0, 1.0), ((15, 15, 20.0), 4.0, 1.0)],
                       bright=[((15, 15, 20.0), 4.0, 200)])
    assert [f.probability for f in find_lesions(maps, 1.0, SPEC)] == [1.0, 1.0]
    (finding,) = find_lesions(maps, 1.0, BY_CLASSIFIER)
    assert finding.center_mm == pytest.approx((15, 15, 20), abs=0.6)
    assert finding.probability > 0.99
    lenient = replace(BY_CLASSIFIER, thresholds=replace(BY_CLASSIFIER.thresholds,
                                                        detection_probability=0.0))
    assert [round(f.probability, 1) for f in find_lesions(maps, 1.0, lenient)] == [1.0, 0.5]
    doubted = replace(maps[20], tumour_probability=0.3)
    assert [s.probability for s in lesions_on_slice(doubted, BY_CLASSIFIER)] == [0.3]


def test_a_candidates_measures_say_its_size_slices_probabilities_and_contrast():
    headers = series((1, 0, 0, 0, 1, 0), (-31.5, -31.5, 0.0))
    maps = predictions(headers, [((15, 15, 20.0), 6.0, 0.9)],
                       bright=[((15, 15, 20.0), 6.0, 200)])
    ((finding, measures),) = candidate_lesions(maps, 1.0, SPEC)
    assert measures["slices"] == finding.slices[1] - finding.slices[0] + 1 == 11
    assert np.exp(measures["log_volume"]) == pytest.approx(finding.volume_mm3)
    assert measures["peak_logit"] == pytest.approx(np.log(0.9 / 0.1), abs=0.05)
    assert measures["mean_logit"] == pytest.approx(measures["peak_logit"])
    assert measures["head_max_logit"] == pytest.approx(measures["peak_logit"], abs=0.05)
    assert measures["saturated"] == 0.0
    assert measures["image_mean"] == pytest.approx(200 / 255)
    assert measures["image_max"] == pytest.approx(200 / 255)
    assert measures["contrast"] == pytest.approx(150 / 255, abs=0.01)
    assert measures["contrast_sd"] == pytest.approx(150 / 5, rel=0.15)
    assert (measures["abs_contrast"], measures["abs_contrast_sd"]) == (measures["contrast"],
                                                                       measures["contrast_sd"])
    assert set(measures) == set(LESION_FEATURES)


def test_a_round_candidate_is_as_deep_as_wide_and_the_same_voxels_in_thinner_slices_flatter():
    headers = series((1, 0, 0, 0, 1, 0), (-31.5, -31.5, 0.0))
    maps = predictions(headers, [((15, 15, 20.0), 6.0, 0.9)])
    ((_, round_one),) = candidate_lesions(maps, 1.0, SPEC)
    ((_, flat_one),) = candidate_lesions(maps, 0.25, SPEC)
    assert round_one["log_depth_ratio"] == pytest.approx(0.0, abs=0.15)
    assert round_one["log_depth_ratio"] - flat_one["log_depth_ratio"] == pytest.approx(np.log(4))


def test_a_lesion_ends_where_its_candidate_does_and_a_vessel_goes_on_past_it():
    headers = series((1, 0, 0, 0, 1, 0), (-31.5, -31.5, 0.0))
    lesion = predictions(headers, [((15, 15, 20.0), 6.0, 0.9)],
                         bright=[((15, 15, 20.0), 6.0, 200)])
    # a bright tube along the slices, marked by the network over slices 7-23 only
    segment = [((-10, 5, z), 4.0, 0.9) for z in range(10, 21)]
    vessel = predictions(headers, segment, bright=[((-10, 5, z), 4.0, 200) for z in range(30)])
    ((_, ends),) = candidate_lesions(lesion, 1.0, SPEC)
    ((finding, goes_on),) = candidate_lesions(vessel, 1.0, SPEC)
    assert finding.slices == (7, 23)
    assert ends["persistence"] == pytest.approx(0.0, abs=0.1)
    assert goes_on["persistence"] == pytest.approx(1.0, abs=0.1)
    ((_, thin),) = candidate_lesions(lesion, 0.5, SPEC)       # 5 mm is 10 slices of 0.5
    assert thin["persistence"] == pytest.approx(0.0, abs=0.1)


def test_the_classifier_without_the_network_input_is_an_error_not_a_silent_score():
    headers = series((1, 0, 0, 0, 1, 0), (-31.5, -31.5, 0.0))
    with pytest.raises(ValueError, match="network input"):
        find_lesions(predictions(headers, [((15, 15, 20.0), 4.0, 1.0)]), 1.0, BY_CLASSIFIER)


def test_the_lesion_classifier_travels_in_the_spec_and_a_broken_one_is_refused():
    assert ModelSpec.from_json(BY_CLASSIFIER.to_json()) == BY_CLASSIFIER
    without = replace(BY_CLASSIFIER, lesion_classifier=None).to_json()
    with pytest.raises(ModelError, match='lesion_score "classifier" without a lesion_classifier'):
        ModelSpec.from_json(without, "model.onnx")
    unknown = replace(BY_CLASSIFIER, lesion_classifier=replace(CONTRAST, features=("age",)))
    with pytest.raises(ModelError, match=r"features \['age'\]: expected among"):
        ModelSpec.from_json(unknown.to_json(), "model.onnx")
    flat = replace(BY_CLASSIFIER, lesion_classifier=replace(CONTRAST, scale=(0.0,)))
    with pytest.raises(ModelError, match=r"scale \[0.0\]: expected every scale above 0"):
        ModelSpec.from_json(flat.to_json(), "model.onnx")
