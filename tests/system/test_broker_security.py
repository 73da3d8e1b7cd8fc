"""The example Mosquitto configuration (TLS, password file, ACL) with the appliance's
publisher connecting over mqtts:// with a username and password."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from edge.delivery.outbox import Outbox
from edge.delivery.payloads import Publishing, result_message, status_message
from edge.delivery.publisher import Credentials, Publisher, parse_broker_url
from edge.state import connect
from edge.values import SeriesResult
from tests.mqtt import Mosquitto, Subscriber, free_port, needs_mosquitto

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
pytestmark = [needs_mosquitto, pytest.mark.broker]


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def secure_broker(tmp_path):
    """Mosquitto run with systemd/mosquitto.conf and mosquitto.acl, paths made local."""
    certs = tmp_path / "certs"
    certs.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.crt", "-days", "2", "-subj", "/CN=scanside test CA", cwd=certs)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=localhost", cwd=certs)
    (certs / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext",
            cwd=certs)
    passwd = tmp_path / "passwd"
    for user, password in (("scanside-ct1", "ct1-secret"), ("dashboard", "dash-secret")):
        subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if not passwd.exists() else []),
                        str(passwd), user, password], check=True)
    port = free_port()
    config = (SYSTEMD / "mosquitto.conf").read_text()
    config = (config.replace("listener 8883", f"listener {port} 127.0.0.1")
              .replace("/etc/mosquitto/certs", str(certs))
              .replace("/etc/mosquitto/passwd", str(passwd))
              .replace("/etc/mosquitto/scanside.acl", str(SYSTEMD / "mosquitto.acl"))
              .replace("persistence true", "persistence false"))
    if os.geteuid() == 0:
        config += "\nuser root\n"        # keep reading the test's files after start-up
    broker = Mosquitto(tmp_path, port)
    broker.config.write_text(config)
    broker.start()
    yield broker, certs / "ca.crt", tmp_path
    broker.stop()


def publisher(state: Path, port: int, prefix: str, credentials: Credentials) -> Publisher:
    publishing = Publishing(prefix.rsplit("/", 1)[-1], prefix)
    return Publisher(state, parse_broker_url(f"mqtts://127.0.0.1:{port}"), f"p-{prefix}",
                     online=lambda: status_message(publishing, "online", version="t",
                                                   models={}),
                     will=status_message(publishing, "offline", version="t", models={}),
                     credentials=credentials)


def queue_result(state: Path, prefix: str) -> str:
    result = SeriesResult("1.2.3.4", "1.2.3", "CT", "negative", None, (), {}, 1, 10)
    message = result_message(Publishing(prefix.rsplit("/", 1)[-1], prefix), result,
                             supersedes=None, model={}, completed_by=None, at=datetime.now())
    Outbox(connect(state)).add(message, time.time())
    return message.message_id


def test_tls_with_a_password_delivers_and_the_acl_keeps_each_appliance_to_its_topics(
        secure_broker):
    broker, ca, root = secure_broker
    (root / "pw").write_text("ct1-secret\n")
    credentials = Credentials("scanside-ct1", root / "pw", ca)
    dashboard = Subscriber(broker.port, "scanside/#", "dashboard", "dash-secret", ca)
    own = queue_result(root / "own", "scanside/ct1")
    foreign = queue_result(root / "foreign", "scanside/pet1")
    started = [publisher(root / "own", broker.port, "scanside/ct1", credentials),
               publisher(root / "foreign", broker.port, "scanside/pet1", credentials)]
    try:
        for p in started:
            p.start()
        dashboard.wait_for(lambda s: own in {r["result_id"] for r in s.on("/results")})
        time.sleep(1.5)
        assert foreign not in {r["result_id"] for r in dashboard.on("/results")}
    finally:
        for p in started:
            p.stop()
        dashboard.close()


def test_anonymous_clients_are_refused(secure_broker, tmp_path):
    broker, ca, root = secure_broker
    anonymous = publisher(tmp_path / "anon", broker.port, "scanside/ct1", Credentials(ca_file=ca))
    anonymous.start()
    try:
        deadline = time.monotonic() + 10
        while anonymous.last_error is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not anonymous.connected.is_set()
        assert "refused" in (anonymous.last_error or "")
    finally:
        anonymous.stop(drain_s=0)
