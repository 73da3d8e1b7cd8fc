"""inotify events (through watchdog) as a hint that the inbox changed.

Events are only a hint: they are lost on network mounts and when the kernel's queue
overflows, so the intake's periodic full rescan stays the ground truth. A watcher whose
observer thread died is noticed by `alive()` and started again by the supervisor.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger("scanside.watcher")


class _Wake(FileSystemEventHandler):
    def __init__(self, wake: threading.Event):
        self.wake = wake

    def on_any_event(self, event) -> None:
        if event.event_type != "opened":
            self.wake.set()


class InboxWatcher:
    """Sets `wake` whenever something changes under `inbox`."""

    def __init__(self, inbox: Path, wake: threading.Event):
        self.inbox, self.wake = inbox, wake
        self.restarts = 0
        self._observer = None

    def start(self) -> None:
        self._observer = Observer()
        self._observer.schedule(_Wake(self.wake), str(self.inbox), recursive=True)
        self._observer.daemon = True
        self._observer.start()

    def alive(self) -> bool:
        return self._observer is not None and self._observer.is_alive()

    def restart(self) -> None:
        log.warning("the inbox watcher stopped; starting it again (the rescan covered the gap)")
        self.stop()
        self.restarts += 1
        self.start()

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            if self._observer.is_alive():
                self._observer.join(timeout=5)
            self._observer = None
