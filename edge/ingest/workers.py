"""Sandboxed reader processes.

pydicom is CPU-bound Python, and a hostile file (huge declared lengths, deflate bombs,
endless loops, a crashing decoder) must cost one worker, not the appliance. Each worker
runs under an address-space limit; each file under a timeout. pebble's process pool gives
both per-task timeouts and the identity of the task whose worker died, and restarts the
worker either way.
"""

from __future__ import annotations

import multiprocessing
import resource
import signal
import time
import warnings
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from pebble import ProcessExpired, ProcessPool

from edge.config import Config
from edge.errors import DicomError, IncompleteDicomError
from edge.ingest.reader import ParsedFile, ReadLimits, parse_file
from edge.values import Slice


@dataclass(frozen=True)
class Rejection:
    """Why a file gave no slices.

    kind: "incomplete" (may still be arriving, or unreadable for now: retry until the
    grace period ends), "invalid" (quarantine it), or "gone" (the file vanished).
    """

    reason: str
    kind: str


@dataclass(frozen=True)
class ReadOutcome:
    """What reading one file gave: its slices, or why there are none."""

    path: str
    slices: tuple[Slice, ...] = ()
    rejection: Rejection | None = None
    read_ms: float = 0.0                  # in the worker: checks and decoding
    parsed: ParsedFile | None = None      # from a worker: native pixels still in the file


def read_outcome(path: str, limits: ReadLimits) -> ReadOutcome:
    """Read one file and turn every expected failure into a value (runs in a worker).

    Native pixel values are left in the file for `with_pixels` to read in the process
    that receives the outcome; compressed ones are decoded here, inside the sandbox.
    """
    start = time.perf_counter()
    try:
        parsed = parse_file(path, limits)
        slices = () if parsed.native else tuple(parsed.slices())
    except Exception as error:
        return ReadOutcome(path, rejection=_rejection(error))
    return ReadOutcome(path, slices, read_ms=(time.perf_counter() - start) * 1e3,
                       parsed=parsed if parsed.native else None)


def with_pixels(outcome: ReadOutcome) -> ReadOutcome:
    """The outcome with native pixel values read from the file (in the receiving process)."""
    if outcome.parsed is None:
        return outcome
    try:
        slices = tuple(outcome.parsed.slices())
    except Exception as error:
        return ReadOutcome(outcome.path, rejection=_rejection(error))
    return ReadOutcome(outcome.path, slices, read_ms=outcome.read_ms)


def _rejection(error: Exception) -> Rejection:
    """Every expected failure of reading a file as a value."""
    if isinstance(error, IncompleteDicomError):
        return Rejection(error.reason, "incomplete")
    if isinstance(error, DicomError):
        return Rejection(error.reason, "invalid")
    if isinstance(error, MemoryError):
        return Rejection("reading needed more memory than the reader's limit "
                         "(ingest.worker_memory_mb)", "invalid")
    if isinstance(error, FileNotFoundError):
        return Rejection("the file vanished before it was read", "gone")
    if isinstance(error, OSError):  # permissions or I/O: may be transient, so retried
        return Rejection(f"cannot be read: {error.strerror}", "incomplete")
    # a reader bug must cost one file, never the appliance
    return Rejection(f"the reader failed unexpectedly ({type(error).__name__}: {error}); "
                     "please report this file", "invalid")


def _init_worker(memory_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # A stopped appliance stops its workers; SIGINT from a terminal goes to the parent.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # pydicom's conformance warnings are not actionable here: our own checks decide.
    warnings.filterwarnings("ignore", module=r"pydicom\..*")


class ReaderPool:
    """Reads DICOM files in worker processes, each file bounded in memory and time.

    Use as a context manager; `submit` returns a Future whose result is always a
    ReadOutcome: a timeout or a dead worker becomes an "invalid" rejection naming the
    cause, never an exception.
    """

    def __init__(self, workers: int = 2, memory_bytes: int = 4 << 30, timeout_s: float = 30.0,
                 limits: ReadLimits = ReadLimits()):
        self.timeout_s, self.limits, self.memory_bytes = timeout_s, limits, memory_bytes
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["edge.ingest.workers"])
        self._pool = ProcessPool(max_workers=workers, max_tasks=1000, context=context,
                                 initializer=_init_worker, initargs=(memory_bytes,))

    @classmethod
    def from_config(cls, config: Config) -> ReaderPool:
        ingest = config.ingest
        limit = ingest.max_file_mb << 20
        return cls(ingest.workers, ingest.worker_memory_mb << 20, ingest.file_timeout_s,
                   ReadLimits(max_file_bytes=limit, max_inflated_bytes=limit))

    def submit(self, path: str) -> Future[ReadOutcome]:
        """Start reading `path`; the Future resolves to its ReadOutcome."""
        task = self._pool.schedule(read_outcome, args=(path, self.limits),
                                   timeout=self.timeout_s)
        outcome: Future[ReadOutcome] = Future()

        def finish(done: Future) -> None:
            try:
                outcome.set_result(self._outcome(path, done))
            except BaseException as error:  # cancelled by close(): pass it on, never hang
                outcome.set_exception(error)

        task.add_done_callback(finish)
        return outcome

    def read(self, path: str) -> ReadOutcome:
        """Read one file and wait for it."""
        return self.submit(path).result()

    def _outcome(self, path: str, task: Future) -> ReadOutcome:
        try:
            return with_pixels(task.result())
        except FutureTimeout:
            reason = (f"reading took longer than {self.timeout_s:g} s (ingest.file_timeout_s); "
                      "the reader process was stopped")
        except ProcessExpired as error:
            reason = f"the reader process died while parsing this file ({_death(error.exitcode)})"
        except CancelledError:
            raise                                   # by close(): the caller passes it on
        except BaseException as error:  # raised in the worker past read_outcome's net (not
            # an Exception, like pyo3's PanicException), or one pebble could not send back
            reason = (f"the reader process failed unexpectedly ({type(error).__name__}: "
                      f"{error}); please report this file")
        return ReadOutcome(path, rejection=Rejection(reason, "invalid"))

    def close(self) -> None:
        self._pool.stop()
        self._pool.join(timeout=10)

    def __enter__(self) -> ReaderPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"
