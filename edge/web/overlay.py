"""Lesion overlays for the status page: the slice in grey, the probability as heat, and
the lesion outline, as PNG (Pillow)."""

from __future__ import annotations

import io

import contourpy
import numpy as np
from PIL import Image, ImageDraw


def preview(image: np.ndarray) -> np.ndarray:
    """A network input's first channel as uint8 for display (1st-99th percentile)."""
    channel = image[0]
    low, high = np.percentile(channel, [1, 99])
    scaled = (channel - low) / (high - low) if high > low else np.zeros_like(channel)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def overlay_png(gray: np.ndarray, probability_u8: np.ndarray, threshold: float,
                size: int = 256, caption: str = "", truth: np.ndarray | None = None) -> bytes:
    """Grey slice + red-to-yellow heat where the lesion probability is above 0.2 +
    green outline at `threshold` (+ a cyan outline of `truth`, a boolean mask of the true
    lesions, where evaluation has one), scaled to `size` pixels."""
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    p = probability_u8.astype(np.float32) / 255.0
    heat = np.stack([np.ones_like(p), p, np.zeros_like(p)], axis=-1) * 255
    alpha = np.where(p > 0.2, 0.15 + 0.45 * p, 0.0)[..., None]
    rgb = rgb * (1 - alpha) + heat * alpha
    picture = Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")
    scale = size / gray.shape[0]
    picture = picture.resize((size, round(gray.shape[1] * scale)), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(picture)
    outlines = [(p >= threshold, (40, 255, 90))]
    if truth is not None:
        outlines.append((truth, (0, 220, 255)))
    for mask, colour in outlines:
        padded = np.pad(mask.astype(np.float32), 1)
        for line in contourpy.contour_generator(z=padded).lines(0.5):
            points = [((x - 1 + 0.5) * scale, (y - 1 + 0.5) * scale) for x, y in line]
            if len(points) > 1:
                draw.line(points + points[:1], fill=colour, width=2)
    if caption:
        draw.rectangle((0, 0, size, 18), fill=(0, 0, 0))
        draw.text((4, 3), caption, fill=(255, 255, 255))
    out = io.BytesIO()
    picture.save(out, "PNG", optimize=True)
    return out.getvalue()
