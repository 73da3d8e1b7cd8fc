"""The ingest stage: inbox files in, admitted slices out.

Ready files go to the sandboxed reader pool; each outcome is settled exactly once:
accepted slices join their series (and the journal), duplicates are journaled and left in
place, conflicting and unreadable files are quarantined with their reason, and files that
still look unfinished are retried until they have been unchanged for the grace period.
This is the one place where ingest failures are caught and recorded.
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
from edge.values import Slice

log = logging.getLogger("scanside.ingest")

RETRY_INCOMPLETE_S = 1.0


@dataclass(frozen=True)
class Admitted:
    """The slices of one file that joined a series."""

    slices: tuple[Slice, ...]
    admission: Admission          # NEW or REOPENED
    series: SeriesState


class Intake:
    """Turns inbox files into admitted slices. Call `poll(now)` repeatedly."""

    def __init__(self, config: Config, pool: ReaderPool, journal: Journal,
                 assembler: SeriesAssembler, wall_clock: Callable[[], float] = time.time):
        self.config, self.pool, self.journal, self.assembler = config, pool, journal, assembler
        self.wall_clock = wall_clock
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

    def poll(self, now: float) -> list[Admitted]:
        """Submit files that became ready, settle reads that finished."""
        for path, signature in self.inbox.ready(now):
            if len(self._pending) >= self.max_pending:
                break
            if path not in self._pending:
                self._pending[path] = (signature, self.pool.submit(path))
        admitted = []
        for path, (signature, future) in list(self._pending.items()):
            if future.done():
                del self._pending[path]
                result = self._settle(path, signature, future.result(), now)
                if result is not None:
                    admitted.append(result)
        return admitted

    def _settle(self, path: str, signature: FileSignature, outcome: ReadOutcome,
                now: float) -> Admitted | None:
        if _signature(path) != signature:
            return None  # changed while being read: the inbox offers it again once stable
        if outcome.rejection is not None:
            self._reject(path, signature, outcome.rejection.kind, outcome.rejection.reason, now)
            return None
        self._incomplete_since.pop(path, None)
        headers = [s.header for s in outcome.slices]
        first = headers[0]
        journaled = self.journal.accepted_with_uid(first.sop_instance_uid)
        if journaled is not None and journaled.path != path:
            admission, earlier = Admission.REPEAT, journaled.path   # seen before a restart
        else:
            admission, state = self.assembler.add(headers, now)
            earlier = state.path if admission is Admission.REPEAT else None
        entry = dict(path=path, signature=signature, sop_instance_uid=first.sop_instance_uid,
                     series_uid=first.series_uid, frames=len(headers))
        if admission is not Admission.REPEAT:
            self._finish(JournalEntry(status="accepted", **entry))
            return Admitted(outcome.slices, admission, state)
        if same_bytes(earlier, path):
            log.info("duplicate ignored: %s repeats %s", path, earlier)
            self._finish(JournalEntry(status="duplicate", reason=f"same bytes as {earlier}",
                                      **entry))
        else:
            self._quarantine(path, signature, f"SOPInstanceUID {first.sop_instance_uid} was "
                             f"already received from {earlier} with different content (or "
                             "that file is gone and the two cannot be compared)",
                             status="conflict")
        return None

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

    def _finish(self, entry: JournalEntry) -> None:
        self.journal.record(entry, self.wall_clock())
        self.inbox.finish(entry.path, entry.signature)


def _signature(path: str) -> FileSignature | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return FileSignature(st.st_size, st.st_mtime_ns)
