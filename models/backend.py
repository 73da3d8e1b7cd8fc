"""The backend `scanside eval` and `scanside calibrate` run a checkpoint in.

ONNX Runtime by default: the checkpoint's own FP32 export when one lies beside it (the
`model.onnx` next to a zoo `model.pt`, whose metadata names the SHA-256 of the checkpoint
it was exported from), else an export to a temporary file, as `scanside export onnx`
writes it (7 s for the CT model). On 2 CPU cores (2026-12-05) `scanside eval` on 4 CT
series of 318 slices took 19 s that way against 34 s in torch, export and start-up (about
4 s) included, with the same figures; the network's share runs about 3.5 times faster.
Export parity holds the two within 1e-4 of each other (`models/zoo/*/onnx-parity.json`).
Torch stays available as the reference (`--backend torch`).
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
        onnx_file = (own_export(Path(checkpoint))
                     or export_onnx(Path(checkpoint), Path(folder) / "model.onnx"))
        with OnnxRuntimeBackend(onnx_file) as opened:
            yield opened


def own_export(checkpoint: Path) -> Path | None:
    """The FP32 ONNX file beside `checkpoint` (same name, `.onnx`) when its metadata says it
    was exported from these very bytes; None otherwise (none there, one that cannot be
    read, or one from other weights: a checkpoint retrained or recalibrated in place)."""
    from google.protobuf.message import DecodeError

    from export.onnx_export import metadata, sha256

    beside = checkpoint.with_suffix(".onnx")
    try:
        written = metadata(beside)
    except (OSError, DecodeError):
        return None
    if (written.get("scanside.precision") == "fp32"
            and written.get("scanside.source_checkpoint_sha256") == sha256(checkpoint)):
        return beside
    return None
