"""The status page in headless Chromium, against the real appliance and Mosquitto."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from edge.inference.zoo import DEFAULT_ZOO
from edge.simulator import play, series_files
from tests.appliance import ApplianceProcess
from tests.mqtt import Mosquitto, needs_mosquitto

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TOKEN = "page-token-for-tests"
PAYLOADS = {"PatientName": "<script>window.__xss = 1</script>",
            "SeriesDescription": '<img src=x onerror="window.__xss = 2">'}
pytestmark = [
    needs_mosquitto, pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make deps)"),
    pytest.mark.skipif(not (DEFAULT_ZOO / "PT" / "model.onnx").exists(),
                       reason="the shipped PET model is needed for a positive series"),
]


@pytest.fixture(scope="module")
def positive_pet(tmp_path_factory) -> Path:
    """A synthetic PET series with a large, avid lesion: positive for the shipped model."""
    from models.synthetic.series import write_case

    out = tmp_path_factory.mktemp("pet")
    for index in range(40):
        folder = write_case("PT", 4242, index, out)
        lesions = json.loads((folder / "truth.json").read_text())["lesions"]
        slices = len(list(folder.glob("*"))) - 2
        if slices <= 90 and any(le["diameter_mm"] >= 22 and le["kind"] != "cyst"
                                and le["organ"] != "kidney" for le in lesions):
            return folder
        shutil.rmtree(folder)
    raise RuntimeError("no suitable synthetic PET case in 40 tries")


@pytest.fixture
def running(tmp_path):
    broker = Mosquitto(tmp_path).start()
    (tmp_path / "token").write_text(TOKEN)
    app = ApplianceProcess(tmp_path, broker.url, DEFAULT_ZOO,
                           extra=f'[web]\ntoken_file = "{tmp_path / "token"}"\n'
                                 "[privacy]\ninclude_patient_identifiers = true\n")
    app.start()
    yield app
    app.terminate()
    broker.stop()


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        context = browser.new_context(http_credentials={"username": "technician",
                                                        "password": TOKEN},
                                      viewport={"width": 1280, "height": 1000})
        page = context.new_page()
        page.problems = []
        page.on("console", lambda m: page.problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: page.problems.append(str(e)))
        yield page
        browser.close()


def open_page(page, app: ApplianceProcess) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            page.goto(f"http://127.0.0.1:{app.web_port}/")
            page.wait_for_selector("#state.online", timeout=5000)
            return
        except Exception:                   # the appliance is still starting
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_a_series_arrives_advances_and_ends_in_an_alert_with_its_overlay(running, page,
                                                                         positive_pet):
    open_page(page, running)
    navigations = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    files = series_files(positive_pet)
    progress = []
    for i, _ in enumerate(play(files, running.inbox, 8.0, "pet")):
        if i % 10 == 9 and page.locator("#arriving progress").count():
            progress.append(int(page.locator("#arriving progress").first.get_attribute("value")))
    assert len(progress) >= 3 and progress == sorted(progress) and progress[-1] > progress[0]
    page.wait_for_selector("#results .card.positive img", timeout=120_000)
    page.wait_for_function("() => document.querySelector('#results .card.positive img')"
                           ".naturalWidth > 0")
    assert "TUMOUR SUSPECTED" in page.text_content("#results .card.positive")
    assert "FINAL" in page.text_content("#alerts")
    page.screenshot(path=str(running.root / "status-page.png"), full_page=True)  # README's
    page.click("#results .card.positive img")
    page.wait_for_selector("#viewer[open] img")
    page.screenshot(path=str(running.root / "overlay.png"), full_page=True)
    assert navigations == []                                # live updates, no reload
    assert page.problems == []


def test_dicom_values_are_shown_as_text_and_never_run(running, page, positive_pet, tmp_path):
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    for source in series_files(positive_pet)[:12]:
        ds = dcmread(source)
        for keyword, value in PAYLOADS.items():
            setattr(ds, keyword, value)
        ds.save_as(hostile / source.name)
    open_page(page, running)
    for _ in play(sorted(hostile.iterdir()), running.inbox, 50.0, "hostile"):
        pass
    page.wait_for_function("() => document.body.textContent.includes('onerror')",
                           timeout=60_000)
    text = page.text_content("body")
    assert PAYLOADS["SeriesDescription"] in text
    assert PAYLOADS["PatientName"] in text
    assert page.evaluate("() => window.__xss") is None
    assert page.locator("img[src='x']").count() == 0
    assert page.problems == []
