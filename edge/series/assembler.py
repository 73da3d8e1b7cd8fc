"""Group slices into series and decide when a series is complete (pure; time passed in).

DICOM has no end-of-series marker. A series is complete when the count its tags promise
(ImagesInAcquisition, NumberOfSlices, NumberOfFrames) is reached with contiguous
geometry, or else after a quiet period with no new slice, set per modality and measured on
the caller's monotonic clock. A slice that arrives after completion reopens the series as
version N+1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum

from edge.config import Config
from edge.series.geometry import SeriesGeometry, analyse_geometry
from edge.values import SliceHeader


class Admission(Enum):
    """The assembler's verdict on one file."""

    NEW = "new"                # first time seen: its planes were added
    REOPENED = "reopened"      # added to a series that was already complete: version + 1
    RESTORED = "restored"      # brought back from the journal after a restart
    REPEAT = "repeat"          # its SOPInstanceUID came before, from another file: not added.
                               # The caller compares the two files: same bytes is a
                               # duplicate, other bytes a conflict.


@dataclass(frozen=True)
class SeriesState:
    """One series as received so far."""

    series_uid: str
    study_uid: str
    modality: str
    version: int                          # 1, then + 1 each time a late slice reopens it
    planes: tuple[SliceHeader, ...]       # accepted planes in arrival order
    first_at: float                       # monotonic seconds
    last_at: float
    expected_count: int | None            # when every plane's tags agree, else None
    complete: bool = False
    completed_by: str | None = None       # "expected count" or "quiet period"
    geometry: SeriesGeometry | None = None  # computed at completion
    completed_at: float | None = None     # monotonic seconds

    @property
    def n_planes(self) -> int:
        return len(self.planes)


@dataclass(frozen=True)
class Seen:
    """Where a SOPInstanceUID was first seen, for duplicate detection."""

    series_uid: str
    path: str


class SeriesAssembler:
    """Holds the series being received. Pure: no clock and no I/O; `now` is passed in."""

    def __init__(self, quiet_s: Mapping[str, float], default_quiet_s: float,
                 gap_factor: float = 1.5):
        self.quiet_s, self.default_quiet_s, self.gap_factor = quiet_s, default_quiet_s, gap_factor
        self.series: dict[str, SeriesState] = {}
        self.seen: dict[str, Seen] = {}

    @classmethod
    def from_config(cls, config: Config) -> SeriesAssembler:
        quiet = config.series.quiet_s
        return cls(quiet.by_modality(), quiet.other, config.series.gap_factor)

    def verdict(self, planes: Sequence[SliceHeader]) -> tuple[Admission, Seen | None]:
        """What `add` would say, without changing anything: the caller records the file
        first, then adds it, so a failed write leaves no half-admitted file."""
        first = planes[0]
        earlier = self.seen.get(first.sop_instance_uid)
        if earlier is not None:
            return Admission.REPEAT, earlier
        state = self.series.get(first.series_uid)
        return (Admission.REOPENED if state is not None and state.complete
                else Admission.NEW), None

    def add(self, planes: Sequence[SliceHeader],
            now: float) -> tuple[Admission, SeriesState | Seen]:
        """Admit the planes of one file. Returns the verdict and the series' new state, or
        for a REPEAT where the SOPInstanceUID was first seen."""
        first = planes[0]
        earlier = self.seen.get(first.sop_instance_uid)
        if earlier is not None:
            return Admission.REPEAT, earlier
        self.seen[first.sop_instance_uid] = Seen(first.series_uid, first.path)
        state = self.series.get(first.series_uid)
        admission = Admission.NEW
        if state is None:
            state = SeriesState(first.series_uid, first.study_uid, first.modality, 1, (),
                                now, now, None)
        elif state.complete:
            admission = Admission.REOPENED
            state = replace(state, version=state.version + 1, complete=False, completed_by=None,
                            geometry=None, completed_at=None)
        all_planes = state.planes + tuple(planes)
        state = replace(state, planes=all_planes, last_at=now,
                        expected_count=_agreed_count(all_planes))
        state = self._complete_by_count(state, now)
        self.series[state.series_uid] = state
        return admission, state

    def restore(self, files: Sequence[Sequence[SliceHeader]], version: int, complete: bool,
                now: float) -> SeriesState:
        """Bring back a series received before (from the journal) at `version`: as it was
        when analysed (`complete`), or still receiving."""
        planes = tuple(p for file in files for p in file)
        first = planes[0]
        for file in files:
            self.seen[file[0].sop_instance_uid] = Seen(first.series_uid, file[0].path)
        state = SeriesState(first.series_uid, first.study_uid, first.modality, version, planes,
                            now, now, _agreed_count(planes))
        if complete:
            state = self._completed(state, "restored", now)
        self.series[first.series_uid] = state
        return state

    def due(self, now: float) -> list[SeriesState]:
        """Series whose quiet period has just run out; they are marked complete."""
        done = []
        for uid, state in self.series.items():
            if not state.complete and now - state.last_at >= self.quiet_period(state.modality):
                state = self._completed(state, "quiet period", now)
                self.series[uid] = state
                done.append(state)
        return done

    def quiet_period(self, modality: str) -> float:
        return self.quiet_s.get(modality, self.default_quiet_s)

    def forget(self, series_uid: str) -> None:
        """Drop a finished series from memory (the journal still remembers it)."""
        self.series.pop(series_uid, None)
        self.seen = {k: v for k, v in self.seen.items() if v.series_uid != series_uid}

    def _complete_by_count(self, state: SeriesState, now: float) -> SeriesState:
        if state.expected_count is None or state.n_planes != state.expected_count:
            return state
        geometry = analyse_geometry(state.planes, self.gap_factor)
        if not geometry.contiguous:
            return state  # the count is met but the stack is broken: wait for quiet
        return replace(state, complete=True, completed_by="expected count", geometry=geometry,
                       completed_at=now)

    def _completed(self, state: SeriesState, by: str, now: float) -> SeriesState:
        return replace(state, complete=True, completed_by=by, completed_at=now,
                       geometry=analyse_geometry(state.planes, self.gap_factor))


def _agreed_count(planes: Sequence[SliceHeader]) -> int | None:
    """The expected slice count when every plane states the same one, else None."""
    counts = {p.expected_count for p in planes}
    if len(counts) != 1:
        return None
    count = counts.pop()
    return count if count is not None and count >= len(planes) else None
