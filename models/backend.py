"""The backend `scanside eval` and `scanside calibrate` run a checkpoint in.

ONNX Runtime by default: the checkpoint is exported to a temporary FP32 ONNX file (as
`scanside export onnx` writes it; 7 s for the CT model) and run there. On 2 CPU cores
(2026-12-05) `scanside eval` on 4 CT series of 318 slices took 19 s that way against
34 s in torch, export and start-up (about 4 s) included, with the same figures; the
network's share runs about 3.5 times faster. Export parity holds the two within 1e-4 of
each other (`models/zoo/*/onnx-parity.json`). Torch stays available as the reference
(`--backend torch`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edge.backends.base import Backend

BACKENDS = ("onnxruntime", "torch")


@contextmanager
def open_checkpoint(checkpoint: Path, backend: str = "onnxruntime") -> Iterator[Backend]:
    """The checkpoint, ready to infer, in `backend` (one of BACKENDS)."""
    if backend == "torch":
        from models.torch_backend import TorchBackend

        with TorchBackend(checkpoint) as opened:
            yield opened
        return
    if backend != "onnxruntime":
        raise ValueError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    from edge.backends.onnxruntime import OnnxRuntimeBackend
    from export.onnx_export import export_onnx

    with tempfile.TemporaryDirectory(prefix="scanside-eval-") as folder:
        onnx_file = export_onnx(Path(checkpoint), Path(folder) / "model.onnx")
        with OnnxRuntimeBackend(onnx_file) as opened:
            yield opened
