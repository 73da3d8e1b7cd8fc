"""The outbox: every alert and result is stored before it is sent, and marked sent only
when the broker acknowledges it. A crash or a broker outage loses nothing: unsent
messages are sent again after a reconnect or a restart, under the same ids.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from edge.delivery.payloads import Message
from edge.state import transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    message_id  TEXT PRIMARY KEY,
    topic       TEXT NOT NULL,
    payload     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    series_uid  TEXT,
    qos         INTEGER NOT NULL,
    retain      INTEGER NOT NULL,
    created_at  REAL NOT NULL,
    sent_at     REAL
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (created_at) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_series ON outbox (series_uid, kind);
"""


@dataclass(frozen=True)
class Stored:
    message: Message
    created_at: float
    sent_at: float | None


class Outbox:
    """The outbox table, on one connection (one per thread)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        conn.executescript(SCHEMA)

    def add(self, message: Message, now: float) -> bool:
        """Store a message; False if one with its id is already there. Durable on return
        unless the caller holds a transaction open."""
        cursor = self.conn.execute(
            "INSERT OR IGNORE INTO outbox VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
            (message.message_id, message.topic, message.payload, message.kind,
             message.series_uid, message.qos, int(message.retain), now))
        return cursor.rowcount == 1

    def unsent(self, limit: int, skip: set[str] = frozenset()) -> list[Message]:
        """The oldest unsent messages, leaving out those in `skip` (already in flight)."""
        rows = self.conn.execute(
            "SELECT * FROM outbox WHERE sent_at IS NULL ORDER BY created_at, rowid LIMIT ?",
            (limit + len(skip),)).fetchall()
        return [m for m in map(_message, rows) if m.message_id not in skip][:limit]

    def mark_sent(self, message_ids: Sequence[str], now: float) -> None:
        """Record these messages as acknowledged by the broker, all in one commit."""
        with transaction(self.conn):
            self.conn.executemany(
                "UPDATE outbox SET sent_at = ? WHERE message_id = ? AND sent_at IS NULL",
                [(now, message_id) for message_id in message_ids])

    def backlog(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0]

    def of_series(self, series_uid: str, kind: str | None = None) -> list[dict]:
        """Payloads already stored about a series (of one kind), oldest first."""
        query = "SELECT payload FROM outbox WHERE series_uid = ?"
        args: tuple = (series_uid,)
        if kind:
            query, args = query + " AND kind = ?", (*args, kind)
        return [json.loads(r[0]) for r in self.conn.execute(query + " ORDER BY created_at", args)]

    def recent(self, kinds: tuple[str, ...], limit: int) -> list[Stored]:
        marks = ",".join("?" * len(kinds))
        rows = self.conn.execute(f"SELECT * FROM outbox WHERE kind IN ({marks}) "
                                 "ORDER BY created_at DESC LIMIT ?", (*kinds, limit))
        return [Stored(_message(r), r["created_at"], r["sent_at"]) for r in rows]


def _message(row: sqlite3.Row) -> Message:
    return Message(row["message_id"], row["topic"], row["payload"], row["kind"],
                   row["series_uid"], row["qos"], bool(row["retain"]))
