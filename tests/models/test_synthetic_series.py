"""Synthetic series read back by the appliance's reader, with lesions where truth says."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from edge.inference.preprocess import suv_factor
from edge.ingest.reader import read_file
from edge.series.geometry import analyse_geometry
from models.data import DicomCase
from models.synthetic.anatomy import ORGAN_TISSUE, TrainingMix, sample_patient
from models.synthetic.anatomy import Tissue as T
from models.synthetic.physics import lesion_values, sample_appearance


def read_series(folder):
    planes = [p for f in DicomCase(folder).files() for p in read_file(str(f))]
    geometry = analyse_geometry([p.header for p in planes])
    return [planes[i] for i in geometry.order], geometry


def voxel_of(point, plane):
    """(row, column) of a patient point on a plane's pixel grid."""
    h = plane.header
    d = np.subtract(point, h.position_mm)
    return (d @ np.asarray(h.orientation[3:]) / h.spacing_mm[0],
            d @ np.asarray(h.orientation[:3]) / h.spacing_mm[1])


def test_truth_json_has_the_documented_format(pet_cases):
    for folder in pet_cases:
        truth = json.loads((folder / "truth.json").read_text())
        assert {"series_uid", "modality", "lesions"} <= truth.keys()
        for lesion in truth["lesions"]:
            assert {"center_mm", "diameter_mm", "volume_mm3"} <= lesion.keys()
            assert 3.5 <= lesion["diameter_mm"] <= 45 and len(lesion["center_mm"]) == 3


def test_series_read_back_whole_and_contiguous(pet_cases):
    for folder in pet_cases:
        planes, geometry = read_series(folder)
        truth = json.loads((folder / "truth.json").read_text())
        assert {p.header.series_uid for p in planes} == {truth["series_uid"]}
        assert geometry.contiguous
        assert len(planes) == np.load(folder / "mask.npz")["labels"].shape[0]


def test_each_lesion_centre_lies_in_its_mask_and_is_hotter_than_around_it(pet_cases):
    checked = 0
    for folder in pet_cases:
        planes, _ = read_series(folder)
        labels = np.load(folder / "mask.npz")["labels"]
        truth = json.loads((folder / "truth.json").read_text())
        normal_positions = np.array([p.header.position_mm @ p.header.normal for p in planes])
        for index, lesion in enumerate(truth["lesions"], start=1):
            k = int(np.argmin(np.abs(normal_positions - np.dot(lesion["center_mm"],
                                                                planes[0].header.normal))))
            r, c = voxel_of(lesion["center_mm"], planes[k])
            inside = labels[k] == index
            if lesion["diameter_mm"] >= 12:
                assert inside[int(round(r)), int(round(c))], lesion
            if inside.sum() >= 4:
                suv = planes[k].pixels() * suv_factor(planes[k].header)
                ring = ndimage.binary_dilation(inside, iterations=3) & ~inside
                assert suv[inside].mean() > suv[ring].mean(), lesion
                checked += 1
    assert checked >= 1


def test_truth_lists_only_the_lesions_the_series_images_and_the_mask_numbers_them(tmp_path):
    """PT seed 2 case 2 draws four lesions, and the first, 5 mm across, fills no voxel of
    the mask; case 28 draws one lesion and images none of it. truth.json lists the lesions
    the mask holds, and the mask's id k is truth's lesion k."""
    from models.synthetic.series import write_case

    for index, expected in ((2, 3), (28, 0)):
        folder = write_case("PT", 2, index, tmp_path)
        truth = json.loads((folder / "truth.json").read_text())
        labels = np.load(folder / "mask.npz")["labels"]
        assert len(truth["lesions"]) == expected
        assert set(np.unique(labels)) - {0} == set(range(1, expected + 1))


def test_a_series_drawn_without_lesions_has_none_in_truth_or_mask(tmp_path):
    """PT seed 2 case 2 draws lesions (test above); drawn without, it has none."""
    from models.synthetic.series import write_case

    folder = write_case("PT", 2, 2, tmp_path, lesions=False)
    truth = json.loads((folder / "truth.json").read_text())
    assert truth["lesions"] == [] and truth["generator"]["without_lesions"] is True
    assert not np.load(folder / "mask.npz")["labels"].any()
    planes, geometry = read_series(folder)
    assert len(planes) == len(geometry.order) > 0


def test_the_same_seed_and_case_give_the_same_truth(tmp_path):
    from models.synthetic.series import write_case

    a = json.loads((write_case("PT", 11, 2, tmp_path / "a") / "truth.json").read_text())
    b = json.loads((write_case("PT", 11, 2, tmp_path / "b") / "truth.json").read_text())
    for key in ("series_uid", "study_uid"):
        a.pop(key), b.pop(key)
    assert a == b


