"""The sandboxed reader pool: a hostile file costs one worker, never the caller."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from edge.ingest import workers
from edge.ingest.reader import ReadLimits
from edge.ingest.workers import ReaderPool
from tests.factories import deflate_bomb, tiny_series


def _reader_workers() -> list[int]:
    """PIDs of this process's reader workers: the forkserver's children, from /proc."""
    parents = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        parents[int(pid)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmdline)
    forkservers = {pid for pid, (ppid, cmd) in parents.items()
                   if ppid == os.getpid() and b"forkserver" in cmd}
    return [pid for pid, (ppid, _) in parents.items() if ppid in forkservers]


def test_reads_a_good_file_into_slices(reader_pool, tmp_path):
    path = tiny_series(1).write(tmp_path)[0]
    outcome = reader_pool.read(str(path))
    assert outcome.rejection is None
    assert outcome.slices[0].header.modality == "CT"
    # native pixels are read in this process, from the file the worker checked
    np.testing.assert_array_equal(outcome.slices[0].stored, dcmread(path).pixel_array)


def test_a_file_that_never_finishes_parsing_times_out_and_the_pool_carries_on(tmp_path):
    stuck = tmp_path / "stuck.dcm"
    os.mkfifo(stuck)  # open() blocks forever: a stand-in for an endless parse
    good = tiny_series(1).write(tmp_path)[0]
    with ReaderPool(workers=1, timeout_s=1.0) as pool:
        started = time.monotonic()
        outcome = pool.read(str(stuck))
        assert time.monotonic() - started < 10
        assert outcome.rejection.kind == "invalid"
        assert "longer than 1 s" in outcome.rejection.reason
        assert pool.read(str(good)).rejection is None


def test_a_file_needing_more_memory_than_the_limit_is_rejected_not_fatal(tmp_path):
    source = tiny_series(1).write(tmp_path)[0]
    bomb = deflate_bomb(source, tmp_path / "bomb.dcm", inflated_bytes=1536 << 20)
    limits = ReadLimits(max_inflated_bytes=8 << 30)  # let it expand: the rlimit must stop it
    with ReaderPool(workers=1, memory_bytes=1 << 30, limits=limits) as pool:
        outcome = pool.read(str(bomb))
        assert outcome.rejection.kind == "invalid"
        assert "memory" in outcome.rejection.reason
        assert pool.read(str(source)).rejection is None


def test_a_worker_killed_mid_file_is_reported_against_that_file(tmp_path):
    stuck = tmp_path / "stuck.dcm"
    os.mkfifo(stuck)
    others = set(_reader_workers())  # the forkserver, and so its children, are shared
    with ReaderPool(workers=1, timeout_s=60) as pool:
        pending = pool.submit(str(stuck))
        deadline = time.monotonic() + 20
        while not (workers := sorted(set(_reader_workers()) - others)):
            assert time.monotonic() < deadline, "no reader worker started"
            time.sleep(0.05)
        time.sleep(0.5)  # let it reach the blocking open()
        assert not pending.done()
        os.kill(workers[0], signal.SIGKILL)
        outcome = pending.result(timeout=30)
        assert outcome.rejection.kind == "invalid"
        assert "died while parsing this file (signal SIGKILL)" in outcome.rejection.reason


class _Unsendable(BaseException):
    """Like pyo3's PanicException: not an Exception, and it cannot be pickled back."""

    def __reduce__(self):
        raise TypeError("cannot be pickled")


def _escape(path, limits):
    raise _Unsendable("index out of bounds: the len is 8192 but the index is 8193")


def test_an_escape_from_the_worker_costs_that_file_not_the_caller(tmp_path, monkeypatch):
    # Found in session 57: a decoder's BaseException passed read_outcome's net and could not
    # be pickled, so the Future raised the pickling error into the intake thread.
    good = tiny_series(1).write(tmp_path)[0]
    with ReaderPool(workers=1) as pool:
        with monkeypatch.context() as patched:
            patched.setattr(workers, "read_outcome", _escape)  # the worker imports this module
            outcome = pool.read(str(good))
        assert outcome.rejection.kind == "invalid"
        assert outcome.rejection.reason.startswith("the reader process failed unexpectedly")
        assert pool.read(str(good)).rejection is None


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_paths_become_values_not_exceptions(reader_pool, tmp_path, kind):
    path = tmp_path / "nothing.dcm"
    if kind == "directory":
        path.mkdir()
    outcome = reader_pool.read(str(path))
    assert outcome.rejection.kind == ("gone" if kind == "missing" else "incomplete")
