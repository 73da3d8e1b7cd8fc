"""The torch inference backend: the reference every exported model is checked against,
and the backend of training-time evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edge.backends.base import Backend, TensorInfo
from models.checkpoint import load_checkpoint
from models.network import Probabilities


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, checkpoint: Path, device: str = "cpu", threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        loaded = load_checkpoint(Path(checkpoint), device)
        self.spec = loaded.spec
        self.device = torch.device(device)
        self.model = Probabilities(loaded.build()).eval().to(self.device)
        self.why = f"requested; {device}, torch {torch.__version__}"

    def inputs(self) -> list[TensorInfo]:
        return [TensorInfo("image", (None, self.spec.channels, self.spec.size, self.spec.size),
                           "float32")]

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            lesion, tumour = self.model(torch.from_numpy(np.ascontiguousarray(batch)).to(
                self.device))
        return lesion.float().cpu().numpy(), tumour.float().cpu().numpy()
