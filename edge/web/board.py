"""The status board: what the appliance's threads report, as the page and /metrics show it.

The intake, inference and publisher threads call the `record_*` methods; the web server
only reads `snapshot()`, images and metrics. Everything is behind one lock, and every
change bumps `revision`, which the live page waits on. Patient identity is kept only when
the operator allows it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

STAGES = ("read", "preprocess", "infer", "postprocess", "publish")
MAX_RECENT = 50
MAX_IMAGES = 30


class Metrics:
    """Prometheus counters, per-stage latency histograms and gauges, on their own registry."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.files = Counter("scanside_files", "Inbox files settled, by outcome",
                             ["outcome"], registry=self.registry)
        self.series = Counter("scanside_series_analysed", "Series versions analysed, by status",
                              ["status"], registry=self.registry)
        self.alerts = Counter("scanside_alerts", "Alerts raised, by kind", ["kind"],
                              registry=self.registry)
        self.stage_seconds = Histogram(
            "scanside_series_stage_seconds", "Time one series spent in each stage",
            ["stage"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.queue_depth = Gauge("scanside_queue_depth", "Events waiting for inference",
                                 registry=self.registry)
        self.outbox_backlog = Gauge("scanside_outbox_backlog", "Messages not yet acknowledged",
                                    registry=self.registry)
        self.in_progress = Gauge("scanside_series_in_progress", "Series being received",
                                 registry=self.registry)


@dataclass
class Arriving:
    series_uid: str
    modality: str
    description: str
    patient: str
    received: int = 0
    expected: int | None = None
    analysed: int = 0
    started_at: float = field(default_factory=time.time)
    last_at: float = field(default_factory=time.time)


class StatusBoard:
    def __init__(self, appliance_id: str, version: str, include_patient: bool = False):
        self.appliance_id, self.version = appliance_id, version
        self.include_patient = include_patient
        self.metrics = Metrics()
        self.started_at = time.time()
        self.revision = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._health: dict = {"models": {}, "broker": {"url": "", "connected": False},
                              "inbox": "", "state_dir": "", "last_error": None,
                              "state": "starting", "detail": ""}
        self._arriving: dict[str, Arriving] = {}
        self._results: deque = deque(maxlen=MAX_RECENT)
        self._alerts: deque = deque(maxlen=MAX_RECENT)
        self._last_timings: dict = {}
        self._quarantine: deque = deque(maxlen=MAX_RECENT)
        self._images: OrderedDict = OrderedDict()       # (series, version) -> {name: png}
        self._pending_publish: dict[str, tuple[str, float]] = {}

    # written by the threads -----------------------------------------------------------

    def _bump(self) -> None:
        self.revision += 1
        self._changed.notify_all()

    def record_health(self, **values) -> None:
        with self._lock:
            self._health.update(values)
            self._bump()

    def record_slice(self, series_uid: str, modality: str, description: str, patient: str,
                     expected: int | None, read_ms: float) -> None:
        with self._lock:
            arriving = self._arriving.get(series_uid)
            if arriving is None:
                arriving = self._arriving[series_uid] = Arriving(
                    series_uid, modality, description,
                    patient if self.include_patient else "")
            arriving.received += 1
            arriving.expected = expected
            arriving.last_at = time.time()
            self.metrics.files.labels("accepted").inc()
            self.metrics.in_progress.set(len(self._arriving))
            self._bump()

    def record_analysed(self, series_uid: str, count: int = 1) -> None:
        with self._lock:
            if series_uid in self._arriving:
                self._arriving[series_uid].analysed += count
                self._bump()

    def record_file(self, outcome: str, path: str = "", reason: str = "") -> None:
        with self._lock:
            self.metrics.files.labels(outcome).inc()
            if outcome in ("quarantined", "conflict"):
                self._quarantine.appendleft({"path": path, "reason": reason, "at": time.time()})
            self._bump()

    def record_alert(self, payload: dict) -> None:
        with self._lock:
            self.metrics.alerts.labels(payload["kind"]).inc()
            self._alerts.appendleft(_public(payload))
            self._bump()

    def record_result(self, payload: dict, timings_ms: dict, images: dict | None) -> None:
        with self._lock:
            self.metrics.series.labels(payload["status"]).inc()
            for stage in STAGES[:-1]:
                self.metrics.stage_seconds.labels(stage).observe(timings_ms.get(stage, 0) / 1e3)
            self._pending_publish[payload["result_id"]] = (payload["series_uid"], time.time())
            self._last_timings = {k: round(timings_ms.get(k, 0.0), 1) for k in STAGES[:-1]}
            self._arriving.pop(payload["series_uid"], None)
            self.metrics.in_progress.set(len(self._arriving))
            self._results.appendleft(_public(payload))
            if images:
                key = (payload["series_uid"], payload["version"])
                self._images[key] = images
                self._images.move_to_end(key)
                while len(self._images) > MAX_IMAGES:
                    self._images.popitem(last=False)
            self._bump()

    def record_sent(self, message_id: str) -> None:
        """A message was acknowledged by the broker; results close their publish stage."""
        with self._lock:
            pending = self._pending_publish.pop(message_id, None)
            if pending is not None:
                seconds = time.time() - pending[1]
                self.metrics.stage_seconds.labels("publish").observe(seconds)
                self._last_timings["publish"] = round(seconds * 1e3, 1)
                self._bump()

    def record_queues(self, queue_depth: int, outbox_backlog: int) -> None:
        self.metrics.queue_depth.set(queue_depth)
        self.metrics.outbox_backlog.set(outbox_backlog)

    def restore(self, results: list[dict], alerts: list[dict]) -> None:
        """Recent history from the outbox after a restart (newest first); no counters."""
        with self._lock:
            self._results.extend(_public(p) for p in results)
            self._alerts.extend(_public(p) for p in alerts)
            self._bump()

    # read by the web server -----------------------------------------------------------

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "appliance_id": self.appliance_id, "version": self.version,
                "revision": self.revision, "started_at": self.started_at,
                "health": dict(self._health),
                "arriving": [vars(a).copy() for a in sorted(self._arriving.values(),
                                                            key=lambda a: -a.last_at)],
                "results": list(self._results),
                "alerts": list(self._alerts),
                "last_series_timings_ms": dict(self._last_timings),
                "quarantine": list(self._quarantine),
            }

    def image(self, series_uid: str, name: str) -> bytes | None:
        with self._lock:
            for (uid, _), images in reversed(self._images.items()):
                if uid == series_uid and name in images:
                    return images[name]
        return None

    def wait_for_change(self, revision: int, timeout: float) -> int:
        with self._changed:
            self._changed.wait_for(lambda: self.revision != revision, timeout)
            return self.revision


def _public(payload: dict) -> dict:
    """What the page shows of a message: everything but the appliance's own bookkeeping."""
    return {k: v for k, v in payload.items() if k not in ("appliance_id",)}
