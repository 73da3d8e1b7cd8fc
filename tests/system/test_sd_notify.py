"""sd_notify as systemd sees it: READY once the pipeline runs, STATUS lines, WATCHDOG
pings at a third of WatchdogSec, STOPPING on SIGTERM. The test plays systemd's part: a
datagram socket named by $NOTIFY_SOCKET."""

from __future__ import annotations

import contextlib
import socket
import time

import pytest

from tests.appliance import watch
from tests.mqtt import needs_mosquitto

pytestmark = [needs_mosquitto, pytest.mark.broker]


def test_ready_status_watchdog_and_stopping_reach_the_notify_socket(tmp_path, broker,
                                                                     appliance):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    app = appliance(tmp_path / "app").start(env={"NOTIFY_SOCKET": str(path),
                                                 "WATCHDOG_USEC": "3000000"})
    received: list[tuple[float, str]] = []

    def collect(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                received.append((time.monotonic(), sock.recv(4096).decode()))

    try:
        watch(broker, app).close()
        collect(7)
        app.process.send_signal(15)
        collect(3)
        assert app.process.wait(60) == 0
    finally:
        sock.close()
    messages = [m for _, m in received]
    assert "READY=1" in messages
    assert any(m.startswith("STATUS=online") for m in messages)
    pings = [t for t, m in received if m == "WATCHDOG=1"]
    assert len(pings) >= 3                              # ~1 per second for 3 s WatchdogSec
    assert max(b - a for a, b in zip(pings, pings[1:], strict=False)) < 3.0
    assert "STOPPING=1" in messages
    assert messages.index("READY=1") < messages.index("STOPPING=1")
