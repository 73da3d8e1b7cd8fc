"""Crash consistency: SIGKILL at random moments while 20 series stream in.

CI kills the appliance 30 times; `make torture` (SCANSIDE_TORTURE=1) 200 times. After the
last restart every series must be analysed, every result delivered (copies carry the
same id), no input file changed or deleted, and SQLite must pass integrity_check.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time

import pytest

from edge.simulator import play
from edge.state import DB_NAME
from tests.appliance import ApplianceProcess, digests
from tests.factories import tiny_series
from tests.mqtt import Mosquitto, Subscriber, needs_mosquitto

TORTURE = os.environ.get("SCANSIDE_TORTURE") == "1"
KILLS = 200 if TORTURE else 30
SERIES = 20
pytestmark = [needs_mosquitto, pytest.mark.broker, pytest.mark.slow]


def test_random_kills_lose_nothing_and_duplicate_nothing(tmp_path, tiny_zoo):
    source = tmp_path / "source"
    expected = {}
    for i in range(SERIES):
        series = tiny_series(8, "PT")
        series.write(source / f"s{i:02d}")
        expected[series.identity.series_uid] = 8
    broker = Mosquitto(tmp_path).start()
    (tmp_path / "appliance").mkdir()
    app = ApplianceProcess(tmp_path / "appliance", broker.url, tiny_zoo, keepalive_s=2)
    subscriber = Subscriber(broker.port, f"{app.prefix}/#")
    rng = random.Random(20261123)
    rate = 40.0 if TORTURE else 2.5           # files per second: kills land mid-stream

    def feed():
        for folder in sorted(source.iterdir()):
            for _ in play(sorted(folder.iterdir()), app.inbox, rate, folder.name):
                pass

    try:
        app.start()
        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.5, 4.0))
            app.kill()
            app.start()
        feeder.join()
        subscriber.wait_for(lambda s: {r["series_uid"] for r in s.on("/results")}
                            >= set(expected), timeout=300)
        time.sleep(2)
        assert app.terminate() == 0
        results = subscriber.on("/results")
        by_series: dict[str, set] = {}
        for result in results:
            by_series.setdefault(result["series_uid"], set()).add(result["result_id"])
            assert result["version"] == 1 and result["status"] != "failed", result
            assert result["n_slices"] == expected[result["series_uid"]]
        assert set(by_series) == set(expected)
        assert all(len(ids) == 1 for ids in by_series.values())      # copies share the id
        assert digests(app.inbox) == digests(source)          # every input untouched
        with sqlite3.connect(app.state / DB_NAME) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            accepted = db.execute("SELECT COUNT(*) FROM instances WHERE status = 'accepted'")
            assert accepted.fetchone()[0] == SERIES * 8
            assert db.execute("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL"
                              ).fetchone()[0] == 0
        assert not (app.state / "quarantine").exists() or not any(
            (app.state / "quarantine").iterdir())
    finally:
        subscriber.close()
        if app.process.poll() is None:
            app.kill()
        broker.stop()
