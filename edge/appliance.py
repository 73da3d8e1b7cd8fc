"""`scanside run`: the appliance. The one module that knows every stage.

    inbox -> watcher (hint) + rescan -> intake thread (reader workers, journal, series)
          -> bounded queue -> inference thread (backends, per-series state, outbox)
          -> publisher thread (MQTT, acknowledged = sent)

The main thread supervises: it restarts a watcher that died, exits non-zero if a stage
thread died (systemd restarts the service, which resumes from the journal and outbox),
pings the systemd watchdog only while both stage threads show fresh heartbeats, and on
SIGTERM drains: the intake stops taking files, the inference thread finishes what is
queued, the publisher sends what the outbox holds, and `offline` is published.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import signal
import socket
import sqlite3
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from edge import __version__
from edge.backends.select import choose, open_backend, probe
from edge.config import Config
from edge.delivery.broker import EmbeddedBroker
from edge.delivery.outbox import Outbox
from edge.delivery.payloads import Message, Publishing, status_message
from edge.delivery.publisher import BrokerAddress, Credentials, Publisher, parse_broker_url
from edge.errors import ConfigError, ScansideError
from edge.inference.zoo import DEFAULT_ZOO
from edge.ingest.intake import Admitted, Intake
from edge.ingest.journal import Journal
from edge.ingest.workers import ReaderPool
from edge.series.assembler import Admission, SeriesAssembler
from edge.state import connect
from edge.stream.analyzer import StreamingAnalyzer
from edge.stream.store import SeriesStore
from edge.stream.watcher import InboxWatcher
from edge.systemd import notify, watchdog_interval_s
from edge.web.board import StatusBoard

log = logging.getLogger("scanside.appliance")


@dataclass
class Health:
    """What the status topic and page report, updated by the threads."""

    models: dict = field(default_factory=dict)          # modality -> name, version, backend
    heartbeats: dict = field(default_factory=dict)      # thread -> monotonic time
    storage: dict = field(default_factory=dict)         # thread -> state write failing now
    analysed: int = 0

    def storage_failed(self, stage: str, error: Exception) -> bool:
        """Note a failed write; True the first time (worth a log line)."""
        first = stage not in self.storage
        self.storage[stage] = f"{type(error).__name__}: {error}"
        return first

    def storage_recovered(self, stage: str) -> None:
        if self.storage.pop(stage, None) is not None:
            log.info("the %s stage can write its state again", stage)


class Appliance:
    def __init__(self, config: Config):
        self.config = config
        self.publishing = Publishing(config.appliance.id,
                                     config.mqtt.prefix(config.appliance.id),
                                     config.privacy.include_patient_identifiers)
        self.events: queue.Queue = queue.Queue(maxsize=256)
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.intake_done = threading.Event()
        self.backends_loaded = threading.Event()
        self.health = Health()
        self.crash: BaseException | None = None
        self.broker: EmbeddedBroker | None = None
        self.publisher: Publisher | None = None
        self._status_state = ""
        self.board = StatusBoard(config.appliance.id, __version__,
                                 config.privacy.include_patient_identifiers)
        logging.getLogger("scanside").addHandler(_LastError(self.board))

    # the main thread ------------------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; 0 after a clean stop, 1 if a stage crashed."""
        config = self.config
        config.paths.inbox.mkdir(parents=True, exist_ok=True)
        config.paths.state_dir.mkdir(parents=True, exist_ok=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        listener = self._listen()           # before anything starts: a taken port stops it
        with closing(connect(config.paths.state_dir)) as conn:   # the page outlives a restart
            outbox = Outbox(conn)
            self.board.restore(
                [json.loads(s.message.payload) for s in outbox.recent(("result",), 50)],
                [json.loads(s.message.payload) for s in outbox.recent(("provisional", "final"),
                                                                      50)])
        address = self._broker_address()
        self.publisher = Publisher(
            config.paths.state_dir, address, f"scanside-{config.appliance.id}",
            online=lambda: self._status(self._state()[0]), will=self._status("offline"),
            credentials=Credentials(config.mqtt.username, config.mqtt.password_file,
                                    config.mqtt.ca_file, config.mqtt.cert_file,
                                    config.mqtt.key_file),
            keepalive_s=config.mqtt.keepalive_s, max_inflight=config.mqtt.max_inflight,
            on_sent=self.board.record_sent)
        self.publisher.start()
        web = self._web_server(listener)
        pool = ReaderPool.from_config(config)
        threads = [self._thread("inference", self._inference),
                   self._thread("intake", self._intake, pool)]
        watcher = InboxWatcher(config.paths.inbox, self.wake)
        watcher.start()
        while not (self.backends_loaded.is_set() or self.stopping.is_set() or self.crash):
            time.sleep(0.05)
        notify("READY=1")
        log.info("scanside %s running: inbox %s, broker %s, topics %s/...", __version__,
                 config.paths.inbox, address.url, self.publishing.topic_prefix)
        try:
            self._supervise(threads, watcher)
        finally:
            self._shut_down(threads, watcher, pool)
            web.should_exit = True
        return 1 if self.crash else 0

    def _listen(self) -> socket.socket:
        """The status page's socket, bound to `[web] listen`. An address this box cannot
        bind (a port in use, a host that is not its own) is a start-up error, never an
        appliance running without its page; port 0 takes any free port, logged."""
        web = self.config.web
        listener = socket.socket(socket.AF_INET6 if ":" in web.host else socket.AF_INET)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # restart in TIME_WAIT
        try:
            listener.bind((web.host, web.port))
        except OSError as error:
            listener.close()
            raise ConfigError(f"[web] listen = {web.listen!r}: the status page cannot listen "
                              f"there: {error.strerror or error}; expected an address of "
                              "this machine with a free port (`--listen HOST:PORT` or "
                              "[web] listen in the config)") from error
        host, port = listener.getsockname()[:2]
        log.info("status page on http://%s/",
                 f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        return listener

    def _web_server(self, listener: socket.socket):
        """The status page, /metrics and the probes, served on `listener` in a thread of
        their own."""
        import uvicorn

        from edge.web.app import create_app

        web = self.config.web
        token = web.token_file.read_text().strip() if web.token_file else None
        app = create_app(self.board, token, self._ready)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="web",
                         daemon=True).start()
        return server

    def _ready(self) -> tuple[bool, str]:
        if self.stopping.is_set():
            return False, "stopping"
        if not self.backends_loaded.is_set():
            return False, "loading models"
        return True, ""

    def _broker_address(self) -> BrokerAddress:
        if self.config.mqtt.broker:
            return parse_broker_url(self.config.mqtt.broker)
        self.broker = EmbeddedBroker("127.0.0.1", self.config.mqtt.embedded_port)
        self.broker.start()
        return BrokerAddress("127.0.0.1", self.config.mqtt.embedded_port, False)

    def _thread(self, name: str, target, *args) -> threading.Thread:
        def guarded():
            try:
                target(*args)
            except BaseException as error:  # a programming error: stop, systemd restarts us
                log.exception("the %s thread crashed", name)
                self.crash = error
                self.stopping.set()
        thread = threading.Thread(target=guarded, name=name, daemon=True)
        self.health.heartbeats[name] = time.monotonic()
        thread.start()
        return thread

    def _supervise(self, threads: list[threading.Thread], watcher: InboxWatcher) -> None:
        interval = watchdog_interval_s()
        last_ping = 0.0
        while not self.stopping.wait(0.5):
            if not watcher.alive():
                watcher.restart()
            if not all(t.is_alive() for t in threads):
                self.crash = self.crash or RuntimeError("a stage thread ended")
                return
            now = time.monotonic()
            moving = all(now - beat < (interval or 60) / 2
                         for beat in self.health.heartbeats.values())
            if interval and moving and now - last_ping >= interval / 3:
                notify("WATCHDOG=1")
                last_ping = now
            state, detail = self._state()
            if state != self._status_state:
                self._status_state = state
                self.publisher.set_status(self._status(state))
            self._report_health(state, detail)
            notify(f"STATUS={state}: {self.health.analysed} series analysed, outbox "
                   f"{self.publisher.backlog()} unsent{'; ' + detail if detail else ''}")

    def _shut_down(self, threads, watcher: InboxWatcher, pool: ReaderPool) -> None:
        notify("STOPPING=1")
        log.info("stopping: finishing the work in hand")
        self.stopping.set()
        watcher.stop()
        self.intake_done.wait(timeout=30)
        for thread in threads:
            thread.join(timeout=60)
        pool.close()
        left = self.publisher.stop(drain_s=10, offline=self._status("offline"))
        if left:
            log.warning("%d messages could not be sent before stopping; they are kept in the "
                        "outbox and sent after the next start", left)
        if self.broker:
            self.broker.stop()

    # health and status ---------------------------------------------------------------

    def _report_health(self, state: str, detail: str) -> None:
        paths = self.config.paths
        backlog = self.publisher.backlog()
        self.board.record_queues(self.events.qsize(), backlog)
        health = {"state": state, "detail": detail, "models": dict(self.health.models),
                  "broker": {"url": self.publisher.address.url,
                             "connected": self.publisher.connected.is_set(),
                             "error": self.publisher.last_error},
                  "inbox": str(paths.inbox), "state_dir": str(paths.state_dir),
                  "inbox_free": _gib(shutil.disk_usage(paths.inbox).free),
                  "state_free": _gib(shutil.disk_usage(paths.state_dir).free),
                  "outbox_backlog": backlog}
        if health != getattr(self, "_last_health", None):
            self._last_health = health
            self.board.record_health(**health)

    def _state(self) -> tuple[str, str]:
        problems = [f"{m} model: {info['error']}" for m, info in self.health.models.items()
                    if "error" in info]
        problems += [f"{stage} cannot write the state directory: {error}"
                     for stage, error in list(self.health.storage.items())]
        minimum = self.config.health.min_free_mb << 20
        for path in {self.config.paths.inbox, self.config.paths.state_dir}:
            try:
                free = shutil.disk_usage(path).free
            except OSError as error:
                problems.append(f"{path} cannot be checked: {error.strerror}")
                continue
            if free < minimum:
                problems.append(f"only {free >> 20} MiB free under {path}")
        return ("degraded" if problems else "online"), "; ".join(problems)

    def _status(self, state: str) -> Message:
        detail = self._state()[1] if state != "offline" else None
        models = {m: {k: v for k, v in info.items()} for m, info in self.health.models.items()}
        return status_message(self.publishing, state, version=__version__, models=models,
                              at=datetime.now(UTC), detail=detail or None)

    # the intake thread ---------------------------------------------------------------

    def _intake(self, pool: ReaderPool) -> None:
        config = self.config
        journal = Journal(config.paths.state_dir)
        intake = Intake(config, pool, journal, SeriesAssembler.from_config(config),
                        SeriesStore(journal.conn),   # one connection: one transaction
                        report=self.board.record_file)
        self._put(intake.restore_unfinished(time.monotonic()))
        next_rescan = next_check = time.monotonic()
        while not self.stopping.is_set():
            woken = self.wake.is_set()
            if woken:
                self.wake.clear()
                time.sleep(0.05)                      # let a burst of events settle
            now = time.monotonic()                    # after: completion times are exact
            self.health.heartbeats["intake"] = now
            scan = woken or now >= next_rescan or now >= next_check
            if now >= next_rescan:
                next_rescan = now + config.ingest.rescan_s
            try:
                self._put(intake.poll(now, scan))
            except (sqlite3.Error, OSError) as error:   # cannot record: accept nothing new
                if self.health.storage_failed("intake", error):
                    log.error("intake paused: the state directory cannot be written (%s)", error)
                self.stopping.wait(1.0)
                continue
            self.health.storage_recovered("intake")
            if scan:
                next_check = intake.next_scan(now)
            wait = 0.02 if intake.busy else min(next_rescan, next_check, now + 1.0) - now
            self.wake.wait(max(0.0, wait))
        self.intake_done.set()

    def _put(self, events: list) -> None:
        for event in events:
            if isinstance(event, Admitted) and event.admission is not Admission.RESTORED:
                header, series = event.slices[0].header, event.series
                self.board.record_slice(series.series_uid, series.modality,
                                        header.series_description, header.patient.name,
                                        series.expected_count, event.read_ms)
            while True:                                # back-pressure, but never deadlock
                try:
                    self.events.put(event, timeout=0.5)
                    break
                except queue.Full:
                    self.health.heartbeats["intake"] = time.monotonic()

    # the inference thread ------------------------------------------------------------

    def _inference(self) -> None:
        config = self.config
        backends = self._load_backends()
        conn = connect(config.paths.state_dir)
        analyzer = StreamingAnalyzer(backends.get, Outbox(conn), SeriesStore(conn),
                                     self.publishing, self.publisher.notify,
                                     config.models.batch_size, board=self.board)
        self.backends_loaded.set()
        try:
            while True:
                self.health.heartbeats["inference"] = time.monotonic()
                try:
                    first = self.events.get(timeout=0.5)
                except queue.Empty:
                    if self.intake_done.is_set():
                        return
                    continue
                batch = [first]
                while len(batch) < 64:
                    try:
                        batch.append(self.events.get_nowait())
                    except queue.Empty:
                        break
                self._analyse(analyzer, batch)
                self.health.analysed = analyzer.analysed
        finally:
            for backend in backends.values():
                backend.close()
            conn.close()

    def _analyse(self, analyzer: StreamingAnalyzer, batch: list) -> None:
        """Handle a batch; while the state cannot be written, keep it and try again (the
        queue fills and the intake waits). Handling a batch twice is harmless: ids are
        deterministic and the outbox keeps one copy of each."""
        while True:
            try:
                analyzer.handle(batch)
                self.health.storage_recovered("inference")
                return
            except (sqlite3.Error, OSError) as error:
                if self.health.storage_failed("inference", error):
                    log.error("results wait: the state directory cannot be written (%s)",
                              error)
                if self.stopping.wait(1.0):
                    return          # the journal has the files: the next start restores them

    def _load_backends(self) -> dict:
        """Every modality in the zoo with the backend `models.backend` picks; a model that
        cannot load leaves the appliance degraded, its series failed with the reason."""
        zoo = self.config.models.zoo or DEFAULT_ZOO
        engines = self.config.models.engines or self.config.paths.state_dir / "engines"
        facts = probe()
        backends = {}
        if not Path(zoo).is_dir():
            log.error("no model folder at %s: every series will fail", zoo)
            self.health.models["all"] = {"error": f"no model folder at {zoo}"}
            return backends
        for folder in sorted(p for p in Path(zoo).iterdir() if (p / "model.onnx").exists()):
            try:
                backend = open_backend(choose(self.config.models.backend, folder, engines, facts),
                                       self.config.models.threads)
            except ScansideError as error:
                log.error("%s model cannot be used: %s", folder.name, error)
                self.health.models[folder.name] = {"error": str(error)}
                continue
            backends[folder.name] = backend
            self.health.models[folder.name] = {
                "name": backend.spec.name, "version": backend.spec.version,
                "backend": backend.name, "why": backend.why}
        return backends


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


class _LastError(logging.Handler):
    """Puts the latest warning or error the appliance logged on the status page."""

    def __init__(self, board: StatusBoard):
        super().__init__(logging.WARNING)
        self.board = board

    def emit(self, record: logging.LogRecord) -> None:
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="seconds")
        self.board.record_health(last_error=f"{stamp} {record.getMessage()}")
