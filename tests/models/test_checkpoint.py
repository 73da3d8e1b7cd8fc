"""Checkpoints: averaging the weights of a model and a fine-tune of it."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from edge.errors import ModelError
from models.checkpoint import Checkpoint, average_checkpoints, load_checkpoint, save_checkpoint
from models.network import TINY, DetectionNet
from tests.factories import TINY_PET, scanside


def saved(path, seed, network=TINY, spec=TINY_PET):
    torch.manual_seed(seed)
    net = DetectionNet(network)
    with torch.no_grad():            # every weight and statistic away from its default
        for name, value in net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                value.fill_(seed)
            else:
                value.uniform_(0.5, 2.0)
    return save_checkpoint(path, Checkpoint(network, spec, net.state_dict()), slim=True)


def test_the_average_is_each_weight_and_batchnorm_statistic_mixed_by_the_weight(tmp_path):
    first = saved(tmp_path / "a.pt", 1)
    second = saved(tmp_path / "b.pt", 2, spec=replace(TINY_PET, name="fine-tuned"))
    result = scanside("average", str(first), str(second), "--weight", "0.25",
                      "--out", str(tmp_path / "mean.pt"))
    assert result.returncode == 0, result.stderr
    a, b = load_checkpoint(first).state, load_checkpoint(second).state
    mean = load_checkpoint(tmp_path / "mean.pt")
    assert mean.state.keys() == a.keys()
    for name, value in mean.state.items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.75 * a[name] + 0.25 * b[name]), name
            assert not torch.equal(value, a[name]), name
        else:
            assert torch.equal(value, a[name]), name      # batch counts are not averaged
    assert mean.spec.name == "tiny"                       # the first model's spec
    assert mean.spec.training_data["averaged"] == {"models": [str(first), str(second)],
                                                   "weight": 0.25}
    mean.build()                                          # loads into the network
    assert all(torch.equal(value, a[name]) for name, value in
               average_checkpoints(first, second, 0.0).state.items())


def test_models_that_differ_in_network_or_input_are_not_averaged(tmp_path):
    first = saved(tmp_path / "a.pt", 1)
    wider = saved(tmp_path / "wide.pt", 2, network=replace(TINY, base_channels=6))
    with pytest.raises(ModelError, match=f"{wider}: network .* differs from {first}"):
        average_checkpoints(first, wider)
    finer = saved(tmp_path / "fine.pt", 3, spec=replace(TINY_PET, spacing_mm=8.0))
    with pytest.raises(ModelError, match=f"{finer}: spec spacing_mm 8.0 differs from .* 16.0"):
        average_checkpoints(first, finer)
    with pytest.raises(ModelError, match="averaging weight 1.5: expected a number from 0 to 1"):
        average_checkpoints(first, first, 1.5)
    other = saved(tmp_path / "other.pt", 4, spec=replace(TINY_PET, modality="CT"))
    with pytest.raises(ModelError, match="spec modality 'CT' differs"):
        average_checkpoints(first, other, across_grids=True)


def test_a_fine_tune_moved_to_another_grid_averages_onto_the_first_models_grid(tmp_path):
    finer = saved(tmp_path / "fine.pt", 1, spec=replace(TINY_PET, size=48, spacing_mm=8.0))
    first = saved(tmp_path / "a.pt", 2)
    result = scanside("average", str(finer), str(first), "--across-grids",
                      "--out", str(tmp_path / "mean.pt"))
    assert result.returncode == 0, result.stderr
    mean = load_checkpoint(tmp_path / "mean.pt")
    assert (mean.spec.size, mean.spec.spacing_mm) == (48, 8.0)
    assert mean.spec.training_data["averaged"]["grids"] == [[48, 8.0], [32, 16.0]]
    a, b = load_checkpoint(finer).state, load_checkpoint(first).state
    assert all(torch.allclose(value, (a[name] + b[name]) / 2)
               for name, value in mean.state.items() if value.is_floating_point())
