"""What every benchmark suite shares: the machine stamp and the results file."""

from __future__ import annotations

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


def record_for(suites) -> dict:
    """The start of a run's record: when, where (machine and GPU), which suites."""
    stamp = datetime.now(UTC)
    return {"measured_at": stamp.isoformat(timespec="seconds"), "machine": machine(),
            "gpu": _gpu(), "stem": f"{stamp:%Y-%m-%d}-{socket.gethostname()}",
            "suites": {}}


def _gpu() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
