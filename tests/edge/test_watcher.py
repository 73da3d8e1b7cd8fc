"""The inbox watcher: real inotify events wake the intake; a dead observer is noticed and
started again."""

from __future__ import annotations

import threading

from edge.stream.watcher import InboxWatcher


def wakes_on_a_new_file(watcher: InboxWatcher, wake: threading.Event, path) -> bool:
    wake.clear()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"DICM")
    return wake.wait(5)


def test_a_file_landing_anywhere_under_the_inbox_wakes_the_intake(tmp_path):
    wake = threading.Event()
    watcher = InboxWatcher(tmp_path, wake)
    watcher.start()
    try:
        assert wakes_on_a_new_file(watcher, wake, tmp_path / "a.dcm")
        assert wakes_on_a_new_file(watcher, wake, tmp_path / "study" / "series" / "b.dcm")
    finally:
        watcher.stop()


def test_a_dead_observer_is_noticed_and_restarted(tmp_path):
    wake = threading.Event()
    watcher = InboxWatcher(tmp_path, wake)
    watcher.start()
    try:
        watcher._observer.stop()               # what a crash of its thread looks like
        watcher._observer.join(5)
        assert not watcher.alive()
        wake.clear()
        (tmp_path / "unseen.dcm").write_bytes(b"DICM")
        assert not wake.wait(0.5)              # no hint: only the rescan would find it
        watcher.restart()
        assert watcher.alive() and watcher.restarts == 1
        assert wakes_on_a_new_file(watcher, wake, tmp_path / "seen.dcm")
    finally:
        watcher.stop()
