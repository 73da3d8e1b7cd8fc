"""The one interface every inference backend implements.

A backend is loaded with a model, describes its input, infers a batch and is closed,
in the thread that owns it. ONNX Runtime and TensorRT live in this package; the torch
backend lives in `models/` (edge never imports torch).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from edge.errors import BackendError, ModelError, ScansideError
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

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, C, H, W) float32 -> (lesion probability (N, 1, H, W), tumour probability
        (N, 1)), both float32 and finite; with `spec.mirror`, the mean of the batch's and
        its left-right mirror's (the mirror's lesion maps mirrored back). BackendError
        when the runtime fails (out of memory, a CUDA fault, an input the model does not
        take) or gives NaN or infinity, so that the series is reported failed, never
        negative, and the appliance goes on."""
        try:
            lesion, tumour = self.run(batch)
            if self.spec.mirror:
                flipped, flipped_tumour = self.run(np.ascontiguousarray(batch[..., ::-1]))
                lesion = (lesion + flipped[..., ::-1]) / 2
                tumour = (tumour + flipped_tumour) / 2
        except ScansideError:
            raise
        except Exception as error:  # each runtime raises its own types
            said = " ".join(str(error).split())         # onnxruntime's runs over lines
            raise BackendError(f"the {self.name} backend failed on a batch of shape "
                               f"{batch.shape}: {type(error).__name__}: {said}") from error
        if not (np.isfinite(lesion).all() and np.isfinite(tumour).all()):
            raise BackendError(f"the {self.name} backend gave NaN or infinite probabilities "
                               f"for a batch of {len(batch)} slices: the analysis is not valid")
        return lesion, tumour

    def check_input(self, source: object) -> None:
        """ModelError naming `source` unless the model's one input takes what its spec makes
        of a slice: (batch, spec.channels, spec.size, spec.size). A spec that describes
        another network would otherwise fail every series it is given."""
        inputs = self.inputs()
        if len(inputs) != 1:
            raise ModelError(f"{source}: expected one input tensor, found "
                             f"{[t.name for t in inputs]}")
        tensor, expected = inputs[0], (self.spec.channels, self.spec.size, self.spec.size)
        if len(tensor.shape) != 4 or any(have is not None and have != want for have, want
                                         in zip(tensor.shape[1:], expected, strict=True)):
            raise ModelError(f"{source}: input {tensor.name!r} has shape {tensor.shape}, but "
                             f"its spec makes (batch, channels, rows, columns) of (N, "
                             f"{', '.join(map(str, expected))}): the spec is not this "
                             "network's")

    @abstractmethod
    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The runtime's inference, as `infer` describes it; `infer` checks it."""

    def close(self) -> None:  # noqa: B027 - a backend holding nothing needs no close
        """Release what the backend holds (sessions, GPU memory)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