@pytest.mark.slow
def test_synth_command_writes_readable_mr_series(tmp_path):
    result = subprocess.run([sys.executable, "-m", "edge", "synth", "--modality", "MR",
                             "--cases", "1", "--seed", "4", "--out", str(tmp_path),
                             "--without-lesions"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (folder,) = tmp_path.iterdir()
    planes, geometry = read_series(folder)
    assert {p.header.modality for p in planes} == {"MR"}
    assert planes[0].header.rows in (256, 320)
    assert not [p for p in geometry.problems if p.kind != "gap"]
    truth = json.loads((folder / "truth.json").read_text())
    generator = truth["generator"]
    assert truth["lesions"] == [] and generator["without_lesions"]
    tags = pydicom.dcmread(DicomCase(folder).files()[0], stop_before_pixels=True)
    t2 = generator["weighting"] == "T2"
    assert (float(tags.EchoTime) > 60, float(tags.RepetitionTime) > 2000) == (t2, t2)
    assert ("FS" in tags.ScanOptions) == generator["fat_suppressed"]


def test_faint_lesions_stand_1_2_to_2_times_above_their_organ_in_pet_and_none_else_change():
    """`synth --faint` for training sets; without it a patient is drawn exactly as before."""
    ratios, kinds = [], set()
    for case in range(40):
        plain = sample_patient(np.random.default_rng(case)).lesions
        same = sample_patient(np.random.default_rng(case), mix=TrainingMix(faint=0.0)).lesions
        assert [(a.volume_mm3, a.uptake) for a in plain] == [(b.volume_mm3, b.uptake) for b in same]
        rng = np.random.default_rng(case)
        patient, pet = sample_patient(rng, mix=TrainingMix(faint=1.0)), sample_appearance("PT", rng)
        for lesion in patient.lesions:
            organ = max(pet.tissue[ORGAN_TISSUE[lesion.organ]], 1.5)
            ratios.append(lesion_values(lesion, pet)[0] / organ)
            kinds.add(lesion.kind)
            assert 0.1 <= lesion.strength <= 0.35
    assert len(ratios) > 40 and "cyst" in kinds
    assert min(ratios) >= 1.2 and max(ratios) <= 2.0


def test_small_lesions_are_4_to_10_mm_across_and_without_the_option_nothing_changes():
    """`synth --small` for training sets: the uniform 4-40 mm draw puts about one lesion in
    five under 10 mm (sphere-equivalent diameter), the size CT misses most."""
    def diameters(**option) -> list[float]:
        drawn = [sample_patient(np.random.default_rng(case), mix=TrainingMix(**option))
                 for case in range(40)]
        return [lesion.diameter_mm for patient in drawn for lesion in patient.lesions]

    plain, every, half = diameters(), diameters(small=1.0), diameters(small=0.5)
    assert diameters(small=0.0) == plain
    assert 0.1 < np.mean(np.array(plain) < 10) < 0.35
    assert np.mean(np.array(every) < 10) > 0.95 and max(every) < 11
    assert np.mean(np.array(plain) < 10) < np.mean(np.array(half) < 10) < 0.8


def test_a_series_drawn_with_a_lesion_mix_says_so_in_truth(tmp_path):
    """PT seed 2 case 2 draws lesions (the mask test above); drawn small, truth.json
    records the share and every lesion written is under 11 mm; an option left at its
    default is not recorded."""
    from models.synthetic.series import write_case

    folder = write_case("PT", 2, 2, tmp_path / "small", TrainingMix(small=1.0))
    truth = json.loads((folder / "truth.json").read_text())
    assert truth["generator"]["small"] == 1.0 and truth["lesions"]
    assert "faint" not in truth["generator"] and "bright" not in truth["generator"]
    assert all(lesion["diameter_mm"] < 11 for lesion in truth["lesions"])
    folder = write_case("PT", 2, 2, tmp_path / "bright", TrainingMix(bright=0.8))
    generator = json.loads((folder / "truth.json").read_text())["generator"]
    assert generator["bright"] == 0.8 and "small" not in generator


def test_bright_sets_the_share_of_ct_solid_lesions_brighter_than_their_organ():
    """`synth --bright` for training sets: by default about a third of the lesions are
    drawn brighter than their organ, and a bright solid lesion in an enhanced CT looks like
    an enhancing vessel; the option draws more of them, and nothing but their sign
    changes: the same random draw decides it at any share."""
    def drawn(bright):
        return [sample_patient(np.random.default_rng(case), mix=TrainingMix(bright=bright))
                for case in range(60)]

    plain, every, none, most = drawn(None), drawn(1.0), drawn(0.0), drawn(0.8)
    signs = {bright: np.array([lesion.sign for patient in patients for lesion in patient.lesions])
             for bright, patients in ((None, plain), (1.0, every), (0.0, none), (0.8, most))}
    assert 0.25 < np.mean(signs[None] > 0) < 0.45 and len(signs[None]) > 80
    assert (signs[1.0] == 1).all() and (signs[0.0] == -1).all()
    assert 0.7 < np.mean(signs[0.8] > 0) < 0.9
    assert (signs[0.8] >= signs[None]).all()      # bright by default, bright at 0.8
    def but_sign(patients):
        return [(x.kind, x.organ, x.volume_mm3, x.strength, x.uptake, *x.center_mm)
                for patient in patients for x in patient.lesions]

    assert but_sign(every) == but_sign(none) == but_sign(most) == but_sign(plain)
    ct = sample_appearance("CT", np.random.default_rng(0))
    for lesion in (x for patient in every for x in patient.lesions):
        if lesion.organ != "lung" and lesion.kind not in ("rim", "cyst"):
            assert lesion_values(lesion, ct)[0] >= ct.tissue[ORGAN_TISSUE[lesion.organ]] + 30


@pytest.mark.parametrize("option", ["--faint", "--small", "--bright", "--t1"])
def test_synth_refuses_a_share_outside_0_to_1(tmp_path, capsys, option):
    from edge.cli import main

    assert main(["synth", "--modality", "PT", "--cases", "1", "--seed", "1",
                 "--out", str(tmp_path / "s"), option, "1.5"]) == 2
    assert f"{option} 1.5: expected a share between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_mr_tissues_vary_between_patients_about_their_weighting_s_values():
    """About 10 % from patient to patient: enough to vary, not so much that a T2 liver turns
    as black as air or a T1 liver darker than its spleen, as an absolute spread did."""
    draws = [sample_appearance("MR", np.random.default_rng(seed)) for seed in range(300)]
    for weighting, nominal in (("T1", 0.5), ("T2", 0.22)):
        livers = np.array([a.tissue[T.LIVER] for a in draws if a.weighting == weighting])
        assert abs(livers.mean() / nominal - 1) < 0.05
        assert 0.06 < livers.std() / livers.mean() < 0.15
    t1 = [a for a in draws if a.weighting == "T1"]
    brighter = np.mean([a.tissue[T.LIVER] > a.tissue[T.SPLEEN] for a in t1])
    assert brighter > 0.95


def test_t1_sets_the_share_of_mr_series_drawn_t1_weighted():
    """`synth --t1` for training sets: by default about 45 % of MR series are T1-weighted;
    the option draws more (or fewer), deciding on the same random draw, so a series drawn T1
    by default stays T1 at any larger share."""
    def weightings(t1):
        return np.array([sample_appearance("MR", np.random.default_rng(seed),
                                           TrainingMix(t1=t1)).weighting == "T1"
                         for seed in range(200)])

    default, most, every, none = weightings(None), weightings(0.8), weightings(1.0), weightings(0)
    assert 0.35 < default.mean() < 0.55 and 0.7 < most.mean() < 0.9
    assert every.all() and not none.any()
    assert (most >= default).all()
    assert (weightings(0.45) == default).all()


def test_an_enhanced_ct_series_records_its_contrast_agent_and_a_plain_one_none(tmp_path):
    from dataclasses import replace

    from models.synthetic.dicom import make_dataset
    from tests.factories import tiny_series

    draws = [sample_appearance("CT", np.random.default_rng(seed)) for seed in range(200)]
    enhanced = [a.tissue[T.KIDNEY] > 100 for a in draws]    # 170 HU enhanced, 32 plain
    assert 0.65 < np.mean(enhanced) < 0.85
    assert [bool(a.contrast_agent) for a in draws] == enhanced
    series = tiny_series(1, "CT")
    for agent in (draws[enhanced.index(True)].contrast_agent, ""):
        identity = replace(series.identity, contrast_agent=agent)
        ds = make_dataset(np.zeros((8, 8)), identity, series.planes[0])
        path = tmp_path / f"{bool(agent)}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert ("ContrastBolusAgent" in ds, ds.get("ContrastBolusRoute")) == (
            (True, "IV") if agent else (False, None))
        (plane,) = read_file(str(path))
        assert plane.header.contrast_agent == agent


def test_every_lesion_is_centred_in_the_tissue_of_the_organ_it_is_recorded_in():
    """An organ's shape lies partly under later layers (the heart over the lung, the kidney
    over the liver); a "lung" nodule of 39 mm centred in the mediastinum had the
    mediastinum's density and could not be seen. Before the check 20 of 249 held-out CT
    lesions were centred outside their organ's tissue."""
    lesions = 0
    for case in range(60):
        patient = sample_patient(np.random.default_rng(case))
        for lesion in patient.lesions:
            assert patient.tissues(lesion.center_mm[None])[0] == ORGAN_TISSUE[lesion.organ]
            lesions += 1
    assert lesions > 60


def test_synthesis_never_writes_into_a_series_folder_that_holds_files(tmp_path):
    """Synthesised again, a series gets new UIDs (and, named by UID, new files): the old
    files would stay in its folder as a second series. Nothing is written then; the next
    cases still go beside the old ones."""
    from edge.errors import ScansideError
    from models.synthetic.series import synthesize

    (first,) = synthesize("PT", 1, seed=12, out=tmp_path)
    before = sorted(f.name for f in first.iterdir())
    with pytest.raises(ScansideError, match=rf"{first}: already holds files \(1 of the 2 "):
        synthesize("PT", 2, seed=12, out=tmp_path)
    assert sorted(f.name for f in first.iterdir()) == before
    assert [f.name for f in tmp_path.iterdir()] == [first.name]
    (second,) = synthesize("PT", 1, seed=12, out=tmp_path, first_case=1)
    assert second.name == "PT-12-0001"


@pytest.mark.parametrize("position", ["HFS", "FFP"])
def test_a_slice_labelled_on_its_axes_matches_every_shape_tested_point_by_point(position):
    """Rendering labels a slice by its rows, columns and sub-slices (`Grid`): each shape
    only within its box, a union part by part, cylinders and ribs on broadcast axes. Every
    pixel must get what testing each layer and lesion at every point gives, later layers
    winning: through the lesions, the ribs, the liver and the lungs, head or feet first."""
    from models.synthetic.anatomy import Grid
    from models.synthetic.physics import Plane
    from models.synthetic.series import POSITIONS

    patient = sample_patient(np.random.default_rng(7), n_lesions=4)
    iop = np.array(POSITIONS[position], float)
    heights = [lesion.center_mm[2] for lesion in patient.lesions]
    heights += [patient.diaphragm_z - 60, patient.diaphragm_z + 40, patient.diaphragm_z + 110]
    for z in heights:
        plane = Plane(np.array([-200.0, -200.0, z]) * np.r_[iop[:2] + iop[3:5], 1], iop[:3],
                      iop[3:], (3.1, 3.1), 130, 130, 5.0)
        points = plane.points(3).reshape(3, 130, 130, 3)
        assert Grid(points).axial
        flat = points.reshape(-1, 3)
        tissues = np.zeros(len(flat), np.int8)
        for tissue, shape in patient.layers:
            tissues[shape.inside(flat)] = tissue
        ids = np.zeros(len(flat), np.int8)
        core = np.zeros(len(flat), bool)
        for i, lesion in enumerate(patient.lesions):
            ids[lesion.solid.inside(flat)] = i + 1
            if lesion.core is not None:
                core |= lesion.solid.inside(flat) & lesion.core.inside(flat)
        assert len(np.unique(tissues)) > 5
        np.testing.assert_array_equal(patient.tissues(points).reshape(-1), tissues)
        got_ids, got_core = patient.lesion_ids(points)
        np.testing.assert_array_equal(got_ids.reshape(-1), ids)
        np.testing.assert_array_equal(got_core.reshape(-1), core)
    assert patient.lesions


def test_a_wobbly_organ_tests_its_wobble_only_where_it_can_decide():
    """An organ's outline is its ellipsoid scaled by 1 + a few cosines of the direction;
    only points within the scale's bounds need them. The shortcut changes no answer."""
    from models.synthetic.shapes import Ellipsoid, random_rotation

    rng = np.random.default_rng(3)
    for _ in range(20):
        wobble = tuple((rng.uniform(0.05, 0.3), rng.normal(size=3) / 1.7, rng.uniform(1, 4))
                       for _ in range(3))
        shape = Ellipsoid(rng.normal(0, 20, 3), rng.uniform(20, 80, 3), random_rotation(rng),
                          wobble)
        p = shape.center + (rng.uniform(-1.4, 1.4, (20000, 3)) * shape.radii) @ shape.rotation.T
        local = (p - shape.center) @ shape.rotation / shape.radii
        r2 = np.einsum("ij,ij->i", local, local)
        unit = local / np.sqrt(r2)[:, None]
        scale = 1 + sum(a * np.cos(f * (unit @ d)) for a, d, f in wobble)
        expected = r2 <= scale**2
        assert 0.05 < expected.mean() < 0.95 and (expected != (r2 <= 1)).sum() > 100
        np.testing.assert_array_equal(shape.inside(p), expected)
