"""The status page's HTTP side: auth, headers, privacy, images, metrics, OpenAPI."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from edge.web.app import create_app
from edge.web.board import StatusBoard
from edge.web.overlay import overlay_png

TOKEN = "s3cret-token"
UID = "1.2.826.0.1.3680043.8.498.5"
PROTECTED = ["/", "/static/app.js", "/static/style.css", "/api/status", "/metrics",
             "/openapi.json", f"/api/series/{UID}/images/key.png"]


def result(uid=UID, status="positive", **extra):
    finding = {"center_mm": [1.0, 2.0, 3.0], "diameter_mm": 12.0, "volume_mm3": 900.0,
               "probability": 0.9, "slices": [3, 5]}
    return {"result_id": f"r-{uid}", "version": 1, "supersedes": None, "appliance_id": "a",
            "series_uid": uid, "study_uid": "1.2", "modality": "CT", "status": status,
            "reason": None, "findings": [finding] if status == "positive" else [],
            "timings_ms": {}, "n_slices": 40, "completed_by": "expected count", "model": {},
            "analysed_at": "2026-11-23T10:00:00+00:00", **extra}


@pytest.fixture
def board():
    board = StatusBoard("ct1", "0.1.0")
    png = overlay_png(np.full((32, 32), 90, np.uint8), np.zeros((32, 32), np.uint8), 0.5, 64)
    board.record_result(result(), {"read": 5.0, "preprocess": 10.0, "infer": 40.0,
                                   "postprocess": 2.0}, {"key": png})
    return board


def client(board, token=TOKEN, ready=(True, "")):
    return TestClient(create_app(board, token, lambda: ready))


def basic(password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"tech:{password}".encode()).decode()}


@pytest.mark.parametrize("route", PROTECTED)
def test_every_protected_route_answers_401_without_the_token(board, route):
    response = client(board).get(route)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Basic realm="scanside"'


@pytest.mark.parametrize("route", PROTECTED)
def test_every_protected_route_answers_200_with_the_token(board, route):
    c = client(board)
    assert c.get(route, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert c.get(route, headers=basic(TOKEN)).status_code == 200


def test_a_wrong_token_is_refused(board):
    assert client(board).get("/api/status", headers=basic("guess")).status_code == 401


@pytest.mark.parametrize("route", ["/healthz", "/readyz"])
def test_probes_need_no_token(board, route):
    assert client(board).get(route).status_code == 200


def test_readiness_says_why_it_is_not_ready(board):
    response = client(board, ready=(False, "loading models")).get("/readyz")
    assert response.status_code == 503 and response.json()["reason"] == "loading models"


def test_responses_carry_a_strict_content_security_policy(board):
    headers = client(board, token=None).get("/").headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "'unsafe-inline'" not in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"


def test_patient_names_are_kept_only_when_allowed():
    for allowed in (False, True):
        board = StatusBoard("ct1", "0.1.0", include_patient=allowed)
        board.record_slice(UID, "CT", "ABDOMEN", "Doe^Jane", 40, 2.0)
        shown = json.dumps(client(board, None).get("/api/status").json())
        assert ("Doe^Jane" in shown) is allowed


def test_overlay_images_are_png_and_unknown_ones_404(board):
    c = client(board, token=None)
    response = c.get(f"/api/series/{UID}/images/key.png")
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(b"\x89PNG")
    assert c.get(f"/api/series/{UID}/images/slice-4.png").status_code == 404
    assert c.get("/api/series/not-a-uid/images/key.png").status_code == 422


def test_metrics_parse_and_histograms_count_each_series_once(board):
    board.record_result(result("1.2.826.0.1.3680043.8.498.6", "negative"), {}, None)
    board.record_sent("r-" + UID)
    text = client(board, token=None).get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    counts = {s.labels["stage"]: s.value
              for s in families["scanside_series_stage_seconds"].samples
              if s.name.endswith("_count")}
    analysed = sum(s.value for s in families["scanside_series_analysed"].samples
                   if s.name.endswith("_total"))
    assert analysed == 2
    assert {stage: counts[stage] for stage in ("read", "preprocess", "infer", "postprocess")} \
        == dict.fromkeys(("read", "preprocess", "infer", "postprocess"), 2)
    assert counts["publish"] == 1                 # one of the two was acknowledged


def test_the_live_stream_sends_a_snapshot_at_once(board):
    with client(board, token=None).stream("GET", "/api/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = []
        for line in response.iter_lines():
            lines.append(line)
            if line.startswith("data:"):
                break
    assert "event: snapshot" in lines
    assert json.loads(lines[-1][5:])["appliance_id"] == "ct1"


def test_the_api_is_described_by_openapi(board):
    spec = client(board, token=None).get("/openapi.json").json()
    assert {"/api/status", "/metrics", "/healthz", "/readyz"} <= set(spec["paths"])
    assert {"HTTPBearer", "HTTPBasic"} <= set(spec["components"]["securitySchemes"])


def _schemathesis_schema():
    board = StatusBoard("ct1", "0.1.0")
    board.record_result(result(), {}, None)
    app = create_app(board, TOKEN, lambda: (True, ""))
    return schemathesis.openapi.from_asgi("/openapi.json", app, headers=AUTH)


AUTH = {"Authorization": f"Bearer {TOKEN}"}
SCHEMA = _schemathesis_schema().exclude(path="/api/events")   # endless by design


@SCHEMA.parametrize()
def test_generated_requests_get_documented_answers_and_no_server_error(case):
    response = case.call_and_validate(headers=AUTH)
    assert response.status_code < 500
