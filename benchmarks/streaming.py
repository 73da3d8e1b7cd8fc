"""Streaming: alerts while the scan arrives, against analysing the finished series.

A 60-slice 512x512 synthetic CT with lesions is played into the inbox of the real
appliance (`scanside run`, shipped CT model, ONNX Runtime on the CPU, Mosquitto or the
embedded broker) at 10 slices per second; a subscriber records when each alert and result
arrives. In the same run the same series is analysed in batch mode: read every file, then
`analyze_series`. Reported over repeated runs (p50, p95):

- (a) series known complete -> final alert received. The series' tags promise their
  count, so each is complete as soon as its last slice is read: the moment the appliance
  reports as the result's `completed_at`. Before it, and reported apart like the quiet
  period a series without a count would add: the last slice landing -> known complete
  (the wait for the file to be stable, `ingest.stable_s`, then reading it), and the whole
  last slice landed -> final alert;
- batch: the same series' files -> result, in this process;
- (b) a slice landed -> the provisional alert it raised, and the first lesion-bearing
  slice landed -> the first provisional alert.

Target (issue 5): (a) streaming p95 <= 0.1 x the batch time.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge.inference.zoo import DEFAULT_ZOO

STABLE_S = 0.2
CACHE = Path(__file__).resolve().parents[1] / "var" / "bench"     # git ignores var/


def ct_series(out: Path, count: int, seed: int = 2024) -> list[Path]:
    """`count` synthetic CTs of 50-70 slices with at least one lesion of 15 mm or more.

    Most synthetic CTs are longer, so finding them takes minutes: those found are kept in
    `out` and reused by the next run."""
    from models.synthetic.series import write_case

    def suitable(folder: Path) -> bool:
        truth = json.loads((folder / "truth.json").read_text())
        n = len(np.load(folder / "mask.npz")["sop_instance_uids"])
        return 50 <= n <= 70 and any(le["diameter_mm"] >= 15 for le in truth["lesions"])

    out.mkdir(parents=True, exist_ok=True)
    kept = sorted(f for f in out.iterdir() if (f / "truth.json").exists() and suitable(f))
    found = kept[:count]
    index = 1 + max((json.loads((f / "truth.json").read_text())["generator"]["case"]
                     for f in kept), default=-1)
    with tqdm(total=count, initial=len(found), desc="synthesising CT series",
              unit="series") as bar:
        while len(found) < count:
            folder = write_case("CT", seed, index, out)
            if suitable(folder):
                found.append(folder)
                bar.update()
            else:
                shutil.rmtree(folder)
            index += 1
    return found


def batch_seconds(folder: Path, zoo: Path, threads: int) -> float:
    """Files on disk -> result, as `scanside analyze` does it (reader pool, ORT)."""
    from edge.backends.select import choose, open_backend, probe
    from edge.config import Config
    from edge.inference.series import analyze_series
    from edge.survey import collect

    backend = open_backend(choose("onnxruntime", zoo / "CT", None, probe()), threads)
    start = time.perf_counter()
    found = collect([folder], Config(), keep_pixels=True)
    (planes,) = found.slices.values()
    analyze_series(planes, backend)
    elapsed = time.perf_counter() - start
    backend.close()
    return elapsed


def stream_once(folder: Path, zoo: Path, broker_url: str, work: Path, rate: float) -> dict:
    from edge.simulator import play, series_files
    from tests.mqtt import Subscriber

    inbox, state = work / "inbox", work / "state"
    work.mkdir(parents=True, exist_ok=True)
    config = work / "scanside.toml"
    config.write_text(f'[appliance]\nid = "bench"\n[ingest]\nstable_s = {STABLE_S}\n'
                      f'[models]\nzoo = "{zoo}"\nthreads = 2\n')
    port = int(broker_url.rsplit(":", 1)[1])
    subscriber = Subscriber(port, "scanside/bench/#")
    log = (work / "appliance.log").open("w")
    app = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(config),
                            "--inbox", str(inbox), "--state-dir", str(state),
                            "--broker", broker_url], stdout=log, stderr=subprocess.STDOUT)
    try:
        subscriber.wait_for(lambda s: any(p["state"] == "online" for p in s.on("/status")), 60)
        wall_minus_monotonic = time.time() - time.monotonic()
        landed = [time.monotonic() for _ in play(series_files(folder), inbox, rate, "s")]
        subscriber.wait_for(lambda s: s.on("/results"), 120)
        arrivals = {p.get("alert_id") or p.get("result_id"): t for _, p, _, t in subscriber.messages
                    if p.get("alert_id") or p.get("result_id")}
        alerts = subscriber.on("/alerts")
        final = [a for a in alerts if a["kind"] == "final"]
        provisional = [a for a in alerts if a["kind"] == "provisional"]
        labels = np.load(folder / "mask.npz")
        by_uid = dict(zip(labels["sop_instance_uids"].tolist(), labels["labels"], strict=True))
        from pydicom import dcmread
        lesion_landed = [t for path, t in zip(series_files(folder), landed, strict=True)
                         if by_uid[dcmread(path, stop_before_pixels=True).SOPInstanceUID].any()]
        result = subscriber.on("/results")[0]
        complete = (datetime.fromisoformat(result["completed_at"]).timestamp()
                    - wall_minus_monotonic)
        return {
            "complete_after_last_slice_s": complete - landed[-1],
            "final_alert_after_complete_s": (arrivals[final[0]["alert_id"]] - complete)
            if final else None,
            "final_alert_after_last_slice_s": (arrivals[final[0]["alert_id"]] - landed[-1])
            if final else None,
            "result_after_complete_s": arrivals[result["result_id"]] - complete,
            "provisional_after_its_slice_s": [arrivals[a["alert_id"]] - landed[a["slice"]]
                                              for a in provisional],
            "first_provisional_after_first_lesion_slice_s":
                (min(arrivals[a["alert_id"]] for a in provisional) - lesion_landed[0])
                if provisional and lesion_landed else None,
            "status": result["status"],
        }
    finally:
        app.terminate()
        app.wait(timeout=60)
        subscriber.close()


def run(zoo: Path = DEFAULT_ZOO, runs: int = 5, rate: float = 10.0, threads: int = 2) -> dict:
    from tests.mqtt import Mosquitto

    with tempfile.TemporaryDirectory(prefix="scanside-bench-") as scratch:
        scratch = Path(scratch)
        series = ct_series(CACHE / "streaming-CT", runs)
        broker = Mosquitto(scratch).start()
        try:
            streamed, batch = [], []
            for i, folder in enumerate(tqdm(series, desc="streaming runs", unit="run")):
                streamed.append(stream_once(folder, zoo, broker.url, scratch / f"run{i}", rate))
                batch.append(batch_seconds(folder, zoo, threads))
        finally:
            broker.stop()

    def values(key: str) -> list[float]:
        return [s[key] for s in streamed if s[key] is not None]

    finals = values("final_alert_after_complete_s")
    latency = finals or values("result_after_complete_s")
    per_slice = [t for s in streamed for t in s["provisional_after_its_slice_s"]]
    first = values("first_provisional_after_first_lesion_slice_s")
    return {
        "series": {"slices": "50-70", "matrix": [512, 512], "rate_slices_per_s": rate,
                   "runs": runs},
        "quiet_period_s": "not needed: the series promise their count (ImagesInAcquisition)",
        "stable_s": STABLE_S,
        "last_slice_landed_to_complete_s": _summary(values("complete_after_last_slice_s")),
        "last_slice_landed_to_final_alert_s": _summary(values("final_alert_after_last_slice_s")),
        "a_streaming_complete_to_final_s": _summary(latency),
        "a_measured_on": "final alert" if finals else "result (no final alert was raised)",
        "batch_s": _summary(batch),
        "a_streaming_p95_over_batch_p50": round(_p(latency, 95) / statistics.median(batch), 3),
        "b_provisional_after_its_slice_s": _summary(per_slice),
        "b_first_provisional_after_first_lesion_slice_s": _summary(first),
        "results": [s["status"] for s in streamed],
        "target": {"a_streaming_p95_over_batch": 0.1},
    }


def _p(values, q):
    return float(np.percentile(values, q)) if values else float("nan")


def _summary(values) -> dict:
    return {"p50": round(_p(values, 50), 3), "p95": round(_p(values, 95), 3), "n": len(values)}
