"""Augmentation keeps image and mask aligned."""

from __future__ import annotations

import torch

from models.augment import AugmentConfig, augment, random_affines, warp


def blob_batch(n=8, size=64):
    masks = torch.zeros(n, 1, size, size)
    for i in range(n):
        top, left = 10 + 3 * i, 30 - 2 * i
        masks[i, 0, top:top + 12, left:left + 9] = 1
    return masks.clone(), masks


def centroid(x):
    ys, xs = torch.meshgrid(torch.arange(x.shape[-2]), torch.arange(x.shape[-1]), indexing="ij")
    total = x.sum(dim=(-2, -1))
    return torch.stack([(x * ys).sum(dim=(-2, -1)) / total, (x * xs).sum(dim=(-2, -1)) / total], -1)


def test_geometric_augmentation_moves_image_and_mask_together():
    images, masks = blob_batch()
    generator = torch.Generator().manual_seed(3)
    theta = random_affines(len(images), AugmentConfig(rotation_deg=30, translation=0.15), generator)
    moved_images, moved_masks = warp(images, masks, theta)
    assert (moved_masks != masks).any()                           # something really moved
    distance = (centroid(moved_images[:, 0]) - centroid(moved_masks[:, 0])).norm(dim=-1)
    assert distance.max() < 0.75
    overlap = (moved_images[:, 0] > 0.5) & (moved_masks[:, 0] > 0.5)
    assert overlap.sum() / (moved_masks > 0.5).sum() > 0.9


def test_mask_stays_binary_and_intensity_jitter_leaves_it_alone():
    images, masks = blob_batch()
    _, out_masks = augment(images, masks, AugmentConfig(), torch.Generator().manual_seed(0))
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}


def test_augmentation_is_reproducible_from_the_seed():
    images, masks = blob_batch()
    a = augment(images, masks, AugmentConfig(), torch.Generator().manual_seed(7))
    b = augment(images, masks, AugmentConfig(), torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_a_weighting_channel_keeps_its_code_through_warp_and_jitter():
    images, masks = blob_batch()
    code = torch.tensor([-1.0, 0.0, 1.0, 1.0, -1.0, 0.0, 1.0, -1.0])[:, None, None, None]
    with_code = torch.cat([images, code.expand_as(images)], dim=1)
    generator = torch.Generator().manual_seed(0)
    out, _ = augment(with_code, masks, AugmentConfig(unknown_code=0.0), generator,
                     image_channels=1)
    assert torch.allclose(out[:, 1:], code.expand_as(images), atol=1e-6)
    assert not torch.allclose(out[:, :1], images)                  # the image was jittered


def test_some_samples_lose_their_weighting_code_as_a_series_without_tags_would():
    images, masks = blob_batch()
    code = torch.tensor([-1.0, 1.0, 1.0, -1.0, -1.0, 1.0, 1.0, -1.0])[:, None, None, None]
    with_code = torch.cat([images, code.expand_as(images)], dim=1)
    out, _ = augment(with_code, masks, AugmentConfig(unknown_code=0.5),
                     torch.Generator().manual_seed(3), image_channels=1)
    per_sample = out[:, 1].flatten(1)
    forgotten = (per_sample == 0).all(dim=1)
    kept = torch.isclose(per_sample, code.flatten()[:, None].expand_as(per_sample)).all(dim=1)
    assert (forgotten | kept).all()                     # each sample whole: code or 0
    assert 0 < int(forgotten.sum()) < len(images)
