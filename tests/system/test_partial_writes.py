"""Partial writes: how scanners and network shares really deliver files. Slow chunks,
pre-allocated files filled in later, renames into place, slices out of order and twice.
No series is analysed before it is whole, and every one is analysed once."""

from __future__ import annotations

import random
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from edge.simulator import play
from edge.state import DB_NAME
from tests.appliance import watch
from tests.factories import tiny_series
from tests.mqtt import needs_mosquitto

pytestmark = [needs_mosquitto, pytest.mark.broker]
SLICES = 8


def in_slow_chunks(files: list[Path], folder: Path) -> None:
    """Each file in three chunks, 0.3 s apart: longer than the appliance's stable time."""
    for source in files:
        data = source.read_bytes()
        with open(folder / source.name, "wb") as out:
            for start in range(0, len(data), len(data) // 3 + 1):
                out.write(data[start:start + len(data) // 3 + 1])
                out.flush()
                time.sleep(0.3)


def preallocated(files: list[Path], folder: Path) -> None:
    """Each file created full-size as zeros, then filled in place 0.5 s later."""
    for source in files:
        data = source.read_bytes()
        target = folder / source.name
        target.write_bytes(bytes(len(data)))
        time.sleep(0.5)
        with open(target, "r+b") as out:
            out.write(data)


def renamed(files: list[Path], folder: Path) -> None:
    """Written as `name.part`, renamed into place (what `scanside simulate-scanner` does)."""
    for _ in play(files, folder.parent, 10.0, folder.name):
        pass


def out_of_order(files: list[Path], folder: Path) -> None:
    for source in random.Random(7).sample(files, len(files)):
        shutil.copyfile(source, folder / source.name)
        time.sleep(0.1)


def twice(files: list[Path], folder: Path) -> None:
    """Every slice delivered twice under two names (a resend after a timeout)."""
    for source in files:
        shutil.copyfile(source, folder / source.name)
        time.sleep(0.1)
        shutil.copyfile(source, folder / f"resent-{source.name}")


DELIVERIES = [in_slow_chunks, preallocated, renamed, out_of_order, twice]


def test_no_series_is_analysed_before_it_is_whole_and_each_once(tmp_path, broker, appliance):
    series = {}
    for delivery in DELIVERIES:
        made = tiny_series(SLICES, "PT")
        series[delivery.__name__] = (made, made.write(tmp_path / "source" / delivery.__name__))
    app = appliance(tmp_path / "app").start()
    subscriber = watch(broker, app)
    try:
        writers = []
        for delivery in DELIVERIES:
            folder = app.inbox / delivery.__name__
            folder.mkdir(parents=True)
            writers.append(threading.Thread(target=delivery,
                                             args=(series[delivery.__name__][1], folder)))
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
        expected = {made.identity.series_uid: name for name, (made, _) in series.items()}
        subscriber.wait_for(lambda s: {r["series_uid"] for r in s.on("/results")}
                            >= set(expected), 120)
        time.sleep(3)                    # a quiet period more: anything late would show
        assert app.terminate() == 0
        results = subscriber.on("/results")
        assert sorted(expected[r["series_uid"]] for r in results) == sorted(expected.values())
        for result in results:
            assert result["status"] != "failed", (expected[result["series_uid"]], result)
            assert (result["version"], result["n_slices"]) == (1, SLICES), \
                expected[result["series_uid"]]
        assert not (app.state / "quarantine").exists() or not any(
            (app.state / "quarantine").iterdir())
        with sqlite3.connect(app.state / DB_NAME) as db:
            counts = dict(db.execute("SELECT status, COUNT(*) FROM instances GROUP BY status"))
        assert counts == {"accepted": SLICES * len(DELIVERIES), "duplicate": SLICES}
    finally:
        subscriber.close()
