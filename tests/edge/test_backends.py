"""Backend selection, engine manifests and buffer sizing: everything around TensorRT that
a machine without TensorRT can check."""

from __future__ import annotations

import ast
import hashlib
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from edge.backends.manifest import BoxFacts, EngineManifest, mismatches
from edge.backends.select import choose, engine_files
from edge.backends.tensorrt import TensorIO, plan_buffers
from edge.errors import BackendError, ModelError

H100 = BoxFacts("10.13.0.35", "NVIDIA H100 80GB HBM3", "9.0", cuda_provider=True)
CPU_BOX = BoxFacts()


def manifest(**changes) -> EngineManifest:
    base = EngineManifest(onnx_sha256="a" * 64, tensorrt_version="10.13.0.35",
                          gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0",
                          precision="fp16", profile={"image": [[1, 2, 256, 256], [4, 2, 256, 256],
                                                                [16, 2, 256, 256]]},
                          workspace_mb=2048, built_at="2026-11-23T10:00:00+00:00",
                          build_seconds=181.0, spec="{}")
    return replace(base, **changes)


def test_a_matching_engine_has_no_mismatch():
    assert mismatches(manifest(), "a" * 64, H100) == []
    assert manifest().max_batch == 16


@pytest.mark.parametrize("facts,sha,reason", [
    (H100, "b" * 64, "built from another ONNX file"),
    (replace(H100, tensorrt_version="10.14.1.48"), "a" * 64, "built with TensorRT 10.13.0.35"),
    (replace(H100, gpu_name="NVIDIA A100-SXM4-40GB", compute_capability="8.0"), "a" * 64,
     "built for NVIDIA H100 80GB HBM3 (sm 9.0), this box has NVIDIA A100-SXM4-40GB (sm 8.0)"),
    (replace(H100, tensorrt_version=None), "a" * 64, "TensorRT is not installed"),
    (replace(H100, gpu_name=None, compute_capability=None), "a" * 64, "no CUDA GPU"),
])
def test_each_mismatch_is_named(facts, sha, reason):
    (found,) = mismatches(manifest(), sha, facts)
    assert reason in found


def test_a_version_compatible_engine_accepts_a_later_minor_release():
    compatible = manifest(version_compatible=True)
    assert mismatches(compatible, "a" * 64, replace(H100, tensorrt_version="10.16.0.1")) == []
    assert mismatches(compatible, "a" * 64, replace(H100, tensorrt_version="11.4.0.106"))


def test_manifest_round_trips_through_json(tmp_path):
    path = tmp_path / "CT.manifest.json"
    path.write_text(manifest(parity={"passed": True}).to_json())
    assert EngineManifest.load(path) == manifest(parity={"passed": True})


@pytest.fixture
def zoo(tmp_path):
    folder = tmp_path / "zoo" / "CT"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"fp32 model")
    (folder / "model.fp16.onnx").write_bytes(b"fp16 model")
    return folder


def engine_for(zoo_dir, engines, **changes):
    engines.mkdir(exist_ok=True)
    plan, manifest_path = engine_files(engines, zoo_dir.name)
    plan.write_bytes(b"engine")
    sha = hashlib.sha256((zoo_dir / "model.fp16.onnx").read_bytes()).hexdigest()
    manifest_path.write_text(manifest(onnx_sha256=sha, **changes).to_json())
    return plan


def test_auto_on_a_cpu_box_is_onnx_runtime_fp32_and_says_why(zoo, tmp_path):
    choice = choose("auto", zoo, tmp_path / "engines", CPU_BOX)
    assert (choice.kind, choice.path.name) == ("onnxruntime", "model.onnx")
    assert choice.providers == ("CPUExecutionProvider",)
    assert "no TensorRT engine at" in choice.why


def test_auto_prefers_a_matching_engine(zoo, tmp_path):
    plan = engine_for(zoo, tmp_path / "engines")
    choice = choose("auto", zoo, tmp_path / "engines", H100)
    assert (choice.kind, choice.path) == ("tensorrt", plan)
    assert choice.manifest.gpu_name == H100.gpu_name


def test_auto_falls_back_to_onnx_runtime_on_the_gpu_when_the_engine_is_stale(zoo, tmp_path):
    engine_for(zoo, tmp_path / "engines", tensorrt_version="10.12.0.36")
    choice = choose("auto", zoo, tmp_path / "engines", H100)
    assert (choice.kind, choice.path.name) == ("onnxruntime", "model.fp16.onnx")
    assert choice.providers[0] == "CUDAExecutionProvider"
    assert "built with TensorRT 10.12.0.36, this box has 10.13.0.35" in choice.why


def test_an_engine_that_failed_its_parity_check_is_never_chosen(zoo, tmp_path):
    engine_for(zoo, tmp_path / "engines", parity={"passed": False, "dice_candidate": 0.5})
    choice = choose("auto", zoo, tmp_path / "engines", H100)
    assert (choice.kind, choice.path.name) == ("onnxruntime", "model.fp16.onnx")
    assert "the engine failed its parity check" in choice.why
    with pytest.raises(BackendError, match="failed its parity check"):
        choose("tensorrt", zoo, tmp_path / "engines", H100)


def test_tensorrt_requested_where_it_cannot_run_is_an_error_with_the_reasons(zoo, tmp_path):
    engine_for(zoo, tmp_path / "engines")
    with pytest.raises(BackendError, match="TensorRT is not installed; no CUDA GPU"):
        choose("tensorrt", zoo, tmp_path / "engines", CPU_BOX)


def test_a_missing_model_is_named(tmp_path):
    (tmp_path / "MR").mkdir()
    with pytest.raises(ModelError, match="model.onnx is missing"):
        choose("onnxruntime", tmp_path / "MR", None, CPU_BOX)


def tensors(max_batch=16):
    return [TensorIO("image", True, "float32", (-1, 2, 256, 256),
                     ((1, 2, 256, 256), (4, 2, 256, 256), (max_batch, 2, 256, 256))),
            TensorIO("lesion_probability", False, "float32", (-1, 1, 256, 256)),
            TensorIO("tumour_probability", False, "float32", (-1, 1))]


def test_buffers_are_sized_for_the_largest_batch_of_the_profile():
    buffers = {b.name: b for b in plan_buffers(tensors(), 16)}
    assert buffers["image"].shape == (16, 2, 256, 256)
    assert buffers["image"].nbytes == 16 * 2 * 256 * 256 * 4
    assert buffers["tumour_probability"].nbytes == 16 * 4


def test_buffers_refuse_a_batch_beyond_the_profile_or_a_dynamic_image_size():
    with pytest.raises(BackendError, match="allows batches up to 8"):
        plan_buffers(tensors(max_batch=8), 16)
    odd = [replace(tensors()[1], shape=(-1, 1, -1, 256))]
    with pytest.raises(BackendError, match="dynamic non-batch dimensions"):
        plan_buffers(odd, 16)


def test_importing_the_appliance_loads_no_heavy_library():
    code = ("import sys, edge, edge.cli, edge.backends.select, edge.backends.tensorrt, "
            "edge.backends.onnxruntime, edge.inference.series, edge.survey; "
            "print(sorted(m for m in ('torch', 'tensorrt', 'pycuda', 'onnxruntime', 'models', "
            "'export') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_edge_imports_models_and_export_only_inside_cli_functions():
    edge = Path(__file__).resolve().parents[2] / "edge"
    for path in edge.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:      # module level only
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in ("models", "export", "torch"), \
                    f"{path.relative_to(edge.parent)} imports {name} at module level"
