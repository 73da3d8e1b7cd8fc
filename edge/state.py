"""The appliance's one SQLite database under the state directory.

WAL mode so readers (the status page) never block the writer; synchronous=FULL so a
committed journal row or outbox message survives a power cut, not only a crash. Each
stage that keeps state (journal, outbox) declares its own tables and opens its own
connection: sqlite3 connections belong to one thread.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DB_NAME = "scanside.sqlite3"


def connect(state_dir: Path, schema: str = "") -> sqlite3.Connection:
    """Open (creating if needed) the state database and ensure `schema` exists."""
    state_dir.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(state_dir / DB_NAME, timeout=30, isolation_level=None)
    conn.row_factory = sqlite3.Row
    _enter_wal(conn)
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    if schema:
        conn.executescript(schema)
    return conn


def _enter_wal(conn: sqlite3.Connection, wait_s: float = 30.0) -> None:
    """WAL is a property of the file, set once. Switching needs an exclusive lock and
    SQLite answers "database is locked" at once, without its busy wait, when two
    connections race to switch a new file, so retry here for as long as the busy wait."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """Everything inside is committed together or not at all (connections here are in
    autocommit mode, so `with conn:` alone would not group the statements)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
