"""Grouping into series, duplicates, and the completion rule (time passed in)."""

from __future__ import annotations

from dataclasses import replace

from edge.series.assembler import Admission, SeriesAssembler
from tests.edge.test_geometry import plane


def assembler(**quiet) -> SeriesAssembler:
    return SeriesAssembler(quiet or {"CT": 15.0}, 30.0)


def counted(n: int, total: int, **changes):
    return [replace(plane(2.5 * i, instance=i + 1), expected_count=total, **changes)
            for i in range(n)]


def test_series_is_complete_as_soon_as_the_promised_count_arrives_contiguous():
    a = assembler()
    planes = counted(4, 4)
    for t, p in enumerate(planes[:-1]):
        assert not a.add([p], float(t))[1].complete
    admission, state = a.add([planes[-1]], 3.0)
    assert admission is Admission.NEW
    assert state.complete and state.completed_by == "expected count"
    assert state.geometry.contiguous


def test_out_of_order_arrival_completes_the_same():
    a = assembler()
    planes = counted(4, 4)
    for t, i in enumerate([2, 0, 3, 1]):
        _, state = a.add([planes[i]], float(t))
    assert state.complete
    assert [state.planes[i].position_mm[2] for i in state.geometry.order] == [0, 2.5, 5, 7.5]


def test_count_reached_with_a_gap_waits_for_the_quiet_period():
    a = assembler()
    planes = counted(4, 4)
    planes[3] = replace(planes[3], position_mm=(0.0, 0.0, 20.0))
    for t, p in enumerate(planes):
        _, state = a.add([p], float(t))
    assert not state.complete
    assert a.due(3.0 + 14.9) == []
    (done,) = a.due(3.0 + 15.0)
    assert done.completed_by == "quiet period"
    assert [p.kind for p in done.geometry.problems] == ["gap"]


def test_without_a_count_the_modality_quiet_period_decides():
    a = assembler(CT=15.0, MR=40.0)
    a.add([plane(0.0, instance=1)], 100.0)
    a.add([replace(plane(0.0, instance=2), series_uid="9.9", modality="MR")], 100.0)
    assert [s.modality for s in a.due(115.0)] == ["CT"]
    assert [s.modality for s in a.due(140.0)] == ["MR"]


def test_every_new_slice_restarts_the_quiet_period():
    a = assembler()
    a.add([plane(0.0, instance=1)], 0.0)
    a.add([plane(2.5, instance=2)], 10.0)
    assert a.due(20.0) == []
    assert len(a.due(25.0)) == 1


def test_inconsistent_counts_fall_back_to_the_quiet_period():
    a = assembler()
    planes = counted(3, 3)
    planes[1] = replace(planes[1], expected_count=4)
    for t, p in enumerate(planes):
        _, state = a.add([p], float(t))
    assert state.expected_count is None and not state.complete


def test_a_repeated_uid_is_not_added_and_names_where_it_came_first():
    a = assembler()
    first = plane(0.0, instance=1)
    a.add([first], 0.0)
    admission, earlier = a.add([replace(first, path="/in/copy.dcm")], 1.0)
    assert admission is Admission.REPEAT and earlier.path == first.path
    assert a.series["1.2.3"].n_planes == 1


def test_a_late_slice_reopens_a_complete_series_as_the_next_version():
    a = assembler()
    for t, p in enumerate(counted(3, 3)):
        _, state = a.add([p], float(t))
    assert state.complete and state.version == 1
    late = replace(plane(7.5, instance=4), expected_count=3)
    admission, state = a.add([late], 50.0)
    assert admission is Admission.REOPENED
    assert state.version == 2 and not state.complete and state.n_planes == 4
    (done,) = a.due(50.0 + 15.0)
    assert done.version == 2 and done.completed_by == "quiet period"


def test_forget_drops_a_finished_series_and_its_uids():
    a = assembler()
    first = plane(0.0, instance=1)
    a.add([first], 0.0)
    a.forget("1.2.3")
    assert a.series == {} and a.seen == {}
    assert a.add([first], 1.0)[0] is Admission.NEW
