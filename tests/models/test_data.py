"""Training data: Decathlon NIfTI and DICOM-with-mask layouts, patient-level splits."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel
import numpy as np
import pytest

from edge.errors import ModelError
from edge.inference.spec import Intensity, ModelSpec
from models.data import DicomCase, NiftiCase, find_cases, prepare, split_by_patient

CT32 = ModelSpec("CT", 32, 4.0, Intensity("ct_windows", ((-100.0, 200.0),)))


def decathlon(root, n=2, labels=None):
    """A Decathlon-style CT dataset: a body of 40 HU, a tumour (label 2) at RAS (20, -10, z)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([-2.0, 2.0, 5.0, 1.0])           # i runs right-to-left in RAS: x flips
    affine[:3, 3] = [60.0, -60.0, -20.0]
    training = []
    for k in range(n):
        image = np.full((60, 60, 8), -1000, np.int16)
        image[10:50, 10:50, :] = 40
        label = np.zeros(image.shape, np.uint8)
        label[10:50, 10:50, :] = 1                         # the organ
        i, j = 20, 25                                      # RAS x = 60 - 2i = 20, y = -10
        image[i - 2:i + 3, j - 2:j + 3, 3:6] = 150
        label[i - 2:i + 3, j - 2:j + 3, 3:6] = 2
        for name, data in (("imagesTr", image), ("labelsTr", label)):
            nibabel.save(nibabel.Nifti1Image(data, affine), root / name / f"case_{k:03d}.nii.gz")
        training.append({"image": f"./imagesTr/case_{k:03d}.nii.gz",
                         "label": f"./labelsTr/case_{k:03d}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "modality": {"0": "CT"}, "labels": labels or {"0": "background", "1": "liver",
                                                       "2": "cancer"},
        "training": training}))
    return root


def test_decathlon_cases_are_found_with_their_tumour_labels(tmp_path):
    cases = find_cases([decathlon(tmp_path)], "CT")
    assert [type(c) for c in cases] == [NiftiCase, NiftiCase]
    assert cases[0].tumour_labels == (2,)


def test_decathlon_without_a_tumour_label_name_asks_for_them(tmp_path):
    root = decathlon(tmp_path, labels={"0": "background", "1": "liver", "2": "thing"})
    with pytest.raises(ModelError, match="--tumour-labels"):
        find_cases([root], "CT")
    assert find_cases([root], "CT", tumour_labels=[2])[0].tumour_labels == (2,)


