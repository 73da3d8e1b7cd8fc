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


@pytest.fixture(scope="session")
def tiny_zoo(pet_cases, tmp_path_factory):
    """A zoo laid out like the shipped one (PT/model.pt, model.onnx, model.fp16.onnx),
    holding a tiny PET model trained for a few steps on `pet_cases`."""
    from export.onnx_export import convert_fp16, export_onnx
    from models.checkpoint import load_checkpoint, save_checkpoint
    from models.network import TINY
    from models.train import TrainConfig, train
    from tests.factories import TINY_PET

    root = tmp_path_factory.mktemp("zoo")
    best = train(TrainConfig(modality="PT", data=tuple(pet_cases), out=root / "run",
                             network=TINY, spec=TINY_PET, epochs=1, steps_per_epoch=10,
                             batch_size=4, crop=None, workers=1))
    shipped = save_checkpoint(root / "PT" / "model.pt", load_checkpoint(best), slim=True)
    convert_fp16(export_onnx(shipped, root / "PT" / "model.onnx"),
                 root / "PT" / "model.fp16.onnx")
    return root


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
