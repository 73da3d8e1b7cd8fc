"""Where the shipped models are: `models/zoo/<modality>/`, beside this package."""

from __future__ import annotations

from pathlib import Path

from edge.errors import ModelError

DEFAULT_ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"


def model_file(zoo: Path, modality: str, name: str) -> Path:
    """`zoo/<modality>/<name>`, or ModelError saying what is missing."""
    path = Path(zoo) / modality / name
    if not path.is_file():
        raise ModelError(f"no {name} for modality {modality} in {zoo} (looked for {path})")
    return path
