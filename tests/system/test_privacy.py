"""Privacy: series whose patients have distinctive names, IDs and birth dates go through
the appliance; nothing it publishes, logs or serves contains any of them."""

from __future__ import annotations

import json
import urllib.request

import pytest
from pydicom import dcmread

from edge.simulator import play, series_files
from tests.appliance import truth_uid, watch
from tests.mqtt import needs_mosquitto

pytestmark = [needs_mosquitto, pytest.mark.broker]
PATIENTS = [("Quixote^Zebedee^Marmaduke", "MRN-4417-ZQX", "19230405"),
            ("O'Brannagh^Philomena", "XJ88120577", "19480229")]
# Every form a leak could take: whole values, name parts, DICOM and ISO dates.
NEEDLES = ["Quixote", "Zebedee", "Marmaduke", "4417-ZQX", "19230405", "1923-04-05",
           "Brannagh", "Philomena", "XJ88120577", "19480229", "1948-02-29"]


def relabelled(source, target, name: str, patient_id: str, birth_date: str):
    """A copy of the series in `source` with the patient's identifiers replaced."""
    target.mkdir(parents=True)
    for path in series_files(source):
        ds = dcmread(path)
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = name, patient_id, birth_date
        ds.OtherPatientIDs = patient_id
        ds.save_as(target / path.name)
    (target / "truth.json").write_text((source / "truth.json").read_text())
    return target


def get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.read().decode()


def test_no_patient_identifier_is_published_logged_or_served(tmp_path, broker, appliance,
                                                              pet_cases):
    cases = [relabelled(pet_cases[i], tmp_path / f"case{i}", *patient)
             for i, patient in enumerate(PATIENTS)]
    app = appliance(tmp_path / "app").start()
    subscriber = watch(broker, app)
    try:
        for i, folder in enumerate(cases):
            for _ in play(series_files(folder), app.inbox, 60.0, f"scan{i}"):
                pass
        subscriber.wait_for(lambda s: {r["series_uid"] for r in s.on("/results")}
                            == {truth_uid(c) for c in cases}, 120)
        served = [get(app.web_port, p) for p in ("/api/status", "/metrics", "/")]
        assert app.terminate() == 0
        published = [json.dumps(payload) for _, payload, _, _ in subscriber.messages]
        assert len(published) >= 4                    # status, 2 results, at least
        captured = {"mqtt": "\n".join(published), "log": app.output(),
                    "page": "\n".join(served)}
        for where, text in captured.items():
            for needle in NEEDLES:
                assert needle.lower() not in text.lower(), f"{needle!r} leaked into the {where}"
    finally:
        subscriber.close()


def test_identifiers_appear_only_when_the_config_allows_them(tmp_path, broker, appliance,
                                                             pet_cases):
    """The check above can fail: with the option on, the name is in the result."""
    case = relabelled(pet_cases[0], tmp_path / "case", *PATIENTS[0])
    app = appliance(tmp_path / "app",
                    extra="[privacy]\ninclude_patient_identifiers = true\n").start()
    subscriber = watch(broker, app)
    try:
        for _ in play(series_files(case), app.inbox, 60.0, "scan"):
            pass
        subscriber.wait_for(lambda s: len(s.on("/results")) == 1, 120)
        assert "Quixote" in json.dumps(subscriber.on("/results")[0])
        assert app.terminate() == 0
    finally:
        subscriber.close()
