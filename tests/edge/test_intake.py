"""The ingest stage end to end: real files, sandboxed reader, SQLite journal, quarantine."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import replace

import pytest
from pydicom import dcmread

from edge.ingest.intake import Admitted, Completed, Forgotten, Intake
from edge.ingest.journal import Journal
from edge.ingest.quarantine import quarantined_files
from edge.ingest.workers import ReaderPool
from edge.series.assembler import Admission, SeriesAssembler
from tests.factories import (
    deflate_bomb,
    tiny_series,
    truncate,
    with_pixel_length,
    zero_filled_like,
)


@pytest.fixture
def make_intake(config_for, reader_pool):
    """An Intake on tmp folders; the shared pool unless the test changes reader limits."""
    opened = []

    def make(**overrides):
        config = config_for(**overrides)
        pool = reader_pool
        if any(k.startswith("ingest__") and k != "ingest__incomplete_grace_s" for k in overrides):
            pool = ReaderPool.from_config(config)
            opened.append(pool)
        journal = Journal(config.paths.state_dir)
        opened.append(journal)
        return Intake(config, pool, journal, SeriesAssembler.from_config(config))

    yield make
    for thing in opened:
        thing.close()


def settle(intake: Intake, now: float):
    """Poll at `now` until every submitted read has been settled."""
    admitted = intake.poll(now)
    deadline = time.monotonic() + 60
    while intake.busy:
        assert time.monotonic() < deadline
        time.sleep(0.01)
        admitted += intake.poll(now)
    return admitted


def run(intake: Intake, *times: float):
    """The slices admitted while polling at each of `times`."""
    return [e for t in times for e in settle(intake, t) if isinstance(e, Admitted)]


def statuses(intake: Intake) -> dict[str, str]:
    return {os.path.basename(e.path): e.status for e in intake.journal.entries()}


def digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_out_of_order_arrival_with_shuffled_instance_numbers_and_descending_z(make_intake):
    intake = make_intake()
    inbox = intake.config.paths.inbox
    series = tiny_series(6, origin=(0.0, 0.0, 100.0), step_mm=-2.5)  # descending z
    numbers = list(range(1, 7))
    random.Random(3).shuffle(numbers)
    series.planes = [replace(p, instance_number=n) for p, n in zip(series.planes, numbers,
                                                                    strict=True)]
    order = [3, 0, 5, 1, 4, 2]
    series.write(inbox, indices=order, names={i: f"IM{k:04d}" for k, i in enumerate(order)})
    before = digests(inbox)
    admitted = run(intake, 0.0, 1.0)
    state = admitted[-1].series
    assert state.complete and state.completed_by == "expected count"
    ordered_z = [state.planes[i].position_mm[2] for i in state.geometry.order]
    assert ordered_z == sorted(ordered_z) == [87.5, 90.0, 92.5, 95.0, 97.5, 100.0]
    assert set(statuses(intake).values()) == {"accepted"}
    assert digests(inbox) == before                     # analysis never changes input


def test_a_gap_is_reported_and_completion_waits_for_the_quiet_period(make_intake):
    intake = make_intake()
    tiny_series(5).write(intake.config.paths.inbox, indices=[0, 1, 3, 4])
    admitted = run(intake, 0.0, 1.0)
    assert not admitted[-1].series.complete
    (done,) = intake.assembler.due(1.0 + intake.config.series.quiet_s.CT)
    assert done.completed_by == "quiet period"
    assert [p.kind for p in done.geometry.problems] == ["gap", "missing_slices"]


def test_duplicate_by_uid_is_journaled_and_left_in_place(make_intake):
    intake = make_intake()
    inbox = intake.config.paths.inbox
    first = tiny_series(2).write(inbox)[0]
    shutil.copy(first, inbox / "resent.dcm")
    run(intake, 0.0, 1.0)
    found = statuses(intake)
    assert sorted(found[n] for n in (first.name, "resent.dcm")) == ["accepted", "duplicate"]
    assert first.exists() and (inbox / "resent.dcm").exists()
    assert intake.assembler.series[dcmread(first).SeriesInstanceUID].n_planes == 2


def test_same_uid_with_other_content_is_quarantined_as_a_conflict(make_intake):
    intake = make_intake()
    inbox = intake.config.paths.inbox
    first = tiny_series(2).write(inbox)[0]
    run(intake, 0.0, 1.0)
    ds = dcmread(first)
    ds.WindowCenter = 40   # same SOPInstanceUID, different bytes
    ds.save_as(inbox / "changed.dcm")
    run(intake, 2.0, 3.0)
    assert statuses(intake)["changed.dcm"] == "conflict"
    (jailed,) = quarantined_files(intake.quarantine_dir)
    assert f"already received from {first}" in jailed.reason
    assert "with different content" in jailed.reason
    assert not (inbox / "changed.dcm").exists()


def test_a_late_slice_reopens_the_series_as_version_two(make_intake):
    intake = make_intake()
    inbox = intake.config.paths.inbox
    series = tiny_series(4)
    series.write(inbox, indices=[0, 1, 2, 3])
    assert run(intake, 0.0, 1.0)[-1].series.complete
    late = replace(series.planes[3], sop_uid="1.2.826.0.1.3680043.8.498.1",
                   position_mm=(-10.0, -10.0, 10.0), instance_number=5)
    series.planes.append(late)
    series.write(inbox, indices=[4])
    (admitted,) = run(intake, 2.0, 3.0)
    assert admitted.admission is Admission.REOPENED
    assert admitted.series.version == 2


@pytest.mark.parametrize("cut", [600, -40], ids=["in-header", "in-pixel-data"])
def test_truncated_file_is_retried_then_quarantined_after_the_grace_period(make_intake, cut):
    intake = make_intake(ingest__incomplete_grace_s=30.0)
    path = truncate(tiny_series(1).write(intake.config.paths.inbox)[0], cut)
    run(intake, 0.0, 1.0, 10.0, 20.0)
    assert path.exists() and statuses(intake) == {}
    run(intake, 31.0, 32.0)
    (jailed,) = quarantined_files(intake.quarantine_dir)
    assert jailed.reason.startswith("still incomplete after 30 s unchanged")
    assert statuses(intake) == {path.name: "quarantined"}


def test_preallocated_zero_filled_file_is_read_once_when_filled_in(make_intake):
    intake = make_intake()
    inbox = intake.config.paths.inbox
    finished = tiny_series(1).write(inbox.parent / "elsewhere")[0]
    target = zero_filled_like(finished, inbox / "IM0001")
    assert run(intake, 0.0, 1.5, 3.0, 5.0) == []
    target.write_bytes(finished.read_bytes())    # the writer fills it in
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    admitted = run(intake, 6.0, 7.5, 9.0)
    assert len(admitted) == 1
    assert statuses(intake) == {"IM0001": "accepted"}
    assert quarantined_files(intake.quarantine_dir) == []


def test_part_file_is_read_only_after_it_is_renamed_into_place(make_intake):
    intake = make_intake()
    inbox = intake.config.paths.inbox
    (path,) = tiny_series(1).write(inbox, names={0: "IM0001.dcm.part"})
    assert run(intake, 0.0, 2.0) == []
    os.rename(path, inbox / "IM0001.dcm")
    assert len(run(intake, 3.0, 4.5)) == 1


@pytest.mark.parametrize("make_bad,reason", [
    (lambda s, d: (d / "notes.txt").write_text("not an image\n" * 30) and d / "notes.txt",
     "not a DICOM Part 10 file"),
    (lambda s, d: with_pixel_length(s, d / "huge.dcm", 0xFFFFFFF0), "length is 4294967280"),
    (lambda s, d: deflate_bomb(s, d / "bomb.dcm", 64 << 20), "deflate bomb"),
], ids=["non-dicom", "huge-length", "deflate-bomb"])
def test_bad_files_are_quarantined_with_their_reason(make_intake, tmp_path, make_bad, reason):
    intake = make_intake(ingest__max_file_mb=16)
    source = tiny_series(1).write(tmp_path / "source")[0]
    bad = make_bad(source, intake.config.paths.inbox)
    run(intake, 0.0, 1.0)
    (jailed,) = quarantined_files(intake.quarantine_dir)
    assert reason in jailed.reason and jailed.original_path == str(bad)
    reason_file = jailed.path.with_name(jailed.path.name + ".reason.json")
    assert reason in json.loads(reason_file.read_text())["reason"]


def test_path_traversal_uid_is_quarantined_and_builds_no_path(make_intake, tmp_path):
    intake = make_intake()
    path = tiny_series(1).write(intake.config.paths.inbox)[0]
    ds = dcmread(path)
    ds.SOPInstanceUID = "../../escape"
    ds.save_as(path)
    run(intake, 0.0, 1.0)
    (jailed,) = quarantined_files(intake.quarantine_dir)
    assert "not a valid DICOM UID" in jailed.reason
    assert not any("escape" in p.name for p in tmp_path.rglob("*"))


def test_a_resend_after_a_restart_is_still_recognised_as_a_duplicate(make_intake):
    intake = make_intake()
    inbox = intake.config.paths.inbox
    first = tiny_series(2).write(inbox)[0]
    run(intake, 0.0, 1.0)
    restarted = make_intake()
    shutil.copy(first, inbox / "resent-after-restart.dcm")
    run(restarted, 0.0, 1.0)
    assert statuses(restarted)["resent-after-restart.dcm"] == "duplicate"


def test_a_restart_neither_reprocesses_nor_forgets_files(make_intake):
    intake = make_intake()
    inbox = intake.config.paths.inbox
    tiny_series(3).write(inbox)
    assert len(run(intake, 0.0, 1.0)) == 3
    restarted = make_intake()
    assert run(restarted, 0.0, 1.0, 2.0) == []
    tiny_series(1).write(inbox / "next")
    assert len(run(restarted, 3.0, 4.0)) == 1
    assert len(restarted.journal.entries()) == 4


@pytest.fixture
def make_streaming_intake(make_intake, config_for):
    """An Intake with a series store, as the appliance runs it."""
    from edge.stream.store import SeriesStore

    def make(**overrides):
        intake = make_intake(**overrides)
        intake.store = SeriesStore(intake.journal.conn)
        return intake

    return make


def events(intake, *times):
    return [e for t in times for e in settle(intake, t)]


def test_completion_is_reported_right_after_the_last_slice(make_streaming_intake):
    intake = make_streaming_intake()
    tiny_series(3).write(intake.config.paths.inbox)
    found = events(intake, 0.0, 1.0)
    assert [type(e) for e in found] == [Admitted] * 3 + [Completed]
    assert found[-1].series.completed_by == "expected count"
    assert intake.store.get(found[0].series.series_uid).status == "receiving"


def test_a_finished_series_is_forgotten_after_the_window(make_streaming_intake):
    intake = make_streaming_intake(series__forget_after_s=60.0)
    tiny_series(2).write(intake.config.paths.inbox)
    events(intake, 0.0, 1.0)
    assert events(intake, 30.0) == []
    (forgotten,) = events(intake, 62.0)
    assert isinstance(forgotten, Forgotten) and intake.assembler.series == {}


@pytest.mark.parametrize("how", ["restart", "forgotten"])
def test_a_late_slice_brings_its_series_back_and_reopens_it(make_streaming_intake, how):
    intake = make_streaming_intake(series__forget_after_s=60.0)
    inbox = intake.config.paths.inbox
    series = tiny_series(3)
    series.write(inbox)
    first = events(intake, 0.0, 1.0)
    uid = first[0].series.series_uid
    intake.store.analysed(uid, 1, "result-1", 2.0)
    if how == "restart":
        intake = make_streaming_intake(series__forget_after_s=60.0)
    else:
        assert isinstance(events(intake, 70.0)[-1], Forgotten)
    late = replace(series.planes[2], sop_uid="1.2.826.0.1.3680043.8.498.77",
                   position_mm=(-10.0, -10.0, 7.5), instance_number=4)
    series.planes.append(late)
    series.write(inbox, indices=[3])
    found = events(intake, 100.0, 101.0)
    restored, admitted = found[0], found[1]
    assert restored.admission is Admission.RESTORED and len(restored.slices) == 3
    assert restored.series.complete and restored.series.version == 1
    assert admitted.admission is Admission.REOPENED and admitted.series.version == 2
    assert intake.store.get(uid).version == 2


def test_series_interrupted_by_a_restart_are_restored_at_start(make_streaming_intake):
    intake = make_streaming_intake()
    tiny_series(5).write(intake.config.paths.inbox, indices=[0, 1, 2])
    events(intake, 0.0, 1.0)
    restarted = make_streaming_intake()
    (restored,) = restarted.restore_unfinished(5.0)
    assert restored.admission is Admission.RESTORED and len(restored.slices) == 3
    assert not restored.series.complete
