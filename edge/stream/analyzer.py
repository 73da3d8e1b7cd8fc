"""The inference thread's work: analyse slices as they arrive, series as they complete.

Slices are preprocessed and inferred as soon as they are admitted (in batches when
several wait), and only their uint8 probability maps are kept, so a 1,000-slice series
costs tens of MB. A 2.5D model (`ModelSpec.context_slices` k) sees each slice with its
neighbours, so a slice is inferred once k slices have arrived on each side of it (one
slice later, for a scan written in order), and again, whenever a slice lands between it
and one of those, with the new neighbour; at completion the ends of the stack are
inferred with the end slice standing in for the missing ones, as batch analysis does.
Its preprocessed inputs are held (float16) until the series leaves memory
(`series.forget_after_s` after completion): 400 kB a slice for a 2 x 320 x 320 input.

A slice showing a confident lesion raises a provisional alert at once, one per lesion:
later slices of the same lesion update it rather than raise another.
When the series completes, only the 3D step remains: the result (positive, negative or
failed) and, if there were findings or provisional alerts, a final alert superseding
them go into the outbox in the same transaction that marks the series analysed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from edge.backends.base import Backend
from edge.delivery.outbox import Outbox
from edge.delivery.payloads import Publishing, alert_message, message_id, result_message
from edge.errors import ScansideError
from edge.inference.postprocess import find_lesions, lesions_on_slice
from edge.inference.preprocess import (
    SliceGrid,
    held,
    image_u8,
    neighbours,
    preprocess,
    with_neighbours,
)
from edge.inference.series import FATAL_PROBLEMS, to_u8, verdict
from edge.ingest.intake import Admitted, Completed, Forgotten
from edge.series.assembler import Admission, SeriesState
from edge.series.geometry import analyse_geometry
from edge.state import transaction
from edge.stream.store import SeriesStore
from edge.values import Patient, SeriesResult, Slice, SliceHeader, SlicePrediction
from edge.web.board import StatusBoard
from edge.web.overlay import overlay_png, preview

log = logging.getLogger("scanside.analysis")
MAX_OVERLAYS = 24


@dataclass
class Progress:
    """One series as the inference thread knows it (mutable, this thread only)."""

    series_uid: str
    study_uid: str
    modality: str
    version: int
    patient: Patient
    predictions: dict[str, SlicePrediction] = field(default_factory=dict)
    previews: dict[str, np.ndarray] = field(default_factory=dict)   # lesion slices only
    provisional: list[dict] = field(default_factory=list)   # {alert_id, center_mm, diameter_mm}
    # Each slice's input, grid and header, held until it is inferred (a 2.5D model's until
    # the series leaves memory), and the neighbours (instance keys) it was last inferred with
    held: dict[str, tuple[np.ndarray, SliceGrid, SliceHeader]] = field(default_factory=dict)
    seen_with: dict[str, tuple[str, ...]] = field(default_factory=dict)
    alerting: set[str] = field(default_factory=set)   # slices that may raise provisional alerts
    failure: str | None = None
    timings_ms: dict = field(default_factory=lambda: {"read": 0.0, "preprocess": 0.0,
                                                      "infer": 0.0})


class StreamingAnalyzer:
    def __init__(self, backend_for: Callable[[str], Backend | None], outbox: Outbox,
                 store: SeriesStore, publishing: Publishing, notify: Callable[[], None],
                 batch_size: int = 8, wall_clock: Callable[[], float] = time.time,
                 board: StatusBoard | None = None):
        self.backend_for, self.outbox, self.store = backend_for, outbox, store
        self.publishing, self.notify, self.batch_size = publishing, notify, batch_size
        self.wall_clock, self.board = wall_clock, board
        self.progress: dict[str, Progress] = {}
        self.analysed = 0
        self.last_result: SeriesResult | None = None

    def handle(self, events: Sequence[Admitted | Completed | Forgotten]) -> None:
        """Process events in their order; consecutive slices are inferred together."""
        waiting: list[tuple[Slice, Progress, bool]] = []
        for event in events:
            if isinstance(event, Admitted):
                progress = self._progress(event)
                progress.timings_ms["read"] += event.read_ms
                alerts = event.admission is not Admission.RESTORED or not event.series.complete
                waiting += [(s, progress, alerts) for s in event.slices]
                continue
            self._infer(waiting)
            waiting = []
            if isinstance(event, Completed):
                self._complete(event.series)
            else:
                self.progress.pop(event.series_uid, None)
        self._infer(waiting)

    def _progress(self, event: Admitted) -> Progress:
        state = event.series
        progress = self.progress.get(state.series_uid)
        if progress is None or event.admission is Admission.RESTORED:
            patient = event.slices[0].header.patient
            progress = Progress(state.series_uid, state.study_uid, state.modality,
                                state.version, patient)
            progress.provisional = [
                {"alert_id": a["alert_id"], "center_mm": a["findings"][0]["center_mm"],
                 "diameter_mm": a["findings"][0]["diameter_mm"]}
                for a in self.outbox.of_series(state.series_uid, "provisional")
                if a["version"] == state.version]
            self.progress[state.series_uid] = progress
        if event.missing:
            progress.failure = (f"{len(event.missing)} slices received earlier are no longer "
                                f"in the inbox (e.g. {event.missing[0]}): the series cannot be "
                                "analysed whole")
        if state.version != progress.version:      # reopened by a late slice
            progress.version, progress.provisional = state.version, []
        return progress

    def _infer(self, waiting: list[tuple[Slice, Progress, bool]]) -> None:
        by_modality: dict[str, list] = {}
        for item in waiting:
            if item[1].failure is None:
                by_modality.setdefault(item[1].modality, []).append(item)
        for modality, items in by_modality.items():
            backend = self.backend_for(modality)
            if backend is None:
                continue                             # failed at completion, with the reason
            self._hold(backend, items)

    def _hold(self, backend: Backend, items: list) -> None:
        """Preprocess and hold the slices, then infer those now ready (`_infer_held`)."""
        spec, touched = backend.spec, {}
        for plane, progress, alerts in items:
            t0 = time.perf_counter()
            try:
                image, grid = preprocess(plane, spec)
            except ScansideError as error:
                progress.failure = str(error)
                continue
            progress.held[plane.header.instance_key] = held(image, spec), grid, plane.header
            progress.timings_ms["preprocess"] += (time.perf_counter() - t0) * 1e3
            if alerts:
                progress.alerting.add(plane.header.instance_key)
            touched[progress.series_uid] = progress
        for progress in touched.values():
            if progress.failure is None:
                headers = [header for _, _, header in progress.held.values()]
                keys = [headers[i].instance_key for i in analyse_geometry(headers).order]
                self._infer_held(backend, progress, keys, final=False)

    def _infer_held(self, backend: Backend, progress: Progress, keys: list[str],
                    final: bool) -> None:
        """Infer each held slice (`keys`: all of them, in anatomical order) whose neighbours
        are not those it was last inferred with: for a 2D model, each slice once, after
        which it is no longer held. Before the series is `final`, a 2.5D model's slices
        wait for all their neighbours: the ends of the stack wait for completion."""
        k, n = backend.spec.context_slices, len(keys)
        due = []
        for i, key in enumerate(keys):
            around = tuple(keys[j] for j in neighbours(i, n, k))
            if (final or k <= i < n - k) and progress.seen_with.get(key) != around \
                    and all(j in progress.held for j in (key, *around)):
                due.append((key, around))
        image_channels = backend.spec.intensity.image_channels
        for start in range(0, len(due), self.batch_size):
            chunk = due[start:start + self.batch_size]
            t0 = time.perf_counter()
            inputs = np.stack([with_neighbours(progress.held[key][0], [
                progress.held[j][0] for j in around], image_channels) for key, around in chunk])
            try:
                lesion, tumour = backend.infer(inputs)
            except ScansideError as error:
                progress.failure = str(error)
                return
            progress.timings_ms["infer"] += (time.perf_counter() - t0) * 1e3
            for (key, around), p_lesion, p_tumour in zip(chunk, lesion, tumour, strict=True):
                progress.seen_with[key] = around
                image, grid, _ = progress.held[key] if k else progress.held.pop(key)
                self._record(progress, backend, key, image, grid, p_lesion, p_tumour,
                             not final and key in progress.alerting)

    def _record(self, progress: Progress, backend: Backend, key: str, image: np.ndarray,
                grid: SliceGrid, p_lesion: np.ndarray, p_tumour: np.ndarray,
                alerts: bool) -> None:
        """Keep what the network said about one slice; raise a provisional alert if due."""
        prediction = SlicePrediction(key, to_u8(p_lesion[0]), float(p_tumour[0]), grid,
                                     image_u8(image, backend.spec.intensity))
        first = key not in progress.predictions
        progress.predictions[key] = prediction
        if prediction.lesion_u8.max() >= round(backend.spec.thresholds.lesion_probability * 255):
            progress.previews[key] = preview(image)
        if alerts:
            self._provisional(progress, prediction, backend)
        if self.board and first:
            self.board.record_analysed(progress.series_uid)

    def _provisional(self, progress: Progress, prediction: SlicePrediction,
                     backend: Backend) -> None:
        thresholds = backend.spec.thresholds
        for lesion in lesions_on_slice(prediction, backend.spec):
            if lesion.probability < thresholds.provisional_probability \
                    or lesion.diameter_mm < thresholds.provisional_diameter_mm:
                continue
            known = next((k for k in progress.provisional if np.linalg.norm(
                np.subtract(k["center_mm"], lesion.center_mm)) <= max(
                10.0, 0.75 * max(k["diameter_mm"], lesion.diameter_mm))), None)
            if known is not None:                    # the same lesion on a neighbouring slice
                known["center_mm"], known["diameter_mm"] = lesion.center_mm, lesion.diameter_mm
                continue
            finding = {"center_mm": [round(c, 2) for c in lesion.center_mm],
                       "diameter_mm": round(lesion.diameter_mm, 2), "volume_mm3": None,
                       "probability": round(lesion.probability, 4),
                       "slices": [len(progress.predictions) - 1] * 2}
            message = alert_message(
                self.publishing, kind="provisional", findings=[finding],
                result_or_series={"series_uid": progress.series_uid,
                                  "study_uid": progress.study_uid,
                                  "modality": progress.modality},
                version=progress.version, supersedes=[], at=self._now(),
                key=prediction.instance_key, slice_index=len(progress.predictions) - 1,
                patient=progress.patient)
            self.outbox.add(message, self.wall_clock())   # stored first: a failed write
            progress.provisional.append({"alert_id": message.message_id,   # loses nothing
                                         "center_mm": lesion.center_mm,
                                         "diameter_mm": lesion.diameter_mm})
            self.notify()
            if self.board:
                self.board.record_alert(json.loads(message.payload))
            log.info("provisional alert: %s series %s, %.0f mm, p=%.2f", progress.modality,
                     progress.series_uid, lesion.diameter_mm, lesion.probability)

    def _complete(self, state: SeriesState) -> None:
        progress = self.progress.get(state.series_uid) or Progress(
            state.series_uid, state.study_uid, state.modality, state.version, Patient())
        backend = self.backend_for(state.modality)
        if backend is not None and progress.failure is None and state.geometry is not None:
            self._infer_held(backend, progress, [state.planes[i].instance_key
                                                 for i in state.geometry.order], final=True)
        started = time.perf_counter()
        result = self._result(state, progress, backend)
        timings = dict(progress.timings_ms, postprocess=(time.perf_counter() - started) * 1e3)
        result = SeriesResult(result.series_uid, result.study_uid, result.modality,
                              result.status, result.reason, result.findings, timings,
                              state.version, state.n_planes)
        messages = self._publish(state, progress, result, backend)
        self.analysed += 1
        self.last_result = result
        if self.board:
            for message in messages[1:]:
                self.board.record_alert(json.loads(message.payload))
            self.board.record_result(json.loads(messages[0].payload), timings,
                                     self._images(state, progress, result, backend))

    def _images(self, state: SeriesState, progress: Progress, result: SeriesResult,
                backend: Backend | None) -> dict[str, bytes] | None:
        """Overlays of a positive series: its key slice and each slice with a lesion."""
        if not result.findings or backend is None:
            return None
        keys = [state.planes[i].instance_key for i in state.geometry.order]
        threshold = backend.spec.thresholds.lesion_probability
        images: dict[str, bytes] = {}
        slices = sorted({k for f in result.findings for k in range(f.slices[0], f.slices[1] + 1)})
        for k in slices[:MAX_OVERLAYS]:
            if keys[k] in progress.previews:
                images[f"slice-{k}"] = overlay_png(progress.previews[keys[k]],
                                                   progress.predictions[keys[k]].lesion_u8,
                                                   threshold, 384, f"slice {k}")
        key = keys[result.findings[0].key_slice]
        if key in progress.previews:
            images["key"] = overlay_png(progress.previews[key],
                                        progress.predictions[key].lesion_u8, threshold, 192)
        return images

    def _result(self, state: SeriesState, progress: Progress,
                backend: Backend | None) -> SeriesResult:
        base = dict(series_uid=state.series_uid, study_uid=state.study_uid,
                    modality=state.modality, version=state.version, n_slices=state.n_planes)
        if backend is None:
            return SeriesResult(status="failed", reason=f"no model for modality "
                                f"{state.modality!r}", **base)
        if progress.failure:
            return SeriesResult(status="failed", reason=progress.failure, **base)
        geometry = state.geometry
        fatal = [str(p) for p in geometry.problems if p.kind in FATAL_PROBLEMS]
        if fatal:
            return SeriesResult(status="failed", reason="; ".join(fatal), **base)
        keys = [state.planes[i].instance_key for i in geometry.order]
        missing = [k for k in keys if k not in progress.predictions]
        if missing:
            return SeriesResult(status="failed", reason=f"{len(missing)} slices were not "
                                f"analysed (e.g. {missing[0]})", **base)
        spacing = geometry.slice_spacing_mm or state.planes[0].slice_thickness_mm or 1.0
        findings = find_lesions([progress.predictions[k] for k in keys], spacing, backend.spec)
        status, reason = verdict(findings, geometry.problems)
        return SeriesResult(status=status, reason=reason, findings=tuple(findings), **base)

    def _publish(self, state: SeriesState, progress: Progress, result: SeriesResult,
                 backend: Backend | None) -> list:
        appliance, uid = self.publishing.appliance_id, state.series_uid
        previous = message_id(appliance, uid, state.version - 1, "result") \
            if state.version > 1 else None
        model = {"name": backend.spec.name, "version": backend.spec.version,
                 "backend": backend.name} if backend else {}
        completed_at = None if state.completed_at is None else self._now(
            ago_s=time.monotonic() - state.completed_at)      # the assembler's clock
        messages = [result_message(self.publishing, result, supersedes=previous, model=model,
                                   completed_by=state.completed_by, at=self._now(),
                                   completed_at=completed_at, patient=progress.patient)]
        earlier_final = [a["alert_id"] for a in self.outbox.of_series(uid, "final")
                         if a["version"] < state.version]
        superseded = [p["alert_id"] for p in progress.provisional] + earlier_final[-1:]
        if result.findings or superseded:
            messages.append(alert_message(
                self.publishing, kind="final", result_or_series=result.to_json(),
                findings=[f.to_json() for f in result.findings], version=state.version,
                supersedes=superseded, at=self._now(), patient=progress.patient))
        now = self.wall_clock()
        with transaction(self.outbox.conn):    # result, final alert and status: all or nothing
            for message in messages:
                self.outbox.add(message, now)
            self.store.analysed(uid, state.version, messages[0].message_id, now)
        self.notify()
        log.info("series %s version %d: %s%s", uid, state.version, result.status.upper(),
                 f" ({result.reason})" if result.status == "failed" else
                 f", {len(result.findings)} lesions" if result.findings else "")
        return messages

    def _now(self, ago_s: float = 0.0) -> datetime:
        return datetime.fromtimestamp(self.wall_clock() - ago_s, UTC)

