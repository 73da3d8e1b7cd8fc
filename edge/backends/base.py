"""The one interface every inference backend implements.

A backend is loaded with a model, describes its input, infers a batch and is closed,
in the thread that owns it. ONNX Runtime and TensorRT live in this package; the torch
backend lives in `models/` (edge never imports torch).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from edge.inference.spec import ModelSpec


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int | None, ...]       # None where the size varies (the batch)
    dtype: str


class Backend(ABC):
    """Runs one model. Use as a context manager, from one thread."""

    name: str = "backend"
    spec: ModelSpec
    why: str = ""                        # why this backend was chosen, for the status page

    @abstractmethod
    def inputs(self) -> list[TensorInfo]:
        """The model's input tensors."""

    @abstractmethod
    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, C, H, W) float32 -> (lesion probability (N, 1, H, W), tumour probability
        (N, 1)), both float32."""

    def close(self) -> None:  # noqa: B027 - a backend holding nothing needs no close
        """Release what the backend holds (sessions, GPU memory)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
