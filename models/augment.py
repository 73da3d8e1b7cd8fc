"""Training augmentation on batches: geometry that keeps image and mask aligned, then
intensity and noise jitter on the image alone.

One random affine per sample (rotation, isotropic scaling, translation, left-right and
up-down flips) is applied to image and mask through the same sampling grid, bilinear
for the image and nearest for the mask, so a lesion pixel stays a lesion pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class AugmentConfig:
    rotation_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.2)
    translation: float = 0.08          # fraction of the image side
    flip_left_right: float = 0.5
    flip_up_down: float = 0.1
    intensity_scale: float = 0.1       # multiplicative jitter, per channel
    intensity_shift: float = 0.08      # additive jitter, per channel
    noise_std: tuple[float, float] = (0.0, 0.05)
    # fraction of samples whose descriptive channels (an MR weighting code) are set to 0,
    # "unknown", as a series without the tags that tell T1 from T2 would give
    unknown_code: float = 0.1


def random_affines(n: int, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """(n, 2, 3) affine matrices in the normalised coordinates of `affine_grid`."""

    def uniform(low, high):
        return low + (high - low) * torch.rand(n, generator=generator)

    angle = uniform(-config.rotation_deg, config.rotation_deg) * math.pi / 180
    scale = uniform(*config.scale)
    flip_x = torch.where(torch.rand(n, generator=generator) < config.flip_left_right, -1.0, 1.0)
    flip_y = torch.where(torch.rand(n, generator=generator) < config.flip_up_down, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip_x, -sin * flip_y
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip_x, cos * flip_y
    reach = 2 * config.translation     # normalised coordinates span 2 per image side
    theta[:, 0, 2], theta[:, 1, 2] = uniform(-reach, reach), uniform(-reach, reach)
    return theta


def warp(images: torch.Tensor, masks: torch.Tensor,
         theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply per-sample affines to images (bilinear) and masks (nearest) alike."""
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border",
                           align_corners=False)
    masks = F.grid_sample(masks, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return images, masks


def jitter_intensity(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator,
                     image_channels: int | None = None, slices: int = 1) -> torch.Tensor:
    """Scale, shift and add noise to the pixel channels: `slices` blocks (a slice and its
    neighbours, `with_neighbours` order) of `image_channels` each (all channels of one
    slice by default). A channel's scale and shift are drawn once a sample and apply to
    every slice's block alike, as one series' slices share a scanner's calibration. The
    other channels (an MR weighting code, say) describe the slice and stay as they are."""
    n, c = images.shape[:2]
    per_slice = c if image_channels is None else image_channels
    pixels = per_slice * slices
    # A scale and shift for each channel of one slice, noise for every channel: a 2D batch
    # draws the random numbers it always has, so a resumed run goes on as it began.
    drawn = c - pixels + per_slice
    scale = 1 + config.intensity_scale * (2 * torch.rand(n, drawn, 1, 1, generator=generator) - 1)
    shift = config.intensity_shift * (2 * torch.rand(n, drawn, 1, 1, generator=generator) - 1)
    low, high = config.noise_std
    sigma = low + (high - low) * torch.rand(n, 1, 1, 1, generator=generator)
    noise = torch.randn(images.shape, generator=generator)
    jittered = (images[:, :pixels] * scale[:, :per_slice].repeat(1, slices, 1, 1)
                + shift[:, :per_slice].repeat(1, slices, 1, 1) + noise[:, :pixels] * sigma)
    return torch.cat([jittered, images[:, pixels:]], dim=1)


def augment(images: torch.Tensor, masks: torch.Tensor, config: AugmentConfig,
            generator: torch.Generator, image_channels: int | None = None,
            slices: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch: (N, C, H, W) images and (N, 1, H, W) float masks. Intensity
    jitter touches only the pixel channels (`jitter_intensity`); the others keep their
    code, or in a fraction `unknown_code` of the samples become 0."""
    images, masks = warp(images, masks, random_affines(len(images), config, generator))
    images = jitter_intensity(images, config, generator, image_channels, slices)
    pixels = images.shape[1] if image_channels is None else image_channels * slices
    if pixels < images.shape[1]:
        forget = torch.rand(len(images), generator=generator) < config.unknown_code
        images[forget, pixels:] = 0.0
    return images, masks
