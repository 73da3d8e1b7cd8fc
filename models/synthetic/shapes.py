"""Solid shapes in patient coordinates (mm), tested point-wise.

Every shape answers `inside(points)` for an (N, 3) array and gives a bounding box, so a
slice only evaluates the shapes it crosses, and only inside their boxes. Shapes whose test
is a few operations on x, y and z also answer `inside_axes(x, y, z)` for coordinates that
broadcast against each other: on an axial slice, x along the columns, y along the rows and
z per sub-slice, so most of the work is done once per row or column, not per pixel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation matrix."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


@dataclass(frozen=True)
class Ellipsoid:
    center: np.ndarray                       # (3,) mm
    radii: np.ndarray                        # (3,) mm, along the rotated axes
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    wobble: tuple = ()                       # ((amplitude, direction (3,), frequency), ...)

    def inside(self, p: np.ndarray) -> np.ndarray:
        local = (p - self.center) @ self.rotation / self.radii
        r2 = np.einsum("ij,ij->i", local, local)
        if not self.wobble:
            return r2 <= 1.0
        # Low-frequency radial perturbation: organs are not ellipsoids. The radius scale
        # stays within 1 -+ the amplitudes' sum, so only the points between need it.
        reach = sum(abs(a) for a, _, _ in self.wobble)
        result = r2 < max(1 - reach, 0) ** 2 * (1 - 1e-9)
        shell = np.flatnonzero(~result & (r2 <= (1 + reach) ** 2 * (1 + 1e-9)))
        local, r2 = local[shell], r2[shell]
        unit = local / np.sqrt(np.maximum(r2, 1e-12))[:, None]
        scale = np.ones(len(shell))
        for amplitude, direction, frequency in self.wobble:
            scale += amplitude * np.cos(frequency * (unit @ direction))
        result[shell] = r2 <= scale**2
        return result

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        reach = np.abs(self.rotation) @ self.radii * (1 + sum(a for a, _, _ in self.wobble))
        return self.center - reach, self.center + reach


@dataclass(frozen=True)
class Union:
    parts: tuple

    def inside(self, p: np.ndarray) -> np.ndarray:
        result = np.zeros(len(p), bool)
        for part in self.parts:
            result |= part.inside(p)
        return result

    def bbox(self):
        lows, highs = zip(*(part.bbox() for part in self.parts), strict=True)
        return np.min(lows, axis=0), np.max(highs, axis=0)


@dataclass(frozen=True)
class Spiculated:
    """A sphere with thin spikes: the margin of an infiltrating tumour."""

    center: np.ndarray
    radius: float
    spikes: np.ndarray        # (k, 3) unit directions
    lengths: np.ndarray       # (k,) mm beyond the radius
    width: float = 0.25       # spike half-angle, radians

    def inside(self, p: np.ndarray) -> np.ndarray:
        d = p - self.center
        r = np.linalg.norm(d, axis=1)
        result = r <= self.radius
        cos = (d @ self.spikes.T) / np.maximum(r, 1e-9)[:, None]
        angle = np.arccos(np.clip(cos, -1, 1))
        reach = self.radius + self.lengths[None, :] * np.clip(1 - angle / self.width, 0, 1)
        return result | (r[:, None] <= reach).any(axis=1)

    def bbox(self):
        reach = self.radius + float(self.lengths.max(initial=0))
        return self.center - reach, self.center + reach


@dataclass(frozen=True)
class EllipticCylinder:
    """A vertical (z) cylinder whose half-axes change smoothly with z: the trunk."""

    center_xy: np.ndarray
    half_axes: np.ndarray            # (2,) mm at the reference height
    z_range: tuple[float, float]
    taper: tuple[float, float] = (0.0, 0.0)   # relative change of half-axes per 100 mm

    def half_axes_at(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mid = 0.5 * (self.z_range[0] + self.z_range[1])
        a = self.half_axes[0] * (1 + self.taper[0] * (z - mid) / 100)
        b = self.half_axes[1] * (1 + self.taper[1] * (z - mid) / 100)
        return a, b

    def inside(self, p: np.ndarray, shrink: float = 0.0) -> np.ndarray:
        return self.inside_axes(p[:, 0], p[:, 1], p[:, 2], shrink)

    def inside_axes(self, x, y, z, shrink: float = 0.0) -> np.ndarray:
        a, b = self.half_axes_at(z)
        u = (x - self.center_xy[0]) / np.maximum(a - shrink, 1)
        v = (y - self.center_xy[1]) / np.maximum(b - shrink, 1)
        return (u * u + v * v <= 1) & (z >= self.z_range[0]) & (z <= self.z_range[1])

    def bbox(self):
        reach = np.array([*self.half_axes * 1.5, 0])
        low = np.array([*self.center_xy, self.z_range[0]]) - reach
        high = np.array([*self.center_xy, self.z_range[1]]) + reach
        return low, high


@dataclass(frozen=True)
class Shell:
    """What is inside `outer` but not `inner`: a shape minus a shrunk copy of itself."""

    outer: object
    inner: object

    def inside(self, p: np.ndarray) -> np.ndarray:
        return self.outer.inside(p) & ~self.inner.inside(p)

    def bbox(self):
        return self.outer.bbox()


@dataclass(frozen=True)
class Rib:
    """One rib: a thin band of the trunk's outline at one height, sloping down anteriorly."""

    trunk: EllipticCylinder
    z: float
    depth: float = 9.0           # mm inside the outline
    thickness: float = 7.0       # mm in z
    slope: float = 0.35          # mm of z per mm towards anterior
    anterior_limit: float = -0.3  # ribs end before the front (fraction of the half-depth)

    def inside(self, p: np.ndarray) -> np.ndarray:
        return self.inside_axes(p[:, 0], p[:, 1], p[:, 2])

    def inside_axes(self, x, y, z) -> np.ndarray:
        rel_y = y - self.trunk.center_xy[1]
        near = np.abs(z - self.z - self.slope * rel_y) <= self.thickness / 2
        x, rel_y, z, near = np.broadcast_arrays(x, rel_y, z, near)
        result = np.zeros(near.shape, bool)
        near = np.nonzero(near)               # the few points at the rib's height
        a, b = self.trunk.half_axes_at(z[near])
        u = (x[near] - self.trunk.center_xy[0]) / a
        v = rel_y[near] / b
        radius = np.sqrt(u * u + v * v)
        band = (radius <= 1 - 6 / b) & (radius >= 1 - (6 + self.depth) / b)
        result[near] = band & (v >= self.anterior_limit)
        return result

    def bbox(self):
        """The trunk's box, cut to the rib's rows and heights, for a trunk at most 1.2
        times its reference size at the rib's height (1 mm to spare)."""
        low, high = self.trunk.bbox()
        low, high = low.copy(), high.copy()
        back = 1.2 * self.trunk.half_axes[1]        # the rib's greatest rel_y
        front = min(self.anterior_limit, 0) * back  # and its least
        low[1], high[1] = self.trunk.center_xy[1] + front - 1, self.trunk.center_xy[1] + back + 1
        low[2] = self.z + self.slope * front - self.thickness / 2 - 1
        high[2] = self.z + self.slope * back + self.thickness / 2 + 1
        return low, high
