"""What goes over MQTT: status, alert and result payloads (pure).

Every alert and result has a deterministic id (a UUID made from the appliance, the
series, its version and the kind of message), so a message sent twice (QoS 1 is
at-least-once; a crash may resend) carries the same id and consumers drop the copy.
Patient name, ID and birth date are included only when the operator allows it; series
and study UIDs identify the case. The JSON Schemas in `schemas/` describe each payload.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from edge.values import Patient, SeriesResult

NAMESPACE = uuid.UUID("6f1c3a52-5b0e-4c8e-9d41-7a2e0b9c3d15")
SCHEMAS = Path(__file__).with_name("schemas")


def message_id(appliance_id: str, series_uid: str, version: int, kind: str) -> str:
    """The deterministic id of one message about one series version."""
    return str(uuid.uuid5(NAMESPACE, f"{appliance_id}/{series_uid}/{version}/{kind}"))


@dataclass(frozen=True)
class Message:
    """One MQTT message, ready for the outbox."""

    message_id: str
    topic: str
    payload: str                      # JSON
    kind: str                         # status | provisional | final | result
    series_uid: str | None = None
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True)
class Publishing:
    """The appliance's identity on the broker and what it may say."""

    appliance_id: str
    topic_prefix: str
    include_patient: bool = False

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}/{name}"


def _now(at: datetime | None) -> str:
    return (at or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="milliseconds")


def _patient(publishing: Publishing, patient: Patient | None) -> dict:
    if not publishing.include_patient or patient is None:
        return {}
    return {"patient": {"name": patient.name, "id": patient.id,
                        "birth_date": patient.birth_date}}


def result_message(publishing: Publishing, result: SeriesResult, *, supersedes: str | None,
                   model: dict, completed_by: str | None, at: datetime,
                   completed_at: datetime | None = None,
                   patient: Patient | None = None) -> Message:
    """One result per analysed series version: positive, negative or failed.

    `completed_at`: when the series was known complete (its last expected slice read, or
    its quiet period over), so a consumer sees how long the analysis took after that."""
    result_id = message_id(publishing.appliance_id, result.series_uid, result.version, "result")
    body = {"result_id": result_id, "version": result.version, "supersedes": supersedes,
            "appliance_id": publishing.appliance_id, **result.to_json(),
            "n_slices": result.n_slices, "completed_by": completed_by,
            "completed_at": _now(completed_at) if completed_at else None, "model": model,
            "analysed_at": _now(at), **_patient(publishing, patient)}
    return Message(result_id, publishing.topic("results"), json.dumps(body), "result",
                   result.series_uid)


def alert_message(publishing: Publishing, *, kind: str, result_or_series: dict,
                  findings: list[dict], version: int, supersedes: list[str],
                  at: datetime, key: str = "final", slice_index: int | None = None,
                  patient: Patient | None = None) -> Message:
    """A provisional alert (one lesion seen on a slice while the series arrives) or the
    final alert of a series version, which supersedes the provisional ones."""
    series_uid = result_or_series["series_uid"]
    alert_id = message_id(publishing.appliance_id, series_uid, version,
                          kind if kind == "final" else f"provisional/{key}")
    body = {"alert_id": alert_id, "kind": kind, "version": version, "supersedes": supersedes,
            "appliance_id": publishing.appliance_id, "series_uid": series_uid,
            "study_uid": result_or_series["study_uid"],
            "modality": result_or_series["modality"],
            "findings": findings, "raised_at": _now(at),
            **({"slice": slice_index} if slice_index is not None else {}),
            **_patient(publishing, patient)}
    return Message(alert_id, publishing.topic("alerts"), json.dumps(body), kind, series_uid)


def status_message(publishing: Publishing, state: str, *, version: str, models: dict,
                   at: datetime | None = None, detail: str | None = None) -> Message:
    """The retained status: online, degraded or offline (also the Last Will)."""
    body = {"state": state, "appliance_id": publishing.appliance_id, "version": version,
            "models": models, "since": _now(at),
            **({"detail": detail} if detail else {})}
    return Message(f"status/{state}", publishing.topic("status"), json.dumps(body), "status",
                   qos=1, retain=True)


def schema(name: str) -> dict:
    """The JSON Schema of `status`, `alert` or `result` payloads."""
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text())
