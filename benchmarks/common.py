"""What every benchmark suite shares: the machine stamp and the results file."""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).with_name("results")


def machine() -> dict:
    """CPU, cores, memory and library versions: what a figure depends on (Linux)."""
    cpu = next((line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    return {
        "host": socket.gethostname(),
        "cpu": cpu,
        "cores_available": len(os.sched_getaffinity(0)),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": sys.version.split()[0],
        "libraries": {name: _version(name) for name in (
            "scanside", "numpy", "pydicom", "pylibjpeg", "pebble", "onnxruntime", "torch",
            "paho-mqtt")},
    }


def write_results(suite: str, results: dict, out_dir: Path = RESULTS) -> Path:
    """Write `results` with the machine stamp to `<out_dir>/<date>-<host>-<suite>.json`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC)
    record = {"suite": suite, "measured_at": stamp.isoformat(timespec="seconds"),
              "machine": machine(), **results}
    path = out_dir / f"{stamp:%Y-%m-%d}-{socket.gethostname()}-{suite}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
