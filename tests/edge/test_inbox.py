"""Which inbox files are offered for reading, and when."""

from __future__ import annotations

import os

from edge.ingest.inbox import Inbox, is_ignored
from edge.ingest.journal import FileSignature


def touch(path, content=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return str(path)


def test_ignored_names_are_partial_uploads_and_hidden_temporaries():
    patterns = ("*.part", ".*", "*.tmp", "*~")
    assert all(is_ignored(n, patterns) for n in ["IM1.dcm.part", ".IM1.swp", "x.tmp", "IM1~"])
    assert not any(is_ignored(n, patterns) for n in ["IM1.dcm", "IM1", "1.2.840.5.dcm"])


def test_a_file_is_offered_only_after_it_is_unchanged_for_the_stable_time(tmp_path):
    inbox = Inbox(tmp_path, ("*.part",), stable_s=2.0)
    path = touch(tmp_path / "IM1")
    assert inbox.ready(0.0) == []
    assert inbox.ready(1.9) == []
    assert [p for p, _ in inbox.ready(2.0)] == [path]


def test_a_change_restarts_the_stable_time(tmp_path):
    inbox = Inbox(tmp_path, (), stable_s=2.0)
    path = tmp_path / "IM1"
    touch(path)
    inbox.ready(0.0)
    path.write_bytes(b"longer now")
    assert inbox.ready(2.5) == []
    assert len(inbox.ready(4.5)) == 1


def test_part_file_is_ignored_until_renamed_into_place(tmp_path):
    inbox = Inbox(tmp_path, ("*.part",), stable_s=0.0)
    part = touch(tmp_path / "IM1.dcm.part")
    assert inbox.ready(0.0) == []
    os.rename(part, tmp_path / "IM1.dcm")
    assert [p for p, _ in inbox.ready(1.0)] == [str(tmp_path / "IM1.dcm")]


def test_finished_files_are_not_offered_again_unless_they_change(tmp_path):
    path = touch(tmp_path / "IM1")
    st = os.stat(path)
    inbox = Inbox(tmp_path, (), stable_s=0.0,
                  finished={path: FileSignature(st.st_size, st.st_mtime_ns)})
    assert inbox.ready(0.0) == []
    (tmp_path / "IM1").write_bytes(b"replaced by the scanner")
    assert len(inbox.ready(1.0)) == 1


def test_subfolders_are_scanned_but_symlinks_fifos_and_the_quarantine_are_not(tmp_path):
    nested = touch(tmp_path / "study" / "series" / "IM1")
    touch(tmp_path / "quarantine" / "IM9")
    os.symlink("/etc/hostname", tmp_path / "link")
    os.mkfifo(tmp_path / "pipe")
    inbox = Inbox(tmp_path, (), stable_s=0.0, skip=[tmp_path / "quarantine"])
    assert [p for p, _ in inbox.ready(0.0)] == [nested]


def test_retry_after_holds_a_file_back_until_then(tmp_path):
    inbox = Inbox(tmp_path, (), stable_s=0.0)
    path = touch(tmp_path / "IM1")
    inbox.ready(0.0)
    inbox.retry_after(path, 5.0)
    assert inbox.ready(4.0) == []
    assert len(inbox.ready(5.0)) == 1
