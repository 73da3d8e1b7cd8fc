"""TensorRT builder and runtime: these need TensorRT, pycuda and a CUDA GPU, and are
skipped, with the reason, everywhere else."""

from __future__ import annotations

import numpy as np
import pytest

from edge.backends.select import probe


def _missing() -> str | None:
    facts = probe()
    if facts.tensorrt_version is None:
        return "TensorRT is not installed (it is not on PyPI; see README, GPU box)"
    try:
        import pycuda.driver  # noqa: F401
    except ImportError:
        return "pycuda is not installed"
    if not facts.gpu:
        return "no CUDA GPU is visible"
    return None


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_missing() is not None,
                                                  reason=_missing() or "")]


def test_engine_builds_with_a_manifest_and_matches_onnx_runtime(tmp_path, pet_cases):
    from edge.backends.manifest import EngineManifest, mismatches
    from edge.backends.onnxruntime import OnnxRuntimeBackend
    from edge.backends.select import engine_files
    from edge.backends.tensorrt import TensorRTBackend
    from export.engine import ensure_engine
    from export.onnx_export import convert_fp16, export_onnx, sha256
    from export.parity import Tolerances, compare
    from models.network import TINY
    from models.train import TrainConfig, train
    from tests.factories import TINY_PET

    checkpoint = train(TrainConfig(modality="PT", data=tuple(pet_cases), out=tmp_path / "run",
                                   network=TINY, spec=TINY_PET, epochs=1, steps_per_epoch=5,
                                   batch_size=4, crop=None, workers=1))
    fp16 = convert_fp16(export_onnx(checkpoint, tmp_path / "model.onnx"),
                        tmp_path / "model.fp16.onnx")
    said = ensure_engine(fp16, tmp_path / "engines", "PT", max_batch=8,
                         timing_cache=tmp_path / "timing.cache")
    assert "built" in said
    plan, manifest_path = engine_files(tmp_path / "engines", "PT")
    manifest = EngineManifest.load(manifest_path)
    assert mismatches(manifest, sha256(fp16), probe()) == []
    assert (tmp_path / "timing.cache").stat().st_size > 0
    assert "matches this box" in ensure_engine(fp16, tmp_path / "engines", "PT", max_batch=8)
    with TensorRTBackend(plan, manifest) as trt_backend, OnnxRuntimeBackend(fp16) as reference:
        lesion, tumour = trt_backend.infer(np.zeros((11, 1, 32, 32), np.float32))  # > max batch
        assert lesion.shape == (11, 1, 32, 32) and np.isfinite(lesion).all()
        report = compare(reference, trt_backend, pet_cases, Tolerances(dice_ratio=0.999))
    assert report["passed"], report
