"""Broker faults: restarted again and again while results are being delivered, away for
a whole scan (tests/system/test_appliance.py), and a consumer too slow to keep up.
Nothing is lost, and the retained status tells the truth once the broker is back."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from edge.simulator import play
from edge.state import DB_NAME
from tests.appliance import ApplianceProcess, watch
from tests.factories import tiny_series
from tests.mqtt import Mosquitto, Subscriber, needs_mosquitto

pytestmark = [needs_mosquitto, pytest.mark.broker]


def stream(app: ApplianceProcess, tmp_path, n: int, rate: float = 40.0) -> set[str]:
    """`n` tiny PET series played into the inbox at `rate` files/s; their series UIDs."""
    uids = set()
    for i in range(n):
        series = tiny_series(8, "PT")
        files = series.write(tmp_path / "source" / f"s{i}")
        for _ in play(files, app.inbox, rate, f"s{i}"):
            pass
        uids.add(series.identity.series_uid)
    return uids


def unsent(app: ApplianceProcess) -> int:
    with sqlite3.connect(app.state / DB_NAME) as db:
        return db.execute("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0]


def sent_ids(app: ApplianceProcess) -> set[str]:
    with sqlite3.connect(app.state / DB_NAME) as db:
        return {row[0] for row in db.execute("SELECT message_id FROM outbox")}


@pytest.mark.slow
def test_a_broker_restarted_again_and_again_mid_delivery_loses_nothing(tmp_path, tiny_zoo):
    broker = Mosquitto(tmp_path, persistent=True).start()
    app = ApplianceProcess(tmp_path, broker.url, tiny_zoo, keepalive_s=2).start()
    # A persistent session: what the broker accepted while this consumer was cut off
    # waits for it, so anything missing below was lost by the appliance.
    subscriber = Subscriber(broker.port, f"{app.prefix}/#", session="faults-test")
    restarts, stop = [0], threading.Event()

    def restart_broker() -> None:
        while not stop.wait(1.5):
            broker.stop()
            time.sleep(0.5)
            broker.start()
            restarts[0] += 1

    try:
        subscriber.wait_for(lambda s: any(p["state"] == "online" for p in s.on("/status")), 60)
        restarter = threading.Thread(target=restart_broker, daemon=True)
        restarter.start()
        expected = stream(app, tmp_path, 10, rate=12.0)
        time.sleep(3)
        stop.set()
        restarter.join()
        subscriber.wait_for(lambda s: {r["series_uid"] for r in s.on("/results")} >= expected,
                            120)
        deadline = time.monotonic() + 30
        while unsent(app) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert unsent(app) == 0
        received = {p.get("result_id") or p.get("alert_id") for p in
                    subscriber.on("/results") + subscriber.on("/alerts")}
        assert sent_ids(app) <= received            # every alert and result stored arrived
        assert restarts[0] >= 3
        fresh = Subscriber(broker.port, f"{app.prefix}/status")   # the retained status
        fresh.wait_for(lambda s: s.on("/status") and s.on("/status")[-1]["state"] == "online")
        fresh.close()
        assert app.terminate() == 0
        print(f"\n{restarts[0]} broker restarts; {len(received)} alerts and results delivered")
    finally:
        stop.set()
        subscriber.close()
        if app.process.poll() is None:
            app.kill()
        broker.stop()


def test_a_slow_consumer_does_not_hold_the_appliance_back(tmp_path, broker, appliance):
    app = appliance(tmp_path / "app").start()
    watch(broker, app).close()
    slow = Subscriber(broker.port, f"{app.prefix}/results", delay_s=0.5)
    try:
        expected = stream(app, tmp_path, 8)
        deadline = time.monotonic() + 60
        while (unsent(app) or len(sent_ids(app)) < len(expected)) and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        assert unsent(app) == 0
        assert len(slow.on("/results")) < len(expected)     # still reading, far behind
        slow.wait_for(lambda s: {r["series_uid"] for r in s.on("/results")} == expected, 60)
        assert app.terminate() == 0
    finally:
        slow.close()


def test_after_a_broker_restart_the_retained_status_is_the_appliance_state(tmp_path, broker,
                                                                          appliance):
    """A broker without persistence forgets retained messages: the appliance sets the
    status again on reconnecting, and a stopped appliance is reported offline."""
    app = appliance(tmp_path / "app").start()
    watch(broker, app).close()
    broker.stop()
    time.sleep(2)
    broker.start()
    fresh = Subscriber(broker.port, f"{app.prefix}/status")
    try:
        fresh.wait_for(lambda s: s.on("/status") and s.on("/status")[-1]["state"] == "online",
                       30)
        assert app.terminate() == 0
        fresh.wait_for(lambda s: s.on("/status")[-1]["state"] == "offline", 10)
    finally:
        fresh.close()
