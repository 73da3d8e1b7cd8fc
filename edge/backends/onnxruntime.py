"""ONNX Runtime backend: the default everywhere (CPU provider; CUDA provider where the
GPU build of ONNX Runtime and a GPU are present)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.backends.base import Backend, TensorInfo
from edge.errors import BackendError, ModelError
from edge.inference.spec import ModelSpec

SPEC_KEY = "scanside.spec"


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: Path, providers: list[str] | None = None, threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                         if p in available]
        missing = [p for p in providers if p not in available]
        if missing:
            raise BackendError(f"ONNX Runtime {ort.__version__} lacks {', '.join(missing)} "
                               f"(available: {', '.join(available)})")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BackendError(f"{path}: ONNX Runtime cannot load it: {error}") from error
        metadata = self.session.get_modelmeta().custom_metadata_map
        if SPEC_KEY not in metadata:
            raise ModelError(f"{path}: no '{SPEC_KEY}' in the ONNX metadata: export it with "
                             "`scanside export onnx`")
        self.spec = ModelSpec.from_json(metadata[SPEC_KEY], str(path))
        self.provider = self.session.get_providers()[0]
        self.path = Path(path)
        self.input_name = self.session.get_inputs()[0].name
        self.why = f"{self.provider}, ONNX Runtime {ort.__version__}"
        self.check_input(path)

    def inputs(self) -> list[TensorInfo]:
        return [TensorInfo(i.name, tuple(d if isinstance(d, int) else None for d in i.shape),
                           i.type) for i in self.session.get_inputs()]

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lesion, tumour = self.session.run(None, {self.input_name: np.ascontiguousarray(
            batch, dtype=np.float32)})
        return lesion.astype(np.float32, copy=False), tumour.astype(np.float32, copy=False)

    def close(self) -> None:
        self.session = None
