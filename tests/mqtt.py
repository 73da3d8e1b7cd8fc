"""Real MQTT parts for tests: a Mosquitto broker on a free port, and a subscriber."""

from __future__ import annotations

import getpass
import json
import random
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

needs_mosquitto = pytest.mark.skipif(shutil.which("mosquitto") is None,
                                     reason="mosquitto is not installed (make deps installs it)")


def free_port() -> int:
    """A port free now, for a server this test starts next. Drawn below the kernel's
    ephemeral range: a port from that range (what binding port 0 gives) can be taken as
    the source port of any outgoing connection before the server gets to bind it."""
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range")
    first = int(ephemeral.read_text().split()[0]) if ephemeral.exists() else 32768
    for port in random.sample(range(10_000, first), 100):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port between 10000 and {first}")


class Mosquitto:
    """A Mosquitto process on 127.0.0.1:port that a test can stop and start again."""

    def __init__(self, folder: Path, port: int | None = None, persistent: bool = False):
        """`persistent`: sessions, queued and retained messages survive a clean restart
        (Mosquitto saves them on SIGTERM)."""
        self.port = port or free_port()
        self.config = folder / "mosquitto.conf"
        persistence = (f"persistence true\npersistence_location {folder}/\n" if persistent
                       else "persistence false\n")
        # Started as root, Mosquitto switches to the `mosquitto` user, which cannot write
        # its database into a test's private folder: keep it as whoever runs the tests.
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                               f"user {getpass.getuser()}\n"
                               f"{persistence}max_inflight_messages 100\n")
        self.log = folder / "mosquitto.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        self.process = subprocess.Popen(["mosquitto", "-c", str(self.config)],
                                        stdout=self.log.open("a"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log.read_text()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


class Subscriber:
    """Subscribes to a topic filter and keeps every message, with its arrival time."""

    def __init__(self, port: int, topic: str, username: str | None = None,
                 password: str | None = None, ca_file: Path | None = None,
                 session: str | None = None, delay_s: float = 0.0):
        """`session`: a client id with a persistent session (messages queue at the broker
        while it is away); `delay_s`: time spent on each message (a slow consumer)."""
        self.messages: list[tuple[str, dict, bool, float]] = []
        self._lock = threading.Lock()
        self.delay_s = delay_s
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=session or "",
                                  clean_session=session is None)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        if username:
            self.client.username_pw_set(username, password)
        if ca_file:
            self.client.tls_set(ca_certs=str(ca_file))
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        time.sleep(self.delay_s)
        with self._lock:
            self.messages.append((message.topic, json.loads(message.payload), message.retain,
                                  time.monotonic()))

    def on(self, suffix: str) -> list[dict]:
        with self._lock:
            return [payload for topic, payload, _, _ in self.messages if topic.endswith(suffix)]

    def wait_for(self, condition, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition(self):
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out; received {[(t, p) for t, p, _, _ in self.messages]}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
