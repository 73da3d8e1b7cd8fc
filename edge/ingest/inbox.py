"""Which files in the inbox are ready to read.

A file is offered once its name is not ignored (`*.part`, hidden temporary names), its size
and modification time have been unchanged for `stable_s` on the appliance's monotonic
clock, and it has not been finished already with that same size and time. The scan is the
ground truth; inotify events (issue 5's watcher) only make it come sooner.
"""

from __future__ import annotations

import filecmp
import fnmatch
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from edge.ingest.journal import FileSignature


def is_ignored(name: str, patterns: Sequence[str]) -> bool:
    """True when a file or folder name matches one of the ignore patterns."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def same_bytes(a: str, b: str) -> bool:
    """True when both files exist and hold the same bytes (a resent duplicate)."""
    try:
        return a != b and filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False  # the earlier file is gone: the two cannot be shown to be the same


def walk_inbox(root: Path, ignore: Sequence[str],
               skip: Iterable[Path] = ()) -> Iterator[tuple[str, FileSignature]]:
    """Every regular file under `root` with its signature. Symbolic links, ignored names
    and the folders in `skip` (a quarantine kept inside the inbox) are passed over."""
    skipped = {os.path.realpath(p) for p in skip}
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue  # vanished or unreadable folder: the next scan tries again
        for entry in entries:
            if is_ignored(entry.name, ignore):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    if os.path.realpath(entry.path) not in skipped:
                        stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    yield entry.path, FileSignature(st.st_size, st.st_mtime_ns)
            except OSError:
                continue


class Inbox:
    """Tracks the inbox between scans and offers files that are ready to read."""

    def __init__(self, root: Path, ignore: Sequence[str], stable_s: float,
                 finished: dict[str, FileSignature] | None = None, skip: Iterable[Path] = ()):
        self.root, self.ignore, self.stable_s = root, tuple(ignore), stable_s
        self.skip = tuple(skip)
        self.finished: dict[str, FileSignature] = dict(finished or {})
        self._watching: dict[str, tuple[FileSignature, float]] = {}  # path -> (sig, since)
        self._not_before: dict[str, float] = {}

    def ready(self, now: float) -> list[tuple[str, FileSignature]]:
        """Files unchanged for `stable_s` and not finished with that signature."""
        present, ready = set(), []
        for path, signature in walk_inbox(self.root, self.ignore, self.skip):
            present.add(path)
            if self.finished.get(path) == signature:
                continue
            seen = self._watching.get(path)
            if seen is None or seen[0] != signature:
                self._watching[path] = (signature, now)
                self._not_before.pop(path, None)
                seen = self._watching[path]
            if now - seen[1] >= self.stable_s and now >= self._not_before.get(path, now):
                ready.append((path, signature))
        for path in set(self._watching) - present:
            del self._watching[path]
            self._not_before.pop(path, None)
        return sorted(ready)

    def finish(self, path: str, signature: FileSignature) -> None:
        """Never offer this file again unless it changes."""
        self.finished[path] = signature
        self._watching.pop(path, None)
        self._not_before.pop(path, None)

    def retry_after(self, path: str, when: float) -> None:
        """Offer this file again no sooner than `when` (monotonic seconds)."""
        self._not_before[path] = when

    def next_due(self, now: float) -> float:
        """The next moment a watched file becomes stable or may be retried."""
        times = [since + self.stable_s for _, since in self._watching.values()]
        times += list(self._not_before.values())
        return min((t for t in times if t > now), default=now + 3600.0)

    def unchanged_since(self, path: str) -> float | None:
        """Monotonic time since which the file has had its current signature."""
        seen = self._watching.get(path)
        return None if seen is None else seen[1]
