"""torch on a CUDA GPU, the device that trains the zoo faster and runs the torch backend on
a GPU box. Skipped, with the reason, where torch sees no CUDA device (every CI box)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edge.inference.zoo import DEFAULT_ZOO
from export.parity import FP32_TO_FP16, compare
from models.checkpoint import load_checkpoint
from models.network import TINY
from models.torch_backend import TorchBackend
from models.train import TrainConfig, train
from tests.factories import TINY_PET

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="torch sees no CUDA device")]


def test_the_shipped_pet_model_finds_the_same_lesions_on_the_gpu(pet_cases):
    """cuDNN may compute FP32 convolutions in TF32, so the GPU is held to the lesion-level
    gate an FP16 model must pass, not to the CPU's last digits."""
    cpu = TorchBackend(DEFAULT_ZOO / "PT" / "model.pt")
    gpu = TorchBackend(DEFAULT_ZOO / "PT" / "model.pt", device="cuda")
    report = compare(cpu, gpu, pet_cases, FP32_TO_FP16)
    print(json.dumps(report, indent=1))
    assert report["passed"], report
    assert report["reference_lesions"] > 0, "the three series hold lesions"


def test_training_on_the_gpu_writes_a_model_the_cpu_loads(pet_cases, tmp_path):
    best = train(TrainConfig(modality="PT", data=tuple(pet_cases), out=tmp_path, network=TINY,
                             spec=TINY_PET, epochs=2, steps_per_epoch=5, batch_size=4, crop=None,
                             workers=1, hard_negative_fraction=0.3, device="cuda"))
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(isinstance(h["false_spots"], int) for h in history)   # mined on the GPU
    assert load_checkpoint(best).epoch in (1, 2)
    lesion, tumour = TorchBackend(best).infer(np.zeros((2, 1, 32, 32), np.float32))
    assert lesion.shape == (2, 1, 32, 32) and np.isfinite(lesion).all()
