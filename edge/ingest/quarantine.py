"""The quarantine: where unreadable files are moved, each with its reason beside it.

Moving a file here is the only change the appliance ever makes to its input. The reason
is written before the move, so a crash in between leaves the file in the inbox (to be
read again) rather than a quarantined file without a reason. Quarantined names come from
the file system, never from tag values.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REASON_SUFFIX = ".reason.json"


@dataclass(frozen=True)
class QuarantinedFile:
    path: Path             # where the file is now
    original_path: str     # where it was found
    reason: str
    quarantined_at: str    # ISO 8601, UTC


def quarantine(path: Path, reason: str, quarantine_dir: Path, now: datetime) -> QuarantinedFile:
    """Move `path` into `quarantine_dir` with a reason file; returns where it went."""
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    target = _free_name(quarantine_dir, f"{stamp}-{path.name}")
    record = QuarantinedFile(target, str(path), reason, now.astimezone(UTC).isoformat())
    reason_file = target.with_name(target.name + REASON_SUFFIX)
    reason_file.write_text(json.dumps({"original_path": record.original_path,
                                       "reason": reason,
                                       "quarantined_at": record.quarantined_at}, indent=2) + "\n")
    shutil.move(path, target)
    return record


def quarantined_files(quarantine_dir: Path) -> list[QuarantinedFile]:
    """Everything in the quarantine, newest first."""
    if not quarantine_dir.is_dir():
        return []
    found = []
    for reason_file in quarantine_dir.glob("*" + REASON_SUFFIX):
        target = reason_file.with_name(reason_file.name[: -len(REASON_SUFFIX)])
        if not target.exists():
            continue  # the move never happened: the file is still in the inbox
        try:
            info = json.loads(reason_file.read_text())
            found.append(QuarantinedFile(target, info["original_path"], info["reason"],
                                         info["quarantined_at"]))
        except (OSError, ValueError, KeyError):
            found.append(QuarantinedFile(target, "?", "reason file unreadable", ""))
    return sorted(found, key=lambda q: q.quarantined_at, reverse=True)


def _free_name(directory: Path, name: str) -> Path:
    target, n = directory / name, 1
    while target.exists() or os.path.lexists(str(target) + REASON_SUFFIX):
        n += 1
        target = directory / f"{name}.{n}"
    return target
