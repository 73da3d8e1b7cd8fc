"""The publisher: one persistent MQTT connection that empties the outbox.

paho-mqtt 2.x runs the network thread and reconnects with back-off; this module's pump
thread sends the oldest unsent outbox messages (QoS 1, at most `max_inflight` awaiting
acknowledgement) and marks each sent only when its PUBACK arrives. On a disconnect the
messages in flight are simply sent again after the reconnect: their ids are
deterministic, so a copy is recognisable. The retained status topic is set on every
connect, and is the Last Will, so a crash shows `offline`.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

from edge.delivery.outbox import Outbox
from edge.delivery.payloads import Message
from edge.errors import ConfigError
from edge.state import connect

log = logging.getLogger("scanside.publisher")


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """`mqtt://host[:1883]` or `mqtts://host[:8883]`."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(f"broker URL {url!r}: expected mqtt://HOST[:PORT] or "
                          "mqtts://HOST[:PORT]")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as error:
        raise ConfigError(f"broker URL {url!r}: {error}") from None
    return BrokerAddress(parts.hostname, port, tls)


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


class Publisher:
    """Owns the broker connection. `notify()` after adding to the outbox."""

    def __init__(self, state_dir: Path, address: BrokerAddress, client_id: str,
                 online: Callable[[], Message], will: Message,
                 credentials: Credentials = Credentials(), keepalive_s: int = 30,
                 max_inflight: int = 32, on_sent: Callable[[str], None] | None = None):
        self.state_dir, self.address, self.max_inflight = state_dir, address, max_inflight
        self.online, self.will = online, will
        self.on_sent = on_sent or (lambda message_id: None)
        self.connected = threading.Event()
        self.last_error: str | None = None
        self.sent = 0
        self._wake = threading.Event()
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._inflight: dict[int, str] = {}          # mid -> message id (pump thread only)
        self._acknowledged: list[str] = []           # acked, not yet recorded in the outbox
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                   clean_session=True, protocol=mqtt.MQTTv311)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.max_inflight_messages_set(max_inflight)
        self._client.will_set(will.topic, will.payload, qos=1, retain=True)
        self.keepalive_s = keepalive_s
        self._secure(credentials)
        self._pump_thread = threading.Thread(target=self._pump, name="publisher", daemon=True)

    def _secure(self, c: Credentials) -> None:
        if c.username:
            password = c.password_file.read_text().strip() if c.password_file else None
            self._client.username_pw_set(c.username, password)
        if self.address.tls:
            self._client.tls_set(ca_certs=str(c.ca_file) if c.ca_file else None,
                                 certfile=str(c.cert_file) if c.cert_file else None,
                                 keyfile=str(c.key_file) if c.key_file else None,
                                 cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)

    def start(self) -> None:
        self._client.connect_async(self.address.host, self.address.port, self.keepalive_s)
        self._client.loop_start()
        self._pump_thread.start()

    def notify(self) -> None:
        """Something was added to the outbox: send it now."""
        self._wake.set()

    def set_status(self, message: Message) -> None:
        """Publish the retained status now (it is also set on every connect)."""
        if self.connected.is_set():
            self._client.publish(message.topic, message.payload, qos=1, retain=True)

    def alive(self) -> bool:
        return self._pump_thread.is_alive()

    def stop(self, drain_s: float = 10.0, offline: Message | None = None) -> int:
        """Send what the outbox holds (up to `drain_s`), publish `offline`, disconnect.
        Returns the number of messages left unsent (they go out after the next start)."""
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline and self.connected.is_set() and self.backlog():
            self._wake.set()
            time.sleep(0.05)
        left = self.backlog()
        self._stop.set()
        self._wake.set()
        self._pump_thread.join(timeout=5)
        if offline is not None and self.connected.is_set():
            info = self._client.publish(offline.topic, offline.payload, qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):   # unacknowledged: the Will
                info.wait_for_publish(timeout=min(3.0, max(0.1, deadline - time.monotonic())))
        self._client.disconnect()
        self._client.loop_stop()
        return left

    def backlog(self) -> int:
        with contextlib.closing(connect(self.state_dir)) as conn:
            return Outbox(conn).backlog()

    # paho's network thread -------------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.last_error = f"broker refused the connection: {reason_code}"
            log.error("%s (%s)", self.last_error, self.address.url)
            return
        status = self.online()
        client.publish(status.topic, status.payload, qos=1, retain=True)
        self.last_error = None
        self.connected.set()
        self._wake.set()
        log.info("connected to %s", self.address.url)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        if was_connected and not self._stop.is_set():   # a refusal keeps its own reason
            self.last_error = f"connection to {self.address.url} lost: {reason_code}"
            log.warning("%s; reconnecting", self.last_error)
        self._acks.put(-1)                             # tell the pump: in-flight is void
        self._wake.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._acks.put(mid)
        self._wake.set()

    # the pump thread ----------------------------------------------------------------

    def _pump(self) -> None:
        conn = connect(self.state_dir)
        outbox = Outbox(conn)
        try:
            while not self._stop.is_set():
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                self._settle_acks(outbox)
                if self.connected.is_set():
                    self._send(outbox)
        finally:
            conn.close()

    def _settle_acks(self, outbox: Outbox) -> None:
        while True:
            try:
                mid = self._acks.get_nowait()
            except queue.Empty:
                break
            if mid == -1:
                self._inflight.clear()
            elif (message_id := self._inflight.pop(mid, None)) is not None:
                self._acknowledged.append(message_id)
        if not self._acknowledged:
            return
        try:
            outbox.mark_sent(self._acknowledged, time.time())
        except sqlite3.Error as error:       # state disk full or read-only: retry later;
            self.last_error = f"cannot record deliveries: {error}"       # resent if we die
            return
        for message_id in self._acknowledged:
            self.sent += 1
            self.on_sent(message_id)
        self._acknowledged.clear()

    def _send(self, outbox: Outbox) -> None:
        room = self.max_inflight - len(self._inflight)
        if room <= 0:
            return
        waiting = set(self._inflight.values()) | set(self._acknowledged)
        for message in outbox.unsent(room, skip=waiting):
            info = self._client.publish(message.topic, message.payload, qos=message.qos,
                                        retain=message.retain)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return                                 # disconnected meanwhile: try later
            self._inflight[info.mid] = message.message_id
