"""The residual attention U-Net."""

from __future__ import annotations

import torch

from models.network import TINY, DetectionNet, NetworkConfig, Probabilities, gflops_per_slice


def test_outputs_a_lesion_map_of_the_input_size_and_one_tumour_logit_per_slice():
    net = DetectionNet(NetworkConfig(in_channels=2, base_channels=4, depth=3, max_channels=16))
    lesion, tumour = net(torch.randn(3, 2, 48, 40))
    assert lesion.shape == (3, 1, 48, 40) and tumour.shape == (3, 1)


def test_probabilities_are_between_zero_and_one():
    lesion, tumour = Probabilities(DetectionNet(TINY)).eval()(torch.randn(2, 1, 32, 32) * 10)
    for out in (lesion, tumour):
        assert out.min() >= 0 and out.max() <= 1


def test_attention_gates_sit_on_every_skip_and_can_be_left_out():
    with_gates = DetectionNet(NetworkConfig(depth=3))
    assert sum(level.attend is not None for level in with_gates.decoder) == 3
    without = DetectionNet(NetworkConfig(depth=3, attention=False))
    assert all(level.attend is None for level in without.decoder)


def test_cost_grows_with_the_square_of_the_slice_side():
    small, large = gflops_per_slice(TINY, 64), gflops_per_slice(TINY, 128)
    assert 3.8 < large / small < 4.2
