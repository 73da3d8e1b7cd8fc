"""The SQLite journal and the quarantine folder."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime

import pytest

from edge.ingest.journal import FileSignature, Journal, JournalEntry
from edge.ingest.quarantine import REASON_SUFFIX, quarantine, quarantined_files

NOW = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)


def test_journal_survives_reopening_and_uses_wal(tmp_path):
    journal = Journal(tmp_path)
    journal.record(JournalEntry("/in/a.dcm", FileSignature(10, 20), "accepted", "1.2.3", "1.2",
                                1), 1000.0)
    journal.close()
    reopened = Journal(tmp_path)
    assert reopened.signatures() == {"/in/a.dcm": FileSignature(10, 20)}
    assert reopened.accepted_with_uid("1.2.3").frames == 1
    mode = reopened.conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_journal_keeps_one_row_per_path_with_the_latest_outcome(tmp_path):
    journal = Journal(tmp_path)
    journal.record(JournalEntry("/in/a.dcm", FileSignature(10, 20), "accepted", "1.2.3"), 1.0)
    journal.record(JournalEntry("/in/a.dcm", FileSignature(11, 21), "quarantined",
                                reason="bad"), 2.0)
    (entry,) = journal.entries()
    assert entry.status == "quarantined" and entry.signature == FileSignature(11, 21)
    assert journal.accepted_with_uid("1.2.3") is None


def test_journal_refuses_an_unknown_status(tmp_path):
    with pytest.raises(ValueError):
        Journal(tmp_path).record(JournalEntry("/x", FileSignature(1, 1), "lost"), 1.0)
    with pytest.raises(sqlite3.IntegrityError):  # and so does the table itself
        Journal(tmp_path).conn.execute(
            "INSERT INTO instances (path, size, mtime_ns, status, recorded_at) "
            "VALUES ('/x', 1, 1, 'lost', 1)")


def test_quarantine_moves_the_file_and_writes_its_reason_beside_it(tmp_path):
    inbox, jail = tmp_path / "inbox", tmp_path / "quarantine"
    inbox.mkdir()
    bad = inbox / "IM0001"
    bad.write_bytes(b"not dicom")
    moved = quarantine(bad, "not a DICOM Part 10 file", jail, NOW)
    assert not bad.exists()
    assert moved.path.read_bytes() == b"not dicom"
    info = json.loads(moved.path.with_name(moved.path.name + REASON_SUFFIX).read_text())
    assert info == {"original_path": str(bad), "reason": "not a DICOM Part 10 file",
                    "quarantined_at": "2026-11-23T09:30:00+00:00"}
    assert [q.reason for q in quarantined_files(jail)] == ["not a DICOM Part 10 file"]


def test_quarantine_never_overwrites_an_earlier_file_of_the_same_name(tmp_path):
    jail = tmp_path / "quarantine"
    for content in (b"first", b"second"):
        (tmp_path / "IM0001").write_bytes(content)
        quarantine(tmp_path / "IM0001", "bad", jail, NOW)
    assert sorted(q.path.read_bytes() for q in quarantined_files(jail)) == [b"first", b"second"]
