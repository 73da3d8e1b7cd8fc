"""The ingest stage: inbox files in, events for the inference thread out.

Ready files go to the sandboxed reader pool; each outcome is settled exactly once:
accepted slices join their series (and the journal), duplicates are journaled and left in
place, conflicting and unreadable files are quarantined with their reason, and files that
still look unfinished are retried until they have been unchanged for the grace period.
This is the one place where ingest failures are caught and recorded.

Events, in the order they happen: `Admitted` (slices joined a series), `Completed` (a
series is complete: by its count as its last slice arrives, or by the quiet period) and
`Forgotten` (a finished series left memory). A series known from before a restart, or
forgotten, is first restored from the journal: its earlier files are read again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from edge.config import Config
from edge.ingest.inbox import Inbox, same_bytes
from edge.ingest.journal import FileSignature, Journal, JournalEntry
from edge.ingest.quarantine import quarantine
from edge.ingest.workers import ReaderPool, ReadOutcome
from edge.series.assembler import Admission, SeriesAssembler, SeriesState
from edge.state import transaction
from edge.stream.store import SeriesRecord, SeriesStore
from edge.values import Slice

log = logging.getLogger("scanside.ingest")

RETRY_INCOMPLETE_S = 1.0


@dataclass(frozen=True)
class Admitted:
    """Slices that joined a series: one file's, or a whole restored series'."""

    slices: tuple[Slice, ...]
    admission: Admission          # NEW, REOPENED or RESTORED
    series: SeriesState
    missing: tuple[str, ...] = ()  # RESTORED: journaled files no longer in the inbox
    read_ms: float = 0.0

@dataclass(frozen=True)
class Completed:
    series: SeriesState


@dataclass(frozen=True)
class Forgotten:
    series_uid: str


class Intake:
    """Turns inbox files into admitted slices. Call `poll(now)` repeatedly."""

    def __init__(self, config: Config, pool: ReaderPool, journal: Journal,
                 assembler: SeriesAssembler, store: SeriesStore | None = None,
                 wall_clock: Callable[[], float] = time.time,
                 report: Callable[[str, str, str], None] | None = None):
        """`report(outcome, path, reason)` hears of every file settled without slices
        (duplicate, conflict, quarantined): the status page lists them."""
        self.config, self.pool, self.journal, self.assembler = config, pool, journal, assembler
        self.store, self.wall_clock = store, wall_clock
        self.report = report or (lambda outcome, path, reason: None)
        self.quarantine_dir = config.paths.quarantine_dir
        self.inbox = Inbox(config.paths.inbox, config.ingest.ignore, config.ingest.stable_s,
                           finished=journal.signatures(), skip=[self.quarantine_dir])
        self.max_pending = 4 * config.ingest.workers
        self._pending: dict[str, tuple[FileSignature, Future[ReadOutcome]]] = {}
        self._incomplete_since: dict[str, tuple[FileSignature, float]] = {}

    @property
    def busy(self) -> bool:
        """True while files are being read."""
        return bool(self._pending)

    def poll(self, now: float, scan: bool = True) -> list[Admitted | Completed | Forgotten]:
        """Submit files that became ready (when `scan`), settle reads that finished, and
        report series that completed or were forgotten."""
        if scan:
            for path, signature in self.inbox.ready(now):
                if len(self._pending) >= self.max_pending:
                    break
                if path not in self._pending:
                    self._pending[path] = (signature, self.pool.submit(path))
        events: list[Admitted | Completed | Forgotten] = []
        for path, (signature, future) in list(self._pending.items()):
            if future.done():
                del self._pending[path]
                events += self._settle(path, signature, future.result(), now)
        events += [Completed(state) for state in self.assembler.due(now)]
        forget_after = self.config.series.forget_after_s
        for uid, state in list(self.assembler.series.items()):
            if state.complete and now - state.completed_at >= forget_after:
                self.assembler.forget(uid)
                events.append(Forgotten(uid))
        return events

    def next_scan(self, now: float) -> float:
        """When a file under watch becomes stable or may be retried (monotonic)."""
        return self.inbox.next_due(now)

    def restore_unfinished(self, now: float) -> list[Admitted | Completed]:
        """At start-up: bring back every series a restart interrupted."""
        events: list[Admitted | Completed] = []
        for record in self.store.unfinished() if self.store else []:
            events += self._restore(record, now)
        return events

    def _restore(self, record: SeriesRecord, now: float,
                 exclude: str = "") -> list[Admitted | Completed]:
        paths = [e.path for e in self.journal.entries(record.series_uid)
                 if e.status == "accepted" and e.path != exclude]
        outcomes = [future.result() for future in [self.pool.submit(p) for p in paths]]
        files = [o.slices for o in outcomes if o.slices]
        missing = tuple(o.path for o in outcomes if not o.slices)
        if not files:
            return []
        state = self.assembler.restore([[s.header for s in f] for f in files], record.version,
                                       record.status == "analysed", now)
        log.info("restored series %s version %d from %d journaled files (%d missing)",
                 record.series_uid, record.version, len(files), len(missing))
        return [Admitted(tuple(s for f in files for s in f), Admission.RESTORED, state, missing)]

    def _settle(self, path: str, signature: FileSignature, outcome: ReadOutcome,
                now: float) -> list[Admitted | Completed]:
        if _signature(path) != signature:
            return []  # changed while being read: the inbox offers it again once stable
        if outcome.rejection is not None:
            self._reject(path, signature, outcome.rejection.kind, outcome.rejection.reason, now)
            return []
        self._incomplete_since.pop(path, None)
        headers = [s.header for s in outcome.slices]
        first = headers[0]
        events: list[Admitted | Completed] = []
        if self.store and first.series_uid not in self.assembler.series:
            record = self.store.get(first.series_uid)
            if record is not None:      # known before a restart, or forgotten: restore it
                events += self._restore(record, now, exclude=path)
        journaled = self.journal.accepted_with_uid(first.sop_instance_uid)
        if journaled is not None and journaled.path != path:
            admission, earlier = Admission.REPEAT, journaled.path   # seen before a restart
        else:
            admission, seen = self.assembler.verdict(headers)
            earlier = seen.path if seen is not None else None
        entry = dict(path=path, signature=signature, sop_instance_uid=first.sop_instance_uid,
                     series_uid=first.series_uid, frames=len(headers))
        if admission is not Admission.REPEAT:
            self._accept(JournalEntry(status="accepted", **entry), admission, first)
            admission, state = self.assembler.add(headers, now)   # recorded: now act on it
            events.append(Admitted(outcome.slices, admission, state, read_ms=outcome.read_ms))
            if state.complete:
                events.append(Completed(state))
            return events
        if same_bytes(earlier, path):
            log.info("duplicate ignored: %s repeats %s", path, earlier)
            self._finish(JournalEntry(status="duplicate", reason=f"same bytes as {earlier}",
                                      **entry))
            self.report("duplicate", path, f"same bytes as {earlier}")
        else:
            self._quarantine(path, signature, f"SOPInstanceUID {first.sop_instance_uid} was "
                             f"already received from {earlier} with different content (or "
                             "that file is gone and the two cannot be compared)",
                             status="conflict")
        return events

    def _accept(self, entry: JournalEntry, admission: Admission, first) -> None:
        """Journal an accepted file and its series version together, or neither."""
        previous = self.assembler.series.get(first.series_uid)
        version = previous.version + (admission is Admission.REOPENED) if previous else 1
        with transaction(self.journal.conn):
            self.journal.record(entry, self.wall_clock())
            if self.store and (previous is None or admission is Admission.REOPENED):
                self.store.receiving(first.series_uid, first.study_uid, first.modality,
                                     version, self.wall_clock())
        self.inbox.finish(entry.path, entry.signature)

    def _reject(self, path: str, signature: FileSignature, kind: str, reason: str,
                now: float) -> None:
        if kind == "gone":
            self._incomplete_since.pop(path, None)
            return
        if kind == "incomplete":
            since_sig, since = self._incomplete_since.get(path, (None, now))
            if since_sig != signature:
                since = self.inbox.unchanged_since(path) or now
                self._incomplete_since[path] = (signature, since)
            grace = self.config.ingest.incomplete_grace_s
            if now - since < grace:
                self.inbox.retry_after(path, now + RETRY_INCOMPLETE_S)
                return
            reason = f"still incomplete after {grace:g} s unchanged: {reason}"
        self._incomplete_since.pop(path, None)
        self._quarantine(path, signature, reason)

    def _quarantine(self, path: str, signature: FileSignature, reason: str,
                    status: str = "quarantined") -> None:
        try:
            moved = quarantine(Path(path), reason, self.quarantine_dir,
                               datetime.fromtimestamp(self.wall_clock(), UTC))
            log.warning("quarantined %s -> %s: %s", path, moved.path, reason)
        except OSError as error:
            log.error("could not quarantine %s (%s); leaving it in place: %s",
                      path, error, reason)
        self._finish(JournalEntry(path=path, signature=signature, status=status, reason=reason))
        self.report(status, path, reason)

    def _finish(self, entry: JournalEntry) -> None:
        self.journal.record(entry, self.wall_clock())
        self.inbox.finish(entry.path, entry.signature)


def _signature(path: str) -> FileSignature | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return FileSignature(st.st_size, st.st_mtime_ns)
