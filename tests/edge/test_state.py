"""The state database: stages that open it at the same moment all get a WAL connection."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from edge.state import connect


def _journal_mode(state):
    conn = connect(state, "CREATE TABLE IF NOT EXISTS t(x)")
    try:
        return conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()


def test_connections_racing_to_create_the_database_all_open_it_in_wal(tmp_path):
    for attempt in range(20):                        # the race is timing-dependent
        state = tmp_path / str(attempt)
        with ThreadPoolExecutor(8) as pool:
            modes = list(pool.map(_journal_mode, [state] * 8))
        assert modes == ["wal"] * 8
