"""Slice order along the normal and the geometry problems of a series."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from edge.series.geometry import analyse_geometry
from edge.values import Patient, Rescale, SliceHeader
from tests.factories import AXIAL, SAGITTAL

OBLIQUE = (0.8660254, 0.5, 0.0, -0.5, 0.8660254, 0.0)   # axial turned 30 degrees in-plane


def plane(z: float, orientation=AXIAL, instance: int = 1, rows: int = 8, **changes) -> SliceHeader:
    header = SliceHeader(
        path=f"/in/{instance}.dcm", sop_instance_uid=f"1.2.{instance}", frame=0, n_frames=1,
        series_uid="1.2.3", study_uid="1.2", frame_of_reference_uid="1.2.4",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="CT", rows=rows, columns=8, bits_allocated=16, bits_stored=16,
        signed=True, position_mm=(0.0, 0.0, z),
        orientation=orientation, spacing_mm=(0.7, 0.7), slice_thickness_mm=2.5,
        expected_count=None, instance_number=instance, rescale=Rescale(), units="HU",
        series_description="", patient=Patient())
    return replace(header, **changes)


def test_orders_by_position_along_the_normal_not_instance_number():
    zs = [0.0, 2.5, 5.0, 7.5, 10.0]
    planes = [plane(z, instance=n) for z, n in zip(zs, [5, 1, 4, 2, 3], strict=True)]
    random.Random(1).shuffle(planes)
    geometry = analyse_geometry(planes)
    assert [planes[i].position_mm[2] for i in geometry.order] == zs
    assert geometry.slice_spacing_mm == pytest.approx(2.5)
    assert geometry.contiguous


def test_descending_z_positions_come_out_ascending_along_the_normal():
    planes = [plane(z, instance=i) for i, z in enumerate([10.0, 7.5, 5.0, 2.5, 0.0])]
    geometry = analyse_geometry(planes)
    assert geometry.order == (4, 3, 2, 1, 0)


def test_sagittal_series_is_ordered_along_its_own_normal():
    planes = [plane(0.0, SAGITTAL, i, position_mm=(x, 5.0, 0.0))
              for i, x in enumerate([0.0, -3.0, -6.0])]
    geometry = analyse_geometry(planes)
    assert geometry.order == (0, 1, 2)   # the normal is -x: x = 0 is lowest along it
    assert geometry.slice_spacing_mm == pytest.approx(3.0)


def test_gap_is_reported_with_where_and_how_big():
    planes = [plane(z, instance=i) for i, z in enumerate([0.0, 2.5, 5.0, 12.5, 15.0])]
    (problem,) = analyse_geometry(planes).problems
    assert problem.kind == "gap"
    assert "gap of 7.50 mm between slices at 5.00 and 12.50 mm" in problem.detail


def test_duplicate_positions_are_reported():
    planes = [plane(z, instance=i) for i, z in enumerate([0.0, 2.5, 2.5, 5.0])]
    kinds = [p.kind for p in analyse_geometry(planes).problems]
    assert kinds == ["duplicate_position"]


def test_mixed_orientation_is_reported_and_one_stray_slice_does_not_reorder_the_rest():
    planes = [plane(z, instance=i) for i, z in enumerate([0.0, 2.5, 5.0, 7.5])]
    planes.insert(1, plane(3.0, SAGITTAL, instance=9))
    geometry = analyse_geometry(planes)
    assert [p.kind for p in geometry.problems] == ["mixed_orientation"]
    axial_order = [i for i in geometry.order if planes[i].orientation == AXIAL]
    assert [planes[i].position_mm[2] for i in axial_order] == [0.0, 2.5, 5.0, 7.5]


def test_mixed_matrix_size_is_reported():
    planes = [plane(0.0, instance=1), plane(2.5, instance=2, rows=16)]
    assert "mixed matrix size" in str(analyse_geometry(planes).problems[0])


def test_oblique_orientation_sorts_by_projection_on_its_normal():
    # Positions move along the normal (0, 0, 1) but also drift in-plane, as with a table shift.
    planes = [plane(0.0, OBLIQUE, i, position_mm=(10.0 * i, -4.0 * i, 3.0 * (2 - i)))
              for i in range(3)]
    geometry = analyse_geometry(planes)
    assert geometry.order == (2, 1, 0)
    assert geometry.slice_spacing_mm == pytest.approx(3.0)


def test_fewer_slices_than_the_series_declares_is_a_problem_naming_both_counts():
    planes = [plane(2.5 * i, instance=i, expected_count=5) for i in range(4)]
    (problem,) = analyse_geometry(planes).problems
    assert problem.kind == "missing_slices" and "only 4 of the 5 slices" in str(problem)
    whole = [plane(2.5 * i, instance=i, expected_count=5) for i in range(5)]
    assert analyse_geometry(whole).contiguous


def test_a_series_short_of_its_count_is_failed_when_nothing_is_found_positive_otherwise():
    from edge.inference.series import verdict

    short = analyse_geometry([plane(2.5 * i, instance=i, expected_count=9) for i in range(4)])
    status, reason = verdict([], short.problems)
    assert status == "failed" and "only 4 of the 9" in reason
    assert verdict(["a lesion"], short.problems)[0] == "positive"
    assert verdict([], ()) == ("negative", None)