@pytest.mark.parametrize("channels,channel,weighting", [
    ({"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}, 0, "T2"),     # BrainTumour
    ({"0": "T2", "1": "ADC"}, 0, "T2"),                                # Prostate
    ({"0": "ADC", "1": "T1"}, 0, ""),
    ({"0": "CT", "1": "t1gd"}, 1, "T1")])
def test_decathlon_mr_channels_are_found_by_their_sequence_names(
        tmp_path, channels, channel, weighting):
    root = decathlon(tmp_path, n=1)
    info = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps(info | {"modality": channels}))
    (case,) = find_cases([root], "MR")
    assert (case.channel, case.mr_weighting) == (channel, weighting)
    if channel == 0:
        planes, _ = case.slices()
        assert {p.header.mr_weighting for p in planes} == {weighting}


def test_nifti_tumour_lands_where_its_ras_position_says_in_lps(tmp_path):
    (case, _) = find_cases([decathlon(tmp_path)], "CT")
    planes, masks = case.slices()
    assert planes[4].header.position_mm[2] == pytest.approx(0.0)     # z = -20 + 5 k
    data = prepare(case, CT32)
    k = 4
    u, v = np.argwhere(data.masks[k]).mean(axis=0)
    from edge.inference.preprocess import slice_grid

    grid = slice_grid(planes[k].header, 32, 4.0)
    x, y, _ = grid.to_patient(np.array([[u, v]]))[0]
    assert (x, y) == pytest.approx((-20.0, 10.0), abs=3.0)          # LPS = (-RAS x, -RAS y)
    assert data.images[k, 0, int(round(u)), int(round(v))] > 0.6     # 150 HU in (-100, 200)
    assert not data.masks[0].any() and data.tumour.tolist() == [False] * 3 + [True] * 3 + \
        [False] * 2


def test_dicom_case_with_a_mask_missing_a_plane_is_refused(pet_cases, tmp_path):
    import shutil

    folder = shutil.copytree(pet_cases[0], tmp_path / "case")
    saved = dict(np.load(folder / "mask.npz"))
    np.savez(folder / "mask.npz", labels=saved["labels"][1:],
             sop_instance_uids=saved["sop_instance_uids"][1:])
    with pytest.raises(ModelError, match="mask.npz has no plane for SOPInstanceUID"):
        DicomCase(folder).slices()


def test_a_dicom_case_reads_in_anatomical_order_so_each_lesion_is_one_3d_region(pet_cases):
    """The series' file names are random UIDs; read in their order, a lesion's planes lie
    apart in the mask stack and one lesion counts as several (and sampling by lesion
    weighs it by its slices). Read in anatomical order, the stack holds as many 3D
    regions as truth.json lists lesions."""
    from edge.series.geometry import analyse_geometry
    from models.data import lesion_voxels

    counts = []
    for folder in pet_cases:
        case = DicomCase(folder)
        planes, masks = case.slices()
        assert analyse_geometry([p.header for p in planes]).order == tuple(range(len(planes)))
        assert ([Path(p.header.path).name for p in planes]
                != [p.name for p in case.files()])                  # not in file order
        counts.append(len(json.loads((folder / "truth.json").read_text())["lesions"]))
        assert len(lesion_voxels(np.stack(masks))) == counts[-1]
    assert any(counts)


@dataclass(frozen=True)
class NamedCase:
    name: str


def test_the_split_keeps_whole_patients_apart_whatever_the_seed_or_the_other_cases():
    cases = [NamedCase(f"MR-1-{i:04d}") for i in range(60)]
    train, val = split_by_patient(cases, 0.15)
    assert not {c.name for c in train} & {c.name for c in val}
    assert len(train) + len(val) == 60 and 4 <= len(val) <= 15
    # fine-tuning on these and 90 more: none of the first training cases is validated on
    more = cases + [NamedCase(f"MR-3-{i:04d}") for i in range(90)]
    train_more, val_more = split_by_patient(more, 0.15)
    assert {c.name for c in val_more} & {c.name for c in cases} == {c.name for c in val}
    assert split_by_patient(list(reversed(cases)), 0.15)[1] == list(reversed(val))
    assert len(split_by_patient(cases[:2], 0.15)[1]) == 1       # a tiny set still validates
    assert split_by_patient(cases[:1], 0.15) == (cases[:1], [])


def test_sampling_by_lesion_draws_a_small_lesion_as_often_as_a_large_one():
    """A 3x3x1 lesion and a 15x15x5 one in a case: drawn by voxel, crops land on the small
    one about 9 in 1134 times; drawn by lesion, about half the time. Crops stay on the grid
    and keep image and mask aligned (the image is 1 on the small lesion, 2 on the large)."""
    from models.data import CaseData, Sampler

    image = np.zeros((6, 1, 64, 64), np.float16)
    image[1, 0, 5:8, 5:8] = 1
    image[0:5, 0, 30:45, 30:45] = 2
    case = CaseData("case", image, (image[:, 0] > 0).astype(np.uint8))

    def small_share(by_lesion: bool) -> float:
        sampler = Sampler([case], crop=16, positive_fraction=1.0,
                          rng=np.random.default_rng(0), by_lesion=by_lesion)
        images, masks, tumour = sampler.batch(400)
        assert images.shape == masks.shape == (400, 1, 16, 16) and tumour.min() == 1
        assert np.array_equal(images > 0, masks > 0)
        return float(np.mean(images.reshape(400, -1).max(axis=1) == 1))

    assert small_share(by_lesion=False) < 0.05
    assert 0.4 < small_share(by_lesion=True) < 0.6


def test_favouring_faint_lesions_draws_a_faint_lesion_more_often():
    """Two lesions of one size on noise of SD 1: one 10 above it, one 1 above it. Their
    measured contrasts are about 10 and 1 SD; with faint_sd=3 the faint one weighs 3 (3/1)
    and the bright one 1 (never below 1), so crops land on the faint one about 3 times in 4,
    where sampling by lesion alone gives half."""
    from models.data import CaseData, Sampler, lesion_contrast, lesion_voxels

    rng = np.random.default_rng(1)
    image = rng.normal(0, 1, (4, 1, 64, 64))
    masks = np.zeros((4, 64, 64), np.uint8)
    masks[1:3, 8:16, 8:16] = 1                 # bright
    masks[1:3, 40:48, 40:48] = 1               # faint
    image[1:3, 0, 8:16, 8:16] += 10
    image[1:3, 0, 40:48, 40:48] += 1
    case = CaseData("case", image.astype(np.float16), masks)
    bright, faint = sorted(lesion_voxels(masks), key=lambda v: v[0, 1])
    assert 8 < lesion_contrast(case, bright, (2, 6)) < 12
    assert 0.5 < lesion_contrast(case, faint, (2, 6)) < 1.5

    def faint_share(faint_sd: float) -> float:
        sampler = Sampler([case], crop=16, positive_fraction=1.0, rng=np.random.default_rng(0),
                          by_lesion=True, faint_sd=faint_sd)
        images, crop_masks, tumour = sampler.batch(800)
        assert tumour.min() == 1
        return float(np.mean([crop[0][mask[0] > 0].mean() < 5      # on the faint one
                              for crop, mask in zip(images, crop_masks, strict=True)]))

    assert 0.44 < faint_share(0.0) < 0.56
    assert 0.69 < faint_share(3.0) < 0.81


def test_favouring_missed_lesions_draws_each_missed_one_that_many_times_as_often():
    """Two lesions of one size: drawn half the time each; once the network is said to miss
    the second (its peak under 0.5), 3 times as often as the first, so 3 crops in 4."""
    from models.data import CaseData, Sampler

    masks = np.zeros((4, 64, 64), np.uint8)
    masks[1:3, 8:16, 8:16] = 1
    masks[1:3, 40:48, 40:48] = 1
    image = np.zeros((4, 1, 64, 64), np.float16)
    image[1:3, 0, 40:48, 40:48] = 1            # marks the second lesion in the crops
    sampler = Sampler([CaseData("case", image, masks)], crop=16, positive_fraction=1.0,
                      rng=np.random.default_rng(0), favour_missed=3.0)

    def second_share() -> float:
        images, crop_masks, _ = sampler.batch(800)
        return float(np.mean([crop[0][mask[0] > 0].mean() > 0.5
                              for crop, mask in zip(images, crop_masks, strict=True)]))

    assert 0.44 < second_share() < 0.56        # by lesion until the network is reviewed
    assert sampler.set_missed([0.9, 0.2]) == 1
    assert 0.69 < second_share() < 0.81
    assert sampler.set_missed([0.9, 0.7]) == 0
    assert 0.44 < second_share() < 0.56


def test_false_spots_are_the_peaks_of_marks_away_from_every_lesion():
    """A lesion marked one pixel too wide is its edge, not a false spot; a mark 8 pixels
    away is one, found at its most probable pixel; so is a mark on a slice without lesions.
    With no margin the lesion's over-marked rim is a spot too."""
    from models.data import false_spot_peaks

    probabilities = np.zeros((3, 20, 20))
    masks = np.zeros((3, 20, 20), np.uint8)
    masks[1, 5:8, 5:8] = 1
    probabilities[1, 4:9, 4:9] = 0.9
    probabilities[1, 15:18, 15:18] = 0.6
    probabilities[1, 16, 17] = 0.8
    probabilities[2, 2, 2] = 0.7
    probabilities[0, 10, 10] = 0.49                      # below the threshold
    assert false_spot_peaks(probabilities, masks, margin_px=2) == [(1, 16, 17), (2, 2, 2)]
    assert len(false_spot_peaks(probabilities, masks, margin_px=0)) == 3


def test_a_saturated_false_spot_peaks_at_its_first_pixel():
    """Of pixels equally probable (a network saturated at 1.0), the first in scan order."""
    from models.data import false_spot_peaks

    probabilities = np.zeros((2, 12, 12), np.float32)
    probabilities[1, 6:9, 3:7] = 1.0
    probabilities[0, 2:4, 8:10] = 1.0
    assert false_spot_peaks(probabilities, np.zeros((2, 12, 12), np.uint8), margin_px=1) == \
        [(0, 2, 8), (1, 6, 3)]


def test_hard_negative_crops_centre_on_the_false_spots_and_change_nothing_without_them():
    """Every hard-negative crop holds its spot (image 3 there, no lesion); with shares
    0.3 / 0.4 about 0.4 of crops do. With no spots set, the batches are those of a sampler
    without the option, draw for draw."""
    from models.data import CaseData, Sampler

    image = np.zeros((4, 1, 64, 64), np.float16)
    image[1, 0, 5:8, 5:8] = 1                              # the lesion
    image[2, 0, 50, 40] = 3                                # where a network marks one
    case = CaseData("case", image, (image[:, 0] == 1).astype(np.uint8))

    def sampler(hard):
        return Sampler([case], crop=16, positive_fraction=0.3, rng=np.random.default_rng(0),
                       hard_negative_fraction=hard)

    plain, unset = sampler(0.0), sampler(0.4)
    for a, b in zip(plain.batch(50), unset.batch(50), strict=True):
        assert np.array_equal(a, b)
    hard = sampler(0.4)
    hard.false_spots = [(0, 2, 50, 40)]
    images, masks, tumour = hard.batch(1000)
    on_spot = images.reshape(1000, -1).max(axis=1) == 3
    assert 0.36 < on_spot.mean() < 0.44
    assert masks[on_spot].max() == 0 and tumour[on_spot].max() == 0
    only = Sampler([case], crop=16, positive_fraction=0.0, rng=np.random.default_rng(1),
                   hard_negative_fraction=1.0)
    only.false_spots = [(0, 2, 50, 40)]
    assert (only.batch(200)[0].reshape(200, -1).max(axis=1) == 3).all()
