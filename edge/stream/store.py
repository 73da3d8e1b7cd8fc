"""Series state on disk: which version each series is at and whether it was analysed.

The intake marks a series version `receiving` when its first slice is admitted; the
inference thread marks it `analysed` in the same transaction that puts its result in the
outbox. A restart restores every series still `receiving` from the journal, and never
analyses an `analysed` version twice.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    series_uid  TEXT PRIMARY KEY,
    study_uid   TEXT NOT NULL,
    modality    TEXT NOT NULL,
    version     INTEGER NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('receiving', 'analysed')),
    result_id   TEXT,
    updated_at  REAL NOT NULL
);
"""


@dataclass(frozen=True)
class SeriesRecord:
    series_uid: str
    study_uid: str
    modality: str
    version: int
    status: str
    result_id: str | None
    updated_at: float


class SeriesStore:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        conn.executescript(SCHEMA)

    def receiving(self, series_uid: str, study_uid: str, modality: str, version: int,
                  now: float) -> None:
        self.conn.execute(
            "INSERT INTO series VALUES (?, ?, ?, ?, 'receiving', NULL, ?) "
            "ON CONFLICT (series_uid) DO UPDATE SET version = excluded.version, "
            "status = 'receiving', updated_at = excluded.updated_at",
            (series_uid, study_uid, modality, version, now))

    def analysed(self, series_uid: str, version: int, result_id: str, now: float) -> None:
        self.conn.execute("UPDATE series SET status = 'analysed', result_id = ?, updated_at = ? "
                          "WHERE series_uid = ? AND version = ?",
                          (result_id, now, series_uid, version))

    def get(self, series_uid: str) -> SeriesRecord | None:
        row = self.conn.execute("SELECT * FROM series WHERE series_uid = ?",
                                (series_uid,)).fetchone()
        return None if row is None else SeriesRecord(*row)

    def unfinished(self) -> list[SeriesRecord]:
        rows = self.conn.execute("SELECT * FROM series WHERE status = 'receiving' "
                                 "ORDER BY updated_at")
        return [SeriesRecord(*r) for r in rows]
