"""Preprocessing: the network grid, resampling, intensity, SUVbw."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta

import numpy as np
import pytest

from edge.errors import DicomError, ModelError
from edge.inference.preprocess import (
    neighbours,
    normalise,
    preprocess,
    resample,
    slice_grid,
    suv_factor,
    with_neighbours,
)
from edge.inference.spec import Intensity, ModelSpec
from edge.values import PetTags, Slice
from tests.edge.test_geometry import plane

HFS, FFS, HFP = (1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, -1, 0)
CT_SPEC = ModelSpec("CT", 32, 2.0, Intensity("ct_windows", ((-100.0, 100.0), (-1000.0, 1000.0))))


def header(orientation=HFS, position=(-50.0, -40.0, 12.0), rows=64, columns=80,
           spacing=(1.0, 1.25)):
    return replace(plane(0.0, orientation), position_mm=position, rows=rows, columns=columns,
                   spacing_mm=spacing)


@pytest.mark.parametrize("orientation", [HFS, FFS, HFP], ids=["HFS", "FFS", "HFP"])
def test_axial_slices_get_the_canonical_orientation_whatever_the_patient_position(orientation):
    grid = slice_grid(header(orientation), 32, 2.0)
    assert grid.v_step_mm == pytest.approx((2.0, 0.0, 0.0))    # image right = patient left
    assert grid.u_step_mm == pytest.approx((0.0, 2.0, 0.0))    # image down = posterior


def test_the_grid_is_centred_and_maps_to_pixels_and_patient_space_consistently():
    h = header(FFS)
    grid = slice_grid(h, 32, 2.0)
    centre = grid.to_patient(np.array([[15.5, 15.5]]))[0]
    expected = np.add(h.position_mm, [-(h.columns - 1) / 2 * 1.25, (h.rows - 1) / 2 * 1.0, 0])
    assert centre == pytest.approx(expected)
    uv = np.array([[3.0, 7.0], [20.0, 11.0]])
    rows_cols = grid.to_pixel(uv)
    # pixel (r, c) is at IPP + c * dc * row_dir + r * dr * col_dir
    back = (np.asarray(h.position_mm) + rows_cols[:, 1:] * 1.25 * np.array(FFS[:3])
            + rows_cols[:, :1] * 1.0 * np.array(FFS[3:]))
    assert back == pytest.approx(grid.to_patient(uv))


def test_a_bright_point_lands_on_the_network_pixel_of_its_patient_position():
    h = header(HFP, spacing=(1.0, 1.0), rows=64, columns=64)
    image = np.full((64, 64), -1000.0)
    image[20:24, 40:44] = 1000.0                                  # around pixel (21.5, 41.5)
    grid = slice_grid(h, 32, 2.0)
    target = (np.asarray(h.position_mm) + 41.5 * np.array(HFP[:3]) + 21.5 * np.array(HFP[3:]))
    network = resample(image, grid, fill=-1000)
    u, v = np.unravel_index(np.argmax(network), network.shape)
    assert np.linalg.norm(grid.to_patient(np.array([[u, v]]))[0] - target) <= 2.0 * 0.75


def test_ct_windows_clip_and_scale_each_channel():
    values = np.array([[-2000.0, -100.0, 0.0, 100.0, 3000.0]])
    out = normalise(values, header(), CT_SPEC)
    assert out.shape == (2, 1, 5)
    assert out[0, 0] == pytest.approx([0, 0, 0.5, 1, 1])
    assert out[1, 0] == pytest.approx([0, 0.45, 0.5, 0.55, 1])


def test_mr_is_z_scored_inside_the_body_mask():
    values = np.zeros((40, 40))
    values[10:30, 10:30] = np.random.default_rng(0).normal(500, 50, (20, 20))
    out = normalise(values, replace(header(), modality="MR"),
                    ModelSpec("MR", 40, 1.0, Intensity("mr_zscore", clip=100)))
    inside = out[0, 10:30, 10:30]
    assert inside.mean() == pytest.approx(0, abs=1e-4)
    assert inside.std() == pytest.approx(1, abs=1e-3)


def test_mr_weighting_channel_says_t1_or_t2_over_the_whole_slice_and_0_when_unknown():
    values = np.zeros((40, 40))
    values[10:30, 10:30] = np.random.default_rng(0).normal(500, 50, (20, 20))
    plain = ModelSpec("MR", 40, 1.0, Intensity("mr_zscore"))
    weighted = replace(plain, intensity=Intensity("mr_zscore", weighting=True))
    assert (plain.channels, weighted.channels) == (1, 2)
    for weighting, code in (("T1", -1.0), ("T2", 1.0), ("", 0.0)):
        mr = replace(header(), modality="MR", mr_weighting=weighting)
        out = normalise(values, mr, weighted)
        assert out.shape == (2, 40, 40) and out.dtype == np.float32
        np.testing.assert_array_equal(out[0], normalise(values, mr, plain)[0])
        assert np.all(out[1] == code)


def test_a_weighting_channel_is_only_for_mr_and_survives_the_spec_json():
    weighted = ModelSpec("MR", 40, 1.0, Intensity("mr_zscore", weighting=True))
    assert ModelSpec.from_json(weighted.to_json()) == weighted
    old = json.loads(weighted.to_json())
    del old["intensity"]["weighting"]                     # a model from before the channel
    assert not ModelSpec.from_json(json.dumps(old)).intensity.weighting
    ct = replace(CT_SPEC, intensity=replace(CT_SPEC.intensity, weighting=True))
    with pytest.raises(ModelError, match="intensity.weighting with 'ct_windows'"):
        ModelSpec.from_json(ct.to_json(), "ct.onnx")


def test_a_2_5d_input_is_the_slice_then_each_neighbour_then_the_weighting_code():
    assert neighbours(4, 10, 0) == []
    assert neighbours(4, 10, 2) == [3, 5, 2, 6]
    assert neighbours(0, 10, 1) == [0, 1] and neighbours(9, 10, 1) == [8, 9]   # ends repeat
    assert neighbours(0, 1, 1) == [0, 0]
    slices = [np.stack([np.full((4, 4), 10.0 * k), np.full((4, 4), -1.0)]) for k in range(3)]
    stacked = with_neighbours(slices[1], [slices[0], slices[2]], image_channels=1)
    assert stacked.dtype == np.float32
    assert [float(c[0, 0]) for c in stacked] == [10.0, 0.0, 20.0, -1.0]
    assert with_neighbours(slices[1], [], image_channels=1) is slices[1]


def test_context_slices_widen_the_input_and_are_checked():
    spec = replace(CT_SPEC, context_slices=1)
    weighted = ModelSpec("MR", 40, 1.0, Intensity("mr_zscore", weighting=True), context_slices=2)
    assert (CT_SPEC.channels, spec.channels, weighted.channels) == (2, 6, 6)
    assert ModelSpec.from_json(spec.to_json()) == spec
    old = json.loads(CT_SPEC.to_json())
    del old["context_slices"]                             # a model from before 2.5D
    assert ModelSpec.from_json(json.dumps(old)).context_slices == 0
    for wrong in (-1, 4, 1.5):
        with pytest.raises(ModelError, match=f"context_slices {wrong}: expected a whole"):
            ModelSpec.from_json(replace(CT_SPEC, context_slices=wrong).to_json(), "ct.onnx")


def pet_header(correction="START", **changes):
    injected = datetime(2026, 3, 1, 9, 0, 0)
    tags = PetTags("BQML", correction, 370e6, 6586.2, injected,
                   injected + timedelta(minutes=60), injected + timedelta(minutes=70), 80.0)
    return replace(plane(0.0), modality="PT", units="BQML", pet=replace(tags, **changes))


@pytest.mark.parametrize("correction,minutes", [("START", 60), ("ADMIN", 0), ("NONE", 70)])
def test_suv_factor_decays_the_dose_to_the_image_reference_time(correction, minutes):
    decayed = 370e6 * 2 ** (-minutes * 60 / 6586.2)
    assert suv_factor(pet_header(correction)) == pytest.approx(80_000 / decayed)


def test_suv_needs_the_patient_weight_and_says_so():
    with pytest.raises(DicomError, match=r"PatientWeight \(0010,1030\) missing"):
        suv_factor(pet_header(patient_weight_kg=None))


def test_suv_refuses_pixels_that_are_not_bq_per_ml():
    with pytest.raises(DicomError, match=r"Units \(0054,1001\) is 'CNTS'"):
        suv_factor(replace(pet_header(), units="CNTS"))


def test_preprocess_refuses_another_modality():
    mr = Slice(replace(header(), modality="MR"), np.zeros((64, 80), np.int16))
    with pytest.raises(DicomError, match="Modality .* is 'MR'.*expected CT"):
        preprocess(mr, CT_SPEC)


def test_preprocess_gives_channels_by_size_float32():
    ct = Slice(header(), np.zeros((64, 80), np.int16))
    image, grid = preprocess(ct, CT_SPEC)
    assert image.shape == (2, 32, 32) and image.dtype == np.float32
    assert grid.size == 32
