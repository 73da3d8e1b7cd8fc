"""Transfer learning: starting one network from another's weights.

`transfer_encoder` copies another model's encoder (CT into PET, say); `fit_stem` refits
the first layer when the two networks' inputs differ (other pixel channels, neighbouring
slices, an MR weighting code), so that a network widened to a new input starts out
computing what its source did; `set_encoder_trainable` freezes the copied encoder for the
first epochs of a fine-tune.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from edge.inference.spec import ModelSpec
from models.network import DetectionNet

STEM_WEIGHTS = ("encoder.stem.conv1.weight", "encoder.stem.skip.0.weight")  # see the input


class StemLayout(NamedTuple):
    """What a network's input channels hold, in `with_neighbours` order: `slices` blocks of
    `image_channels` pixel channels (the slice, then its neighbours), then `descriptive`
    channels (an MR weighting code)."""

    image_channels: int
    slices: int = 1
    descriptive: int = 0

    @classmethod
    def of(cls, spec: ModelSpec) -> StemLayout:
        return cls(spec.intensity.image_channels, spec.slices, int(spec.intensity.weighting))

    @property
    def channels(self) -> int:
        return self.image_channels * self.slices + self.descriptive


def fit_stem(weight: torch.Tensor, source: StemLayout, target: StemLayout) -> torch.Tensor:
    """A stem weight (out, in, k, k) of a network whose input is laid out as `source`,
    refitted to `target`'s input, channel blocks matched by what they hold.

    A slice block with as many pixel channels as the source's keeps its weights;
    otherwise (CT's two windows into a one-channel PET model, say) each of its channels
    gets the mean of the source block's. A block the source lacks (the neighbours a 2D
    model never saw, an MR weighting code) starts at zero, so the network computes what
    the source did until training teaches it to use them.
    """
    if source == target:
        return weight
    fitted = weight.new_zeros((weight.shape[0], target.channels, *weight.shape[2:]))
    for block in range(min(source.slices, target.slices)):
        have = weight[:, block * source.image_channels:(block + 1) * source.image_channels]
        fitted[:, block * target.image_channels:(block + 1) * target.image_channels] = (
            have if source.image_channels == target.image_channels
            else have.mean(dim=1, keepdim=True))
    shared = min(source.descriptive, target.descriptive)
    start, end = source.channels - source.descriptive, target.channels - target.descriptive
    fitted[:, end:end + shared] = weight[:, start:start + shared]
    return fitted


def transfer_encoder(target: DetectionNet, source: DetectionNet,
                     target_layout: StemLayout | None = None,
                     source_layout: StemLayout | None = None) -> list[str]:
    """Copy the encoder weights of `source` into `target`; returns the copied names.
    A stem for another input is fitted (`fit_stem`); a layout not given is taken to be
    that many pixel channels of one slice."""
    own = target.state_dict()
    copied = []
    for name, tensor in source.state_dict().items():
        if not name.startswith("encoder.") or name not in own:
            continue
        if tensor.shape != own[name].shape:
            if name not in STEM_WEIGHTS:
                continue
            tensor = fit_stem(tensor, source_layout or StemLayout(tensor.shape[1]),
                              target_layout or StemLayout(own[name].shape[1]))
        own[name] = tensor.clone()
        copied.append(name)
    target.load_state_dict(own)
    return copied


def set_encoder_trainable(net: DetectionNet, trainable: bool) -> None:
    """Freeze or release the encoder; a frozen encoder also keeps its BatchNorm statistics."""
    for parameter in net.encoder.parameters():
        parameter.requires_grad_(trainable)
    net.encoder.train(trainable and net.training)
