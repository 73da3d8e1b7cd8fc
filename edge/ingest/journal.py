"""The journal: every file the appliance has finished with, and what became of it.

One row per inbox path, keyed by the path and the size and modification time it had when
read, so a restart neither reprocesses a file nor forgets one, and a file replaced at the
same path is read again. SOPInstanceUIDs are indexed for duplicate detection across
restarts.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from edge.state import connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    path              TEXT PRIMARY KEY,
    size              INTEGER NOT NULL,
    mtime_ns          INTEGER NOT NULL,
    status            TEXT NOT NULL
        CHECK (status IN ('accepted', 'duplicate', 'conflict', 'quarantined', 'gone')),
    sop_instance_uid  TEXT,
    series_uid        TEXT,
    frames            INTEGER,
    reason            TEXT,
    recorded_at       REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_sop ON instances (sop_instance_uid);
CREATE INDEX IF NOT EXISTS instances_series ON instances (series_uid);
"""

STATUSES = ("accepted", "duplicate", "conflict", "quarantined", "gone")


@dataclass(frozen=True)
class FileSignature:
    """What identifies one version of a file at a path."""

    size: int
    mtime_ns: int


@dataclass(frozen=True)
class JournalEntry:
    path: str
    signature: FileSignature
    status: str
    sop_instance_uid: str | None = None
    series_uid: str | None = None
    frames: int | None = None
    reason: str | None = None


class Journal:
    """SQLite-backed record of finished files. One instance per thread."""

    def __init__(self, state_dir: Path):
        self.conn: sqlite3.Connection = connect(state_dir, SCHEMA)

    def record(self, entry: JournalEntry, recorded_at: float) -> None:
        """Store (or replace) what became of one file; durable when this returns."""
        if entry.status not in STATUSES:
            raise ValueError(f"journal status {entry.status!r} is not one of {STATUSES}")
        self.conn.execute(
            "INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (entry.path, entry.signature.size, entry.signature.mtime_ns, entry.status,
             entry.sop_instance_uid, entry.series_uid, entry.frames, entry.reason,
             recorded_at))

    def signatures(self) -> dict[str, FileSignature]:
        """Every finished path with the signature it had: what a rescan may skip."""
        rows = self.conn.execute("SELECT path, size, mtime_ns FROM instances")
        return {r["path"]: FileSignature(r["size"], r["mtime_ns"]) for r in rows}

    def accepted_with_uid(self, sop_instance_uid: str) -> JournalEntry | None:
        """The accepted file carrying this SOPInstanceUID, if any."""
        row = self.conn.execute(
            "SELECT * FROM instances WHERE sop_instance_uid = ? AND status = 'accepted'",
            (sop_instance_uid,)).fetchone()
        return None if row is None else _entry(row)

    def entries(self, series_uid: str | None = None) -> list[JournalEntry]:
        """All entries, or those of one series, oldest first."""
        if series_uid is None:
            rows = self.conn.execute("SELECT * FROM instances ORDER BY recorded_at")
        else:
            rows = self.conn.execute("SELECT * FROM instances WHERE series_uid = ? "
                                     "ORDER BY recorded_at", (series_uid,))
        return [_entry(r) for r in rows]

    def close(self) -> None:
        self.conn.close()


def _entry(row: sqlite3.Row) -> JournalEntry:
    return JournalEntry(row["path"], FileSignature(row["size"], row["mtime_ns"]), row["status"],
                        row["sop_instance_uid"], row["series_uid"], row["frames"],
                        row["reason"])
