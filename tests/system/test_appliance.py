"""The appliance end to end: real process, real Mosquitto, real files, real faults."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from datetime import datetime

import pytest

from edge.simulator import play, series_files
from tests.appliance import digests, truth_uid, watch
from tests.mqtt import Subscriber, needs_mosquitto

pytestmark = [needs_mosquitto, pytest.mark.broker]


def analyze(zoo, *folders) -> dict:
    out = subprocess.run([sys.executable, "-m", "edge", "analyze", *map(str, folders),
                          "--zoo", str(zoo), "--json"], capture_output=True, text=True,
                         check=True, timeout=300).stdout
    return {s["series_uid"]: s for s in json.loads(out)["series"]}


def test_streamed_series_give_the_results_batch_analysis_gives(broker, appliance, pet_cases,
                                                                tiny_zoo):
    app = appliance().start()
    subscriber = watch(broker, app)
    try:
        last_landed = {}
        for folder in pet_cases:
            for _ in play(series_files(folder, "shuffled"), app.inbox, 60.0, folder.name):
                pass
            last_landed[truth_uid(folder)] = time.time()
        subscriber.wait_for(lambda s: len(s.on("/results")) == len(pet_cases), 120)
        batch = analyze(tiny_zoo, *pet_cases)
        for result in subscriber.on("/results"):
            expected = batch[result["series_uid"]]
            assert (result["status"], result["findings"]) == (expected["status"],
                                                              expected["findings"])
            assert result["version"] == 1 and result["supersedes"] is None
            assert result["completed_by"] == "expected count"
            completed = datetime.fromisoformat(result["completed_at"])
            assert last_landed[result["series_uid"]] - 0.002 <= completed.timestamp()
            assert completed <= datetime.fromisoformat(result["analysed_at"])
        for alert in subscriber.on("/alerts"):
            if alert["kind"] == "final":
                provisional = {a["alert_id"] for a in subscriber.on("/alerts")
                               if a["kind"] == "provisional"
                               and a["series_uid"] == alert["series_uid"]}
                assert set(alert["supersedes"]) >= provisional
        assert app.terminate() == 0
        subscriber.wait_for(lambda s: s.on("/status")[-1]["state"] == "offline")
    finally:
        subscriber.close()


def test_a_status_page_port_in_use_stops_the_appliance_naming_the_address(appliance):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = appliance(listen=f"127.0.0.1:{port}").start()
        assert app.process.wait(timeout=60) == 2
    output = app.output()
    assert f"[web] listen = '127.0.0.1:{port}'" in output and "in use" in output
    assert "running" not in output


def test_a_restart_analyses_nothing_twice(broker, appliance, pet_cases):
    app = appliance().start()
    subscriber = watch(broker, app)
    try:
        for _ in play(series_files(pet_cases[0]), app.inbox, 100.0, "s0"):
            pass
        subscriber.wait_for(lambda s: len(s.on("/results")) == 1, 120)
        assert app.terminate() == 0
        app.start()
        subscriber.wait_for(lambda s: s.on("/status")[-1]["state"] == "online", 60)
        time.sleep(4)                          # two rescans
        assert len(subscriber.on("/results")) == 1
    finally:
        subscriber.close()


def test_sigkill_mid_series_loses_nothing_and_repeats_only_with_the_same_ids(
        broker, appliance, pet_cases):
    app = appliance(keepalive_s=2).start()
    subscriber = watch(broker, app)
    files = series_files(pet_cases[1])
    try:
        for _ in play(files[:len(files) // 2], app.inbox, 100.0, "s1"):
            pass
        time.sleep(1.5)
        killed_at = time.monotonic()
        app.kill()
        subscriber.wait_for(lambda s: s.on("/status")[-1]["state"] == "offline", 10)
        offline_after = [t for topic, p, _, t in subscriber.messages
                         if topic.endswith("/status") and p["state"] == "offline"][-1] - killed_at
        assert offline_after <= 1.5 * 2 + 1.0      # Last Will: ~1.5 x keep-alive
        before = digests(app.inbox)
        app.start()
        for _ in play(files[len(files) // 2:], app.inbox, 100.0, "s1"):
            pass
        subscriber.wait_for(lambda s: len(s.on("/results")) >= 1, 120)
        time.sleep(2)
        results = subscriber.on("/results")
        assert {r["series_uid"] for r in results} == {truth_uid(pet_cases[1])}
        assert len({r["result_id"] for r in results}) == 1
        assert results[0]["n_slices"] == len(files)
        after = digests(app.inbox)
        assert {k: after[k] for k in before} == before     # no input file changed
    finally:
        subscriber.close()


@pytest.mark.slow
def test_a_broker_down_for_30_s_during_a_scan_loses_nothing(broker, appliance, pet_cases):
    app = appliance().start()
    subscriber = watch(broker, app)
    subscriber.close()
    try:
        broker.stop()
        for folder in pet_cases[:2]:
            for _ in play(series_files(folder), app.inbox, 60.0, folder.name):
                pass
        time.sleep(30)
        broker.start()
        subscriber = Subscriber(broker.port, f"{app.prefix}/#")
        expected = {truth_uid(f) for f in pet_cases[:2]}
        subscriber.wait_for(lambda s: {r["series_uid"] for r in s.on("/results")} == expected,
                            90)
        assert app.terminate() == 0
    finally:
        subscriber.close()


def test_slices_gone_from_the_inbox_during_a_restart_make_the_series_failed(
        broker, appliance, pet_cases):
    """Half a series arrives, the appliance stops, the first file is removed (read or
    not yet): after the restart the series cannot be analysed whole, and says so, never
    "negative"."""
    app = appliance().start()
    subscriber = watch(broker, app)
    files = series_files(pet_cases[2])
    try:
        for _ in play(files[:len(files) // 2], app.inbox, 100.0, "s2"):
            pass
        time.sleep(1.5)
        assert app.terminate() == 0
        (app.inbox / "s2" / files[0].name).unlink()          # e.g. a router cleaning up
        app.start()
        for _ in play(files[len(files) // 2:], app.inbox, 100.0, "s2"):
            pass
        subscriber.wait_for(lambda s: len(s.on("/results")) == 1, 120)
        (result,) = subscriber.on("/results")
        assert result["status"] == "failed"
        assert ("no longer in the inbox" in result["reason"]            # journaled, gone
                or "only 82 of the 83 slices" in result["reason"])      # never read
        assert app.terminate() == 0
    finally:
        subscriber.close()
