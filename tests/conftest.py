"""Shared fixtures: tiny series, a reader pool, configs pointing at tmp folders."""

from __future__ import annotations

import pytest

from edge.config import load_config
from edge.ingest.workers import ReaderPool


@pytest.fixture(scope="session")
def reader_pool():
    """One sandboxed reader pool for the session: starting workers costs ~0.5 s."""
    with ReaderPool(workers=2, memory_bytes=2 << 30, timeout_s=20) as pool:
        yield pool


@pytest.fixture(scope="session")
def pet_cases(tmp_path_factory):
    """Three synthetic PET series (truth.json, mask.npz), seed 5: real files, in seconds."""
    from models.synthetic.series import synthesize

    return synthesize("PT", 3, seed=5, out=tmp_path_factory.mktemp("pet"))


@pytest.fixture
def config_for(tmp_path):
    """A config whose inbox and state live under tmp_path, with optional overrides."""

    def make(**overrides):
        dotted = {"paths.inbox": tmp_path / "inbox", "paths.state_dir": tmp_path / "state",
                  "ingest.stable_s": 1.0}
        dotted.update({k.replace("__", "."): v for k, v in overrides.items()})
        (tmp_path / "inbox").mkdir(exist_ok=True)
        return load_config(None, dotted)

    return make
