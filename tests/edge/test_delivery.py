"""Delivery: payloads and schemas, the SQLite outbox, the publisher against Mosquitto."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import jsonschema
import pytest
from referencing import Registry, Resource

from edge.delivery.outbox import Outbox
from edge.delivery.payloads import (
    SCHEMAS,
    Publishing,
    alert_message,
    message_id,
    result_message,
    schema,
    status_message,
)
from edge.delivery.publisher import Publisher, parse_broker_url
from edge.errors import ConfigError
from edge.state import connect
from edge.values import Finding, Patient, SeriesResult
from tests.mqtt import Mosquitto, Subscriber, needs_mosquitto

PUB = Publishing("ct-room-2", "scanside/ct-room-2")
AT = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
FINDING = Finding((10.0, -20.5, 310.25), 14.2, 1500.0, 0.93, (12, 18), 15)
RESULT = SeriesResult("1.2.840.99.1", "1.2.840.99", "CT", "positive", None, (FINDING,),
                      {"preprocess": 10.0, "infer": 50.0, "postprocess": 2.0}, 1, 120)


def validator(name: str) -> jsonschema.Draft202012Validator:
    registry = Registry().with_resources(
        (f"https://scanside.example/schemas/{p.name}", Resource.from_contents(json.loads(
            p.read_text()))) for p in SCHEMAS.glob("*.json"))
    return jsonschema.Draft202012Validator(schema(name), registry=registry,
                                           format_checker=jsonschema.FormatChecker())


def test_ids_are_deterministic_and_distinct_per_series_version_and_kind():
    assert message_id("a", "1.2", 1, "result") == message_id("a", "1.2", 1, "result")
    ids = {message_id("a", "1.2", v, k) for v in (1, 2) for k in ("result", "final")}
    assert len(ids) == 4
    assert message_id("a", "1.2", 1, "result") != message_id("b", "1.2", 1, "result")


def test_result_payload_follows_its_schema_and_the_analyze_contract():
    message = result_message(PUB, RESULT, supersedes=None, model={"name": "scanside-ct"},
                             completed_by="expected count", at=AT)
    payload = json.loads(message.payload)
    validator("result").validate(payload)
    assert payload["result_id"] == message.message_id
    assert payload["findings"] == [FINDING.to_json()]
    assert message.topic == "scanside/ct-room-2/results" and message.qos == 1


def test_alert_payloads_follow_their_schema():
    final = alert_message(PUB, kind="final", result_or_series=RESULT.to_json(),
                          findings=[FINDING.to_json()], version=1, supersedes=[], at=AT)
    provisional = alert_message(PUB, kind="provisional", result_or_series=RESULT.to_json(),
                                findings=[{"center_mm": [1, 2, 3], "diameter_mm": 8.0,
                                           "volume_mm3": None, "probability": 0.9,
                                           "slices": [4, 4]}],
                                version=1, supersedes=[], at=AT, key="1.2.3.4", slice_index=4)
    for message in (final, provisional):
        validator("alert").validate(json.loads(message.payload))
    assert final.message_id != provisional.message_id


def test_status_payload_follows_its_schema_and_is_retained():
    message = status_message(PUB, "online", version="0.1.0", models={"CT": {"backend": "ort"}})
    validator("status").validate(json.loads(message.payload))
    assert message.retain


def test_patient_identifiers_appear_only_when_allowed():
    patient = Patient("Doe^Jane", "PID-778", "19610203")
    hidden = result_message(PUB, RESULT, supersedes=None, model={}, completed_by=None, at=AT,
                            patient=patient)
    shown = result_message(Publishing("a", "p", include_patient=True), RESULT, supersedes=None,
                           model={}, completed_by=None, at=AT, patient=patient)
    assert "Doe" not in hidden.payload and "PID-778" not in hidden.payload
    assert json.loads(shown.payload)["patient"]["id"] == "PID-778"


def test_outbox_keeps_one_copy_per_id_and_forgets_nothing_unsent(tmp_path):
    message = result_message(PUB, RESULT, supersedes=None, model={}, completed_by=None, at=AT)
    outbox = Outbox(connect(tmp_path))
    assert outbox.add(message, 1.0) and not outbox.add(message, 2.0)
    reopened = Outbox(connect(tmp_path))
    assert [m.message_id for m in reopened.unsent(10)] == [message.message_id]
    assert reopened.unsent(10, skip={message.message_id}) == []
    reopened.mark_sent([message.message_id], 3.0)
    assert reopened.backlog() == 0
    assert reopened.of_series(RESULT.series_uid, "result")[0]["result_id"] == message.message_id


def test_broker_urls():
    assert parse_broker_url("mqtt://broker.hospital").port == 1883
    secure = parse_broker_url("mqtts://10.0.0.5:8884")
    assert (secure.host, secure.port, secure.tls) == ("10.0.0.5", 8884, True)
    with pytest.raises(ConfigError, match="expected mqtt://HOST"):
        parse_broker_url("http://broker")


def publisher_for(tmp_path, broker: Mosquitto, keepalive_s: int = 10) -> Publisher:
    return Publisher(tmp_path, parse_broker_url(broker.url), "test-publisher",
                     online=lambda: status_message(PUB, "online", version="t", models={}),
                     will=status_message(PUB, "offline", version="t", models={}),
                     keepalive_s=keepalive_s)


def fill(tmp_path, n: int) -> list[str]:
    outbox = Outbox(connect(tmp_path))
    ids = []
    for i in range(n):
        result = SeriesResult(f"1.2.840.99.{i}", "1.2", "CT", "negative", None, (), {}, 1, 10)
        message = result_message(PUB, result, supersedes=None, model={}, completed_by=None, at=AT)
        outbox.add(message, float(i))
        ids.append(message.message_id)
    return ids


@needs_mosquitto
def test_publisher_sends_the_outbox_marks_it_sent_and_sets_the_retained_status(tmp_path):
    broker = Mosquitto(tmp_path).start()
    subscriber = Subscriber(broker.port, "scanside/#")
    try:
        ids = fill(tmp_path / "state", 40)
        publisher = publisher_for(tmp_path / "state", broker)
        publisher.start()
        subscriber.wait_for(lambda s: len(s.on("/results")) == 40)
        assert [p["result_id"] for p in subscriber.on("/results")] == ids   # oldest first
        deadline = time.monotonic() + 10
        while publisher.backlog() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert publisher.backlog() == 0
        assert subscriber.on("/status")[0]["state"] == "online"
        publisher.stop(offline=status_message(PUB, "offline", version="t", models={}))
        subscriber.wait_for(lambda s: s.on("/status")[-1]["state"] == "offline")
    finally:
        subscriber.close()
        broker.stop()


@needs_mosquitto
def test_messages_stored_while_the_broker_is_down_arrive_when_it_returns(tmp_path):
    broker = Mosquitto(tmp_path).start()
    publisher = publisher_for(tmp_path / "state", broker)
    publisher.start()
    assert publisher.connected.wait(10)
    broker.stop()
    deadline = time.monotonic() + 10
    while publisher.connected.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not publisher.connected.is_set()         # the outage was noticed
    ids = fill(tmp_path / "state", 10)
    publisher.notify()
    time.sleep(1)
    assert publisher.backlog() == 10                # stored, not lost, not marked sent
    broker.start()
    subscriber = Subscriber(broker.port, "scanside/#")
    try:
        subscriber.wait_for(lambda s: {p["result_id"] for p in s.on("/results")} >= set(ids),
                            timeout=60)
        deadline = time.monotonic() + 10
        while publisher.backlog() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert publisher.backlog() == 0
    finally:
        publisher.stop()
        subscriber.close()
        broker.stop()
