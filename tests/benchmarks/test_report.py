"""The benchmark report: a real (short) suite run gives JSON, Markdown and a chart whose
headline figures carry their same-run baselines and targets."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.report import Headline, headlines, markdown
from tests.mqtt import needs_mosquitto


@needs_mosquitto
def test_an_mqtt_run_writes_json_markdown_and_chart(tmp_path):
    subprocess.run([sys.executable, "-m", "benchmarks", "mqtt", "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=300)
    (json_path,) = tmp_path.glob("*-mqtt.json")
    record = json.loads(json_path.read_text())
    assert record["machine"]["cores_available"] >= 1
    rows = {h["figure"]: h for h in record["headlines"]}
    ours = rows["outbox + publisher QoS 1, p99"]
    assert ours["baseline"] == "bare paho QoS 1, p99" and ours["baseline_value"] > 0
    assert isinstance(rows["burst of 100 alerts through the outbox"]["met"], bool)
    summary = json_path.with_suffix(".md").read_text()
    assert "| mqtt | outbox + publisher QoS 1, p99 |" in summary
    assert json_path.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_a_missed_target_is_marked_in_the_summary():
    results = {"slices_per_s": {"scanside_read": 400.0, "scanside_read_and_stack_hu": 300.0,
                                "bare_pydicom_1_process": 800.0},
               "ratios_to_bare_pydicom": {"scanside_read_vs_1_process": 0.5,
                                          "scanside_read_and_stack_hu_vs_1_process": 0.375},
               "targets": {"ratio_to_bare_pydicom": 0.8}}
    rows = headlines("ingest", results)
    assert [r.met for r in rows] == [False, False] and rows[0].ratio == 0.5
    record = {"measured_at": "now", "machine": {"host": "h", "cpu": "c", "cores_available": 2,
                                                "memory_gib": 1, "libraries": {}},
              "headlines": [vars(r) for r in rows]}
    assert "| **no** |" in markdown(record)


@pytest.mark.parametrize("value, baseline, ratio", [(30.0, 60.0, 0.5), (None, 1.0, None)])
def test_ratio_is_value_over_baseline(value, baseline, ratio):
    assert Headline("s", "f", value, "ms", "b", baseline).ratio == ratio
