"""2.5D models: each slice seen with its neighbours, the same way in training and in use."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from edge.backends.onnxruntime import OnnxRuntimeBackend
from edge.delivery.outbox import Outbox
from edge.delivery.payloads import Publishing
from edge.inference.series import analyze_series, predict
from edge.ingest.intake import Admitted, Completed
from edge.series.assembler import SeriesAssembler
from edge.state import connect
from edge.stream.analyzer import StreamingAnalyzer
from edge.stream.store import SeriesStore
from models.augment import AugmentConfig, jitter_intensity
from models.checkpoint import load_checkpoint
from models.data import DicomCase, prepare
from models.network import TINY, DetectionNet
from models.torch_backend import TorchBackend
from models.transfer import STEM_WEIGHTS, StemLayout, fit_stem
from tests.models.test_synthetic_series import read_series


class Recording(TorchBackend):
    """The torch backend, keeping every batch it is given."""

    batches: list[np.ndarray]

    def run(self, batch):
        self.batches.append(batch.copy())
        return super().run(batch)


def test_a_2d_stem_fitted_for_neighbours_computes_what_it_did():
    torch.manual_seed(0)
    config = replace(TINY, base_channels=8)
    plain = DetectionNet(replace(config, in_channels=2)).eval()   # MR: pixels, weighting code
    wide = DetectionNet(replace(config, in_channels=4)).eval()    # ... and two neighbours
    source, target = StemLayout(1, 1, 1), StemLayout(1, 3, 1)
    wide.load_state_dict({name: fit_stem(tensor, source, target) if name in STEM_WEIGHTS
                          else tensor for name, tensor in plain.state_dict().items()})
    image = torch.randn(3, 2, 32, 32)
    stacked = torch.cat([image[:, :1], torch.randn(3, 2, 32, 32), image[:, 1:]], dim=1)
    with torch.no_grad():
        for before, after in zip(plain(image), wide(stacked), strict=True):
            torch.testing.assert_close(after, before)
    stem = wide.state_dict()[STEM_WEIGHTS[0]]
    assert torch.all(stem[:, 1:3] == 0)
    assert torch.equal(stem[:, 3], plain.state_dict()[STEM_WEIGHTS[0]][:, 1])


@pytest.fixture(scope="module")
def context_model(pet_cases, tiny_zoo, tmp_path_factory):
    """The tiny PET model fine-tuned for a few steps into a 2.5D one (a neighbour each
    side), by the command line."""
    out = tmp_path_factory.mktemp("context")
    subprocess.run([sys.executable, "-m", "edge", "train", "--data", str(pet_cases[0]),
                    "--modality", "PT", "--out", str(out), "--init-weights",
                    str(tiny_zoo / "PT" / "model.pt"), "--context-slices", "1", "--epochs", "1",
                    "--steps-per-epoch", "2", "--batch-size", "2", "--workers", "1"],
                   check=True, capture_output=True, timeout=300)
    return out / "model.pt"


def test_training_sees_each_slice_with_the_neighbours_the_appliance_gives_it(
        pet_cases, context_model):
    best = context_model
    checkpoint = load_checkpoint(best)
    assert checkpoint.spec.context_slices == 1 and checkpoint.network.in_channels == 3
    planes, _ = read_series(pet_cases[0])
    backend = Recording(best)
    trained_on = prepare(DicomCase(pet_cases[0]), checkpoint.spec)
    for batch_size in (3, 64):                 # batch edges must not change what it sees
        backend.batches = []
        predict(planes, backend, batch_size)
        seen = np.concatenate(backend.batches)
        np.testing.assert_array_equal(seen, trained_on.inputs(range(len(planes))))
    np.testing.assert_array_equal(seen[0, 1], seen[0, 0])        # the first slice stands in
    np.testing.assert_array_equal(seen[1, 1], seen[0, 0])        # for the one below it


def test_neighbours_share_the_slice_s_intensity_jitter():
    block = torch.rand(4, 2, 16, 16)
    images = torch.cat([block, block, block, torch.ones(4, 1, 16, 16)], dim=1)
    out = jitter_intensity(images, AugmentConfig(noise_std=(0.0, 0.0)),
                           torch.Generator().manual_seed(1), image_channels=2, slices=3)
    assert not torch.equal(out[:, :2], block)
    torch.testing.assert_close(out[:, 2:4], out[:, :2])
    torch.testing.assert_close(out[:, 4:6], out[:, :2])
    assert torch.all(out[:, 6] == 1)


def streamed(planes, backend, tmp_path, batch_size=4):
    """A StreamingAnalyzer fed `planes` one file at a time, as the appliance feeds it, then
    the completion; returns it and, after each file, what each slice was last inferred with
    (`Progress.seen_with`: its neighbours' keys)."""
    conn = connect(tmp_path / "state")
    analyzer = StreamingAnalyzer(lambda modality: backend, Outbox(conn), SeriesStore(conn),
                                 Publishing("test", "scanside/test"), lambda: None, batch_size)
    assembler, inferred = SeriesAssembler({}, 3600.0), []
    for now, plane in enumerate(planes):
        admission, state = assembler.add([plane.header], float(now))
        analyzer.handle([Admitted((plane,), admission, state)])
        inferred.append(dict(analyzer.progress[state.series_uid].seen_with))
    assert state.complete, "the series should complete by its expected count"
    analyzer.handle([Completed(state)])
    return analyzer, inferred


@pytest.mark.parametrize("arrival", ["in order", "shuffled"])
def test_streaming_a_2_5d_model_gives_what_batch_analysis_gives(arrival, pet_cases, context_model,
                                                                tmp_path):
    planes, _ = read_series(pet_cases[1])
    backend = TorchBackend(context_model)
    batch = predict(planes, backend)
    keys = [p.instance_key for p in batch.predictions]
    order = (range(len(planes)) if arrival == "in order"
             else np.random.default_rng(3).permutation(len(planes)))
    by_key = {p.header.instance_key: p for p in planes}
    analyzer, inferred = streamed([by_key[keys[i]] for i in order], backend, tmp_path)
    if arrival == "in order":                  # each slice once the next one has arrived
        assert [set(s) for s in inferred[:3]] == [set(), set(), {keys[1]}]
    for step, seen_with in enumerate(inferred):  # every slice with both neighbours arrived
        arrived = [keys[i] for i in sorted(order[:step + 1])]       # was inferred with them
        assert seen_with == {key: (arrived[i - 1], arrived[i + 1])
                             for i, key in enumerate(arrived[1:-1], start=1)}
    assert analyzer.last_result.status == analyze_series(planes, backend).status
    streamed_predictions = analyzer.progress[batch.planes[0].header.series_uid].predictions
    for expected in batch.predictions:
        got = streamed_predictions[expected.instance_key]
        assert np.abs(got.lesion_u8.astype(int) - expected.lesion_u8).max() <= 1
        assert got.tumour_probability == pytest.approx(expected.tumour_probability, abs=1e-5)


def test_a_2_5d_model_exports_to_onnx_and_passes_parity_with_its_neighbours(
        pet_cases, context_model, tmp_path):
    out = tmp_path / "model.onnx"
    subprocess.run([sys.executable, "-m", "edge", "export", "onnx", "--model",
                    str(context_model), "--out", str(out), "--data", str(pet_cases[1])],
                   check=True, capture_output=True, timeout=300)
    report = json.loads((tmp_path / "onnx-parity.json").read_text())
    assert report["passed"]
    with OnnxRuntimeBackend(out, ["CPUExecutionProvider"]) as onnx_model:
        assert onnx_model.spec.context_slices == 1 and onnx_model.spec.channels == 3
