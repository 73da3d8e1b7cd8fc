"""torch -> ONNX -> FP16 ONNX on a tiny model, each step checked against the one before."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnx
import pytest

from edge import cli
from edge.backends.base import Backend
from edge.backends.onnxruntime import SPEC_KEY, OnnxRuntimeBackend
from edge.errors import BackendError, ModelError
from edge.inference.series import analyze_series
from export import parity
from export.onnx_export import KEEP_FP32, convert_fp16, export_onnx, metadata
from export.parity import FP32_TO_FP16, TORCH_TO_ONNX, compare
from export.triton import export_triton
from models.checkpoint import load_checkpoint, save_checkpoint
from models.data import DicomCase
from models.network import TINY
from models.torch_backend import TorchBackend
from models.train import TrainConfig, train
from tests.factories import TINY_PET
from tests.models.test_context import streamed


@pytest.fixture(scope="module")
def exported(pet_cases, tmp_path_factory):
    """A briefly trained tiny PET model as checkpoint, FP32 ONNX and FP16 ONNX."""
    root = tmp_path_factory.mktemp("export")
    checkpoint = train(TrainConfig(modality="PT", data=tuple(pet_cases), out=root / "run",
                                   network=TINY, spec=TINY_PET, epochs=1, steps_per_epoch=8,
                                   batch_size=4, crop=None, workers=1))
    fp32 = export_onnx(checkpoint, root / "PT" / "model.onnx", max_batch=16)
    fp16 = convert_fp16(fp32, root / "PT" / "model.fp16.onnx")
    save_checkpoint(root / "PT" / "model.pt", load_checkpoint(checkpoint), slim=True)
    return checkpoint, fp32, fp16


def test_onnx_passes_the_checker_and_carries_the_spec_and_training_digest(exported):
    checkpoint, fp32, _ = exported
    model = onnx.load(fp32)
    onnx.checker.check_model(model, full_check=True)
    meta = metadata(fp32)
    spec = json.loads(meta[SPEC_KEY])
    assert spec["modality"] == "PT" and spec["size"] == 32
    assert spec["thresholds"]["lesion_probability"] == 0.5
    assert meta["scanside.training_data_digest"] == spec["training_data"]["digest"]
    assert json.loads(meta["scanside.classes"]) == ["background", "tumour"]
    assert meta["scanside.precision"] == "fp32"


def test_onnx_batch_dimension_is_dynamic(exported):
    with OnnxRuntimeBackend(exported[1], ["CPUExecutionProvider"]) as backend:
        assert backend.inputs()[0].shape == (None, 1, 32, 32)
        for n in (1, 5):
            lesion, tumour = backend.infer(np.zeros((n, 1, 32, 32), np.float32))
            assert lesion.shape == (n, 1, 32, 32) and tumour.shape == (n, 1)


def test_onnx_runtime_matches_torch_within_1e4_and_finds_the_same_lesions(exported, pet_cases):
    checkpoint, fp32, _ = exported
    with TorchBackend(checkpoint) as reference, \
            OnnxRuntimeBackend(fp32, ["CPUExecutionProvider"]) as candidate:
        report = compare(reference, candidate, pet_cases, TORCH_TO_ONNX)
    assert report["max_abs_error"] <= 1e-4
    assert report["reference_lesions_found"] == report["reference_lesions"]
    assert report["passed"] and not report["nan_or_inf"]


def test_fp16_keeps_fp32_inputs_outputs_and_reductions(exported):
    model = onnx.load(exported[2])
    float32, float16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert {v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)} \
        == {float32}
    assert any(t.data_type == float16 for t in model.graph.initializer)
    types = {v.name: v.type.tensor_type.elem_type for v in
             (*model.graph.value_info, *model.graph.input, *model.graph.output)}
    kept = [n for n in model.graph.node if n.op_type in KEEP_FP32]
    assert kept, "the network's head has reductions"
    for node in kept:        # the data input (the second input of a reduction is its axes)
        assert types[node.input[0]] == types[node.output[0]] == float32, node.op_type
    assert metadata(exported[2])["scanside.precision"] == "fp16"


def test_fp16_parity_against_fp32_on_cpu(exported, pet_cases):
    _, fp32, fp16 = exported
    with OnnxRuntimeBackend(fp32, ["CPUExecutionProvider"]) as reference, \
            OnnxRuntimeBackend(fp16, ["CPUExecutionProvider"]) as candidate:
        report = compare(reference, candidate, pet_cases, FP32_TO_FP16)
    assert report["candidate"]["provider"] == "CPUExecutionProvider"
    assert report["reference_lesions_found"] == report["reference_lesions"]
    assert not report["nan_or_inf"]
    if report["dice_reference"]:
        assert report["dice_candidate"] >= 0.999 * report["dice_reference"]
    assert report["max_abs_error"] < 0.05


def test_an_exported_model_that_fails_parity_is_deleted_and_its_report_kept(
        exported, pet_cases, tmp_path, monkeypatch):
    _, fp32, _ = exported
    out = tmp_path / "model.fp16.onnx"
    arguments = ["export", "fp16", "--onnx", str(fp32), "--out", str(out),
                 "--data", *map(str, pet_cases)]
    assert cli.main(arguments) == 0 and out.exists()

    monkeypatch.setattr(parity, "FP32_TO_FP16", parity.Tolerances(max_abs_error=0.0))
    assert cli.main(arguments) == 1
    assert not out.exists()
    report = json.loads((tmp_path / "fp16-parity.json").read_text())
    assert report["passed"] is False and report["max_abs_error"] > 0.0


class NaNModel(Backend):
    """A broken model: what an FP16 overflow looks like from outside."""

    name = "broken"

    def __init__(self, spec):
        self.spec = spec

    def inputs(self):
        return []

    def run(self, batch):
        n = len(batch)
        return np.full((n, 1, *batch.shape[2:]), np.nan, np.float32), np.zeros((n, 1), np.float32)


class SquareModel(Backend):
    """Marks a square in the middle of every slice with one probability: one lesion a
    series, scored that probability."""

    name = "square"

    def __init__(self, spec, probability):
        self.spec, self.probability = spec, probability

    def inputs(self):
        return []

    def run(self, batch):
        n, _, h, w = batch.shape
        lesion = np.zeros((n, 1, h, w), np.float32)
        lesion[..., h // 4: h // 2, w // 4: w // 2] = self.probability
        return lesion, np.full((n, 1), self.probability, np.float32)


def test_parity_lists_each_lesion_lost_or_gained_with_its_series_and_score(pet_cases):
    cases = pet_cases[:2]
    marked, blank = SquareModel(TINY_PET, 0.875), SquareModel(TINY_PET, 0.0)
    lost = compare(marked, blank, cases, FP32_TO_FP16)
    assert (lost["reference_lesions"], lost["reference_lesions_found"]) == (2, 0)
    assert not lost["passed"]
    listed = [{"series": c.name, "score": pytest.approx(0.875, abs=1 / 255)} for c in cases]
    assert lost["lost_lesions"] == listed           # maps are kept in 8 bits
    assert lost["extra_lesions"] == []
    assert lost["detection_threshold"] == TINY_PET.thresholds.detection_probability
    gained = compare(blank, marked, cases, FP32_TO_FP16)
    assert gained["candidate_extra_lesions"] == 2 and gained["lost_lesions"] == []
    assert gained["extra_lesions"] == listed


def test_a_model_giving_nan_makes_the_series_failed_never_negative(pet_cases):
    planes, _ = DicomCase(pet_cases[0]).slices()
    result = analyze_series(planes, NaNModel(TINY_PET))
    assert result.status == "failed" and "NaN" in result.reason


def test_a_model_whose_spec_is_not_its_network_s_is_refused_at_load(exported, tmp_path):
    model = onnx.load(exported[1])
    (entry,) = [p for p in model.metadata_props if p.key == SPEC_KEY]
    entry.value = json.dumps({**json.loads(entry.value), "size": 48})
    onnx.save(model, tmp_path / "model.onnx")
    with pytest.raises(ModelError, match=r"model.onnx: input 'image' has shape \(None, 1, 32, "
                                         r"32\), but its spec makes .* \(N, 1, 48, 48\)"):
        OnnxRuntimeBackend(tmp_path / "model.onnx", ["CPUExecutionProvider"])


def test_a_runtime_error_makes_the_series_failed_in_batch_and_in_streaming(
        exported, pet_cases, tmp_path):
    # A real ONNX Runtime failure: the spec is made to ask for 3 input channels (the slice
    # and two neighbours) of a model that takes 1, so every batch is refused by the runtime.
    backend = OnnxRuntimeBackend(exported[1], ["CPUExecutionProvider"])
    backend.spec = replace(backend.spec, context_slices=1)
    with pytest.raises(BackendError, match=r"the onnxruntime backend failed on a batch of "
                                           r"shape \(4, 3, 32, 32\): InvalidArgument"):
        backend.infer(np.zeros((4, 3, 32, 32), np.float32))
    planes, _ = DicomCase(pet_cases[0]).slices()
    batch = analyze_series(planes, backend)
    assert batch.status == "failed" and "InvalidArgument" in batch.reason
    analyzer, _ = streamed(planes, backend, tmp_path)      # raises nothing out of handle
    streaming = analyzer.last_result
    assert streaming.status == "failed" and "InvalidArgument" in streaming.reason


def test_triton_repository_has_the_model_and_a_matching_config(exported, tmp_path):
    folder = export_triton(exported[1], tmp_path / "repo", max_batch=8)
    config = (folder / "config.pbtxt").read_text()
    assert (folder / "1" / "model.onnx").read_bytes() == exported[1].read_bytes()
    assert 'platform: "onnxruntime_onnx"' in config and "max_batch_size: 8" in config
    assert 'name: "image" data_type: TYPE_FP32 dims: [ 1, 32, 32 ]' in config
    assert 'name: "tumour_probability" data_type: TYPE_FP32 dims: [ 1 ]' in config
    assert SPEC_KEY in config
