"""The detection network: a 2D residual U-Net with attention gates on the skip
connections and a slice-level classification head.

The encoder downsamples `depth` times; each level is a residual block. Before a skip
joins the decoder, an attention gate (Oktay et al., 2018) weighs it by what the coarser
level finds relevant. The head pools the bottleneck into one tumour-present logit per
slice. `forward` returns logits; `Probabilities` wraps a network for inference and export.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class NetworkConfig:
    in_channels: int = 1
    base_channels: int = 16
    depth: int = 4                    # number of 2x downsamplings
    max_channels: int = 128
    attention: bool = True

    def channels(self, level: int) -> int:
        return min(self.base_channels * 2**level, self.max_channels)

    def to_dict(self) -> dict:
        return asdict(self)


TINY = NetworkConfig(base_channels=4, depth=2, max_channels=16)


class ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(c_out)
        self.skip = (nn.Identity() if c_in == c_out and stride == 1 else
                     nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                   nn.BatchNorm2d(c_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return F.relu(y + self.skip(x))


class AttentionGate(nn.Module):
    """Weighs a skip connection by a gating signal from the coarser level."""

    def __init__(self, c_skip: int, c_gate: int, c_inner: int):
        super().__init__()
        self.skip = nn.Conv2d(c_skip, c_inner, 1, bias=False)
        self.gate = nn.Conv2d(c_gate, c_inner, 1, bias=True)
        self.psi = nn.Conv2d(c_inner, 1, 1, bias=True)

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        weight = torch.sigmoid(self.psi(F.relu(self.skip(skip) + self.gate(gate))))
        return skip * weight


class Encoder(nn.Module):
    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.stem = ResidualBlock(config.in_channels, config.channels(0))
        self.down = nn.ModuleList(
            ResidualBlock(config.channels(level - 1), config.channels(level), stride=2)
            for level in range(1, config.depth + 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.stem(x)]
        for block in self.down:
            features.append(block(features[-1]))
        return features


class DecoderLevel(nn.Module):
    def __init__(self, c_skip: int, c_below: int, attention: bool):
        super().__init__()
        self.attend = AttentionGate(c_skip, c_below, max(c_skip // 2, 1)) if attention else None
        self.block = ResidualBlock(c_skip + c_below, c_skip)

    def forward(self, skip: torch.Tensor, below: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(below, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        if self.attend is not None:
            skip = self.attend(skip, up)
        return self.block(torch.cat([skip, up], dim=1))


class DetectionNet(nn.Module):
    """Residual attention U-Net: (N, C, H, W) -> lesion logits (N, 1, H, W) and
    tumour-present logits (N, 1)."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = nn.ModuleList(
            DecoderLevel(config.channels(level), config.channels(level + 1), config.attention)
            for level in reversed(range(config.depth)))
        self.segment = nn.Conv2d(config.channels(0), 1, 1)
        self.classify = nn.Linear(2 * config.channels(config.depth), 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(x)
        y = features[-1]
        pooled = torch.cat([y.mean(dim=(2, 3)), y.amax(dim=(2, 3))], dim=1)
        for level, skip in zip(self.decoder, reversed(features[:-1]), strict=True):
            y = level(skip, y)
        return self.segment(y), self.classify(pooled)


class Probabilities(nn.Module):
    """Inference form: per-pixel lesion probability and per-slice tumour probability."""

    def __init__(self, net: DetectionNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lesion, tumour = self.net(x)
        return torch.sigmoid(lesion), torch.sigmoid(tumour)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def gflops_per_slice(config: NetworkConfig, size: int) -> float:
    """Multiply-accumulates x 2 of one forward pass on a size x size slice, in GFLOP."""
    net = DetectionNet(config).eval()
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += 2 * output.numel() * k * module.in_channels // module.groups
        elif isinstance(module, nn.Linear):
            total += 2 * module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        net(torch.zeros(1, config.in_channels, size, size))
    for handle in handles:
        handle.remove()
    return total / 1e9
