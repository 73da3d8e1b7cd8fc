"""A synthetic torso: organs and lesions as solid shapes in patient coordinates.

Coordinates are DICOM patient coordinates (LPS, mm): +x towards the patient's left, +y
posterior, +z superior. `sample_patient` draws one patient: body habitus, organ sizes and
positions, and 0-4 lesions of varied shape, size and kind placed mostly in organs. The
modality physics (`physics.py`) turns tissues into image values.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum

import numpy as np

from models.synthetic.shapes import (
    Ellipsoid,
    EllipticCylinder,
    Rib,
    Spiculated,
    Union,
    random_rotation,
)


class Tissue(IntEnum):
    AIR = 0
    FAT = 1
    MUSCLE = 2
    SOFT = 3          # abdominal contents: bowel, mesentery
    LUNG = 4
    LIVER = 5
    SPLEEN = 6
    KIDNEY = 7
    BONE = 8          # cortical bone: ribs, vertebral cortex
    MARROW = 9
    VESSEL = 10       # aorta, IVC, heart chambers
    GAS = 11          # bowel gas
    CSF = 12
    BLADDER = 13
    DISC = 14


LESION_KINDS = ("round", "ellipsoid", "lobulated", "spiculated", "rim", "cyst")
ORGAN_WEIGHTS = {"liver": 0.42, "lung": 0.2, "kidney": 0.14, "spleen": 0.1, "soft": 0.14}
BRIGHT_SHARE = 0.35      # CT: solid lesions brighter than their organ (the rest darker)
T1_SHARE = 0.45          # MR: series T1-weighted (the rest T2)
CYST_UPTAKE = 0.6        # PET: a cystic tumour's uptake against a solid one's
ORGAN_TISSUE = {"liver": Tissue.LIVER, "lung": Tissue.LUNG, "kidney": Tissue.KIDNEY,
                "spleen": Tissue.SPLEEN, "soft": Tissue.SOFT}


@dataclass(frozen=True)
class Lesion:
    kind: str                     # one of LESION_KINDS
    organ: str                    # where it was placed
    solid: object                 # the whole lesion
    core: object | None           # necrotic core (rim) or fluid (cyst), inside `solid`
    center_mm: np.ndarray         # centroid of `solid`, measured
    volume_mm3: float             # measured
    strength: float               # 0.3-1: how far from its organ its intensity is
    sign: int                     # +1 brighter than the organ, -1 darker (CT/MR)
    uptake: float                 # PET: SUV ratio to the organ background (> 1)

    @property
    def diameter_mm(self) -> float:
        """Diameter of the sphere with the lesion's volume."""
        return float((6 * self.volume_mm3 / np.pi) ** (1 / 3))


@dataclass(frozen=True)
class TrainingMix:
    """Which lesions (and MR weightings) a training set draws more of than `scanside synth`
    does by default; the default draws every patient exactly as before the options existed.

    faint: the share of lesions drawn at the low end of their modality's contrast (`_faint`).
    small: the share drawn 4-10 mm across, rather than 4-40 mm.
    bright: the share drawn brighter than their organ (CT solid lesions, the only ones whose
      polarity varies), or None for BRIGHT_SHARE; the same draw decides either way, so a
      lesion drawn bright by default stays bright at any larger share.
    t1: the share of MR series drawn T1-weighted (the rest T2), or None for T1_SHARE; the
      same draw decides, so a series drawn T1 by default stays T1 at any larger share.
    """

    faint: float = 0.0
    small: float = 0.0
    bright: float | None = None
    t1: float | None = None

    def recorded(self) -> dict[str, float]:
        """The options that differ from the default, as truth.json's generator notes them."""
        return {name: value for name, value in vars(self).items()
                if value != getattr(DEFAULT_MIX, name)}


DEFAULT_MIX = TrainingMix()


@dataclass(frozen=True)
class Patient:
    """One synthetic body. `layers` are painted in order: later ones win."""

    layers: tuple[tuple[Tissue, object], ...]
    lesions: tuple[Lesion, ...]
    trunk: EllipticCylinder
    diaphragm_z: float
    weight_kg: float
    scan_z: tuple[float, float]    # the slab a scan of this patient should cover

    def tissues(self, points: np.ndarray | Grid) -> np.ndarray:
        """Tissue label at each point of a (..., 3) array: (N, 3) points, or the (sub-slices,
        rows, columns, 3) points of a slice, or their `Grid`."""
        grid = points if isinstance(points, Grid) else Grid(points)
        labels = np.zeros(grid.shape, np.int8)
        for tissue, shape in self.layers:
            block = grid.block(shape.bbox())
            if block is not None:
                np.copyto(labels[block], tissue, where=grid.inside(shape, block))
        return labels.reshape(grid.given)

    def lesion_ids(self, points: np.ndarray | Grid) -> tuple[np.ndarray, np.ndarray]:
        """(lesion index + 1 or 0, True where inside the lesion's core) at each point, as
        `tissues`."""
        grid = points if isinstance(points, Grid) else Grid(points)
        ids = np.zeros(grid.shape, np.int8)
        core = np.zeros(grid.shape, bool)
        for i, lesion in enumerate(self.lesions):
            block = grid.block(lesion.solid.bbox())
            if block is None:
                continue
            hit = grid.inside(lesion.solid, block)
            ids[block][hit] = i + 1
            if lesion.core is not None and hit.any():
                core[block][hit] |= lesion.core.inside(grid.points[block][hit])
        return ids.reshape(grid.given), core.reshape(grid.given)


class Grid:
    """The points a patient is evaluated at, as (sub-slices, rows, columns, 3).

    On an axial slice, x changes along the columns only, y along the rows only and z per
    sub-slice only: a shape's bounding box is then a block of the grid, cut out by slicing,
    and a shape with `inside_axes` is evaluated on the block's three axes, broadcast. Other
    points, such as an (N, 3) array, are one row of N columns, evaluated whole. Either way
    each point gets the value the shape's `inside` gives it."""

    def __init__(self, points: np.ndarray):
        self.given = points.shape[:-1]
        self.points = points.reshape((1,) * (4 - points.ndim) + points.shape)
        self.shape = self.points.shape[:3]
        full = [self.points[..., i] for i in range(3)]
        lines = [full[0][:1, :1, :], full[1][:1, :, :1], full[2][:, :1, :1]]
        self.axial = all(np.array_equal(f, np.broadcast_to(line, self.shape))
                         for f, line in zip(full, lines, strict=True))
        self.axes = lines if self.axial else full
        self.whole = tuple(slice(0, n) for n in self.shape)

    def block(self, box, within: tuple[slice, ...] | None = None) -> tuple[slice, ...] | None:
        """The slices (sub-slices, rows, columns) of `within` (default: all) that hold every
        point inside `box`, a (low, high) pair of x, y, z corners; None when none does."""
        within = within or self.whole
        if not self.axial:
            return within
        low, high = box
        cut = [None, None, None]
        for axis, dim in ((0, 2), (1, 1), (2, 0)):        # x: columns, y: rows, z: sub-slices
            line = self.axes[axis].reshape(-1)[within[dim]]
            inside = np.flatnonzero((line >= low[axis]) & (line <= high[axis]))
            if inside.size == 0:
                return None
            start = within[dim].start
            cut[dim] = slice(start + inside[0], start + inside[-1] + 1)
        return tuple(cut)

    def inside(self, shape, block: tuple[slice, ...]) -> np.ndarray:
        """`shape.inside` for the points of `block`, shaped as the block."""
        size = tuple(s.stop - s.start for s in block)
        if isinstance(shape, Union):                       # each part within its own box
            result = np.zeros(size, bool)
            for part in shape.parts:
                cut = self.block(part.bbox(), block)
                if cut is not None:
                    result[tuple(slice(c.start - b.start, c.stop - b.start)
                                 for c, b in zip(cut, block, strict=True))] |= \
                        self.inside(part, cut)
            return result
        if hasattr(shape, "inside_axes"):
            x, y, z = (axis[tuple(s if n > 1 else slice(None)
                                  for s, n in zip(block, axis.shape, strict=True))]
                       for axis in self.axes)
            return np.broadcast_to(shape.inside_axes(x, y, z), size)
        return shape.inside(self.points[block].reshape(-1, 3)).reshape(size)


def sample_patient(rng: np.random.Generator, n_lesions: int | None = None,
                   mix: TrainingMix = DEFAULT_MIX) -> Patient:
    """Draw one patient with `n_lesions` lesions (random 0-4, a quarter without, if None),
    drawn as `mix` says."""
    a, b = rng.uniform(125, 185), rng.uniform(90, 135)
    diaphragm = rng.uniform(190, 230)
    trunk = EllipticCylinder(np.array([0.0, 0.0]), np.array([a, b]), (-60.0, 420.0),
                             (rng.uniform(-0.06, 0.02), rng.uniform(-0.05, 0.03)))
    fat = rng.uniform(6, 38)
    wall = rng.uniform(8, 18)
    organs = _organs(rng, a, b, diaphragm)
    layers = [
        (Tissue.FAT, trunk),
        (Tissue.MUSCLE, _Shrunk(trunk, fat)),
        (Tissue.SOFT, _Shrunk(trunk, fat + wall)),
        *[(Tissue.GAS, g) for g in _bowel_gas(rng, a, b, diaphragm)],
        (Tissue.BLADDER, Ellipsoid(np.array([rng.uniform(-10, 10), -0.35 * b, diaphragm - 225]),
                                   np.array([45, 35, 35]) * rng.uniform(0.6, 1.2))),
        (Tissue.LUNG, organs["lung"]),
        (Tissue.VESSEL, organs["heart"]),
        (Tissue.LIVER, organs["liver"]),
        (Tissue.SPLEEN, organs["spleen"]),
        (Tissue.KIDNEY, organs["kidney"]),
        *_vessels(rng, b, diaphragm),
        *_spine(rng, b, trunk),
        *[(Tissue.BONE, Rib(trunk, z)) for z in np.arange(diaphragm - 110, diaphragm + 150,
                                                          rng.uniform(24, 32))],
    ]
    weight = float(np.clip(0.0028 * a * b * rng.uniform(0.85, 1.15) - 5, 45, 140))
    scan = (diaphragm - rng.uniform(150, 185), diaphragm + rng.uniform(40, 90))
    patient = Patient(tuple(layers), (), trunk, diaphragm, weight, scan)
    count = n_lesions if n_lesions is not None else (
        0 if rng.random() < 0.25 else int(rng.integers(1, 5)))
    return Patient(tuple(layers), _lesions(rng, patient, organs, count, mix), trunk,
                   diaphragm, weight, scan)


@dataclass(frozen=True)
class _Shrunk:
    """The trunk with its outline moved inwards: the muscle wall and the cavity."""

    trunk: EllipticCylinder
    by_mm: float

    def inside(self, p):
        return self.trunk.inside(p, self.by_mm)

    def inside_axes(self, x, y, z):
        return self.trunk.inside_axes(x, y, z, self.by_mm)

    def bbox(self):
        return self.trunk.bbox()


def _wobble(rng, amount):
    return tuple((rng.uniform(0.3, 1) * amount, _unit(rng), rng.uniform(1.5, 3.5))
                 for _ in range(3))


def _unit(rng):
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _tilt(rng, degrees):
    axis = _unit(rng)
    angle = np.radians(rng.uniform(-degrees, degrees))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _organs(rng, a, b, dz) -> dict[str, object]:
    s = rng.uniform(0.85, 1.15)   # organ size
    liver = Union((
        Ellipsoid(np.array([-0.42 * a, 0.0, dz - 65]), np.array([0.42 * a, 0.62 * b, 80]) * s,
                  _tilt(rng, 12), _wobble(rng, 0.07)),
        Ellipsoid(np.array([0.02 * a, -0.42 * b, dz - 45]), np.array([0.32 * a, 0.3 * b, 45]) * s,
                  _tilt(rng, 15), _wobble(rng, 0.07)),
    ))
    spleen = Ellipsoid(np.array([0.62 * a, 0.38 * b, dz - 55]),
                       np.array([0.17 * a, 0.33 * b, 50]) * rng.uniform(0.7, 1.3),
                       _tilt(rng, 20), _wobble(rng, 0.06))
    kidney_z = dz - rng.uniform(115, 140)
    kidney = Union(tuple(
        Ellipsoid(np.array([side * rng.uniform(55, 72), 0.5 * b, kidney_z + (side < 0) * -12]),
                  np.array([27, 33, 55]) * rng.uniform(0.85, 1.15), _tilt(rng, 20),
                  _wobble(rng, 0.04)) for side in (-1, 1)))
    lung = Union(tuple(
        Ellipsoid(np.array([side * 0.47 * a, 0.08 * b, dz + 95]),
                  np.array([0.36 * a, 0.68 * b, 125]) * rng.uniform(0.92, 1.08),
                  _tilt(rng, 6), _wobble(rng, 0.04)) for side in (-1, 1)))
    heart = Ellipsoid(np.array([0.15 * a, -0.25 * b, dz + 55]), np.array([0.32 * a, 0.4 * b, 60]),
                      _tilt(rng, 15))
    return {"liver": liver, "spleen": spleen, "kidney": kidney, "lung": lung, "heart": heart}


def _vessels(rng, b, dz):
    aorta = EllipticCylinder(np.array([rng.uniform(10, 22), 0.3 * b]),
                             np.full(2, rng.uniform(10, 14)), (dz - 200, dz + 70))
    cava = EllipticCylinder(np.array([rng.uniform(-28, -18), 0.22 * b]),
                            np.array([rng.uniform(9, 13), rng.uniform(7, 11)]), (dz - 200, dz + 10))
    return [(Tissue.VESSEL, aorta), (Tissue.VESSEL, cava)]


def _spine(rng, b, trunk):
    y = 0.58 * b
    radius = rng.uniform(16, 22)
    body = EllipticCylinder(np.array([0.0, y]), np.array([radius * 1.15, radius]), trunk.z_range)
    marrow = EllipticCylinder(np.array([0.0, y]), np.array([radius * 1.15 - 2.5, radius - 2.5]),
                              trunk.z_range)
    canal = EllipticCylinder(np.array([0.0, y + radius + 9]), np.array([9.0, 7.5]), trunk.z_range)
    arch = EllipticCylinder(np.array([0.0, y + radius + 10]), np.array([20.0, 16.0]),
                            trunk.z_range)
    step = rng.uniform(28, 34)
    discs = tuple(EllipticCylinder(np.array([0.0, y]), np.array([radius * 1.15, radius]),
                                   (z, z + rng.uniform(5, 9)))
                  for z in np.arange(trunk.z_range[0], trunk.z_range[1], step))
    return [(Tissue.BONE, arch), (Tissue.BONE, body), (Tissue.MARROW, marrow),
            (Tissue.DISC, Union(discs)), (Tissue.CSF, canal)]


def _bowel_gas(rng, a, b, dz):
    pockets = []
    for _ in range(int(rng.integers(2, 9))):
        center = np.array([rng.uniform(-0.5, 0.5) * a, rng.uniform(-0.6, 0.1) * b,
                           rng.uniform(dz - 200, dz - 90)])
        pockets.append(Ellipsoid(center, rng.uniform(5, 18, 3), random_rotation(rng)))
    return pockets


def _lesions(rng, patient: Patient, organs, count: int,
             mix: TrainingMix) -> tuple[Lesion, ...]:
    cavity = _Shrunk(patient.trunk, 45)
    hosts = {"liver": organs["liver"], "lung": organs["lung"], "kidney": organs["kidney"],
             "spleen": organs["spleen"], "soft": cavity}
    lesions: list[Lesion] = []
    names, weights = zip(*ORGAN_WEIGHTS.items(), strict=True)
    attempts = 0
    while len(lesions) < count and attempts < 200:
        attempts += 1
        organ = str(rng.choice(names, p=np.array(weights) / sum(weights)))
        small = mix.small and rng.random() < mix.small
        diameter = rng.uniform(4, 10) if small else rng.uniform(4, 40)
        if organ in ("spleen", "kidney"):
            diameter = min(diameter, 30)
        center = _point_inside(rng, hosts[organ], patient, margin=diameter / 2)
        if center is None or any(np.linalg.norm(center - other.center_mm)
                                 < (diameter + other.diameter_mm) / 2 + 8 for other in lesions):
            continue
        kinds = ("round", "spiculated", "lobulated") if organ == "lung" else LESION_KINDS
        lesion = _lesion(rng, str(rng.choice(kinds)), organ, center, diameter,
                         BRIGHT_SHARE if mix.bright is None else mix.bright)
        if mix.faint and rng.random() < mix.faint:
            lesion = _faint(rng, lesion)
        # The organ's shape lies partly under later layers (the heart over the lung, the
        # kidney over the liver): the lesion's centre, as truth.json gives it, must lie
        # where the organ's own tissue shows, or its contrast is set against the wrong one.
        if patient.tissues(lesion.center_mm[None])[0] == ORGAN_TISSUE[organ]:
            lesions.append(lesion)
    return tuple(lesions)


def _point_inside(rng, shape, patient: Patient, margin: float):
    low, high = shape.bbox()
    low = np.maximum(low, [-1e9, -1e9, patient.scan_z[0] + margin + 3])
    high = np.minimum(high, [1e9, 1e9, patient.scan_z[1] - margin - 3])
    if (high <= low).any():
        return None
    points = rng.uniform(low, high, size=(400, 3))
    inside = points[shape.inside(points)]
    return inside[0] if len(inside) else None


def _lesion(rng, kind: str, organ: str, center: np.ndarray, diameter: float,
            bright: float) -> Lesion:
    r = diameter / 2
    core = None
    if kind == "round":
        solid = Ellipsoid(center, np.full(3, r))
    elif kind == "ellipsoid":
        ratios = rng.uniform(0.6, 1.5, 3)
        solid = Ellipsoid(center, r * ratios / np.prod(ratios) ** (1 / 3), random_rotation(rng))
    elif kind == "lobulated":
        lobes = [Ellipsoid(center, np.full(3, r * 0.75))]
        for _ in range(int(rng.integers(2, 5))):
            offset = _unit(rng) * r * rng.uniform(0.3, 0.55)
            lobes.append(Ellipsoid(center + offset, np.full(3, r * rng.uniform(0.4, 0.6))))
        solid = Union(tuple(lobes))
    elif kind == "spiculated":
        k = int(rng.integers(6, 14))
        spikes = np.array([_unit(rng) for _ in range(k)])
        solid = Spiculated(center, r * 0.8, spikes, rng.uniform(0.3, 0.8, k) * r)
    elif kind == "rim":
        solid = Ellipsoid(center, np.full(3, r), random_rotation(rng), _wobble(rng, 0.05))
        core = Ellipsoid(center, np.full(3, r * rng.uniform(0.45, 0.7)))
    else:  # cyst: fluid with a thin wall
        solid = Ellipsoid(center, r * rng.uniform(0.85, 1.15, 3), random_rotation(rng))
        core = Ellipsoid(center, np.asarray(solid.radii) - max(0.6, r * 0.08), solid.rotation)
    centroid, volume = measure(solid)
    return Lesion(kind, organ, solid, core, centroid, volume, float(rng.uniform(0.35, 1.0)),
                  1 if rng.random() >= 1 - bright else -1, float(rng.uniform(2.0, 6.0)))


def _faint(rng, lesion: Lesion) -> Lesion:
    """The lesion at the low end of what its modality shows: PET uptake 1.2-2 times its
    organ's (or SUV 1.5's, where the organ's is lower), cysts too (otherwise only cysts
    come under 2), CT and MR strength 0.1-0.35 (which sets the contrast of solid lesions and
    CT rims; cysts and MR rims keep theirs).
    For training sets: a network rarely shown a lesion barely above its organ does not
    learn to mark one."""
    ratio = rng.uniform(1.2, 2.0)
    return replace(lesion, strength=float(rng.uniform(0.1, 0.35)),
                   uptake=float(ratio / CYST_UPTAKE if lesion.kind == "cyst" else ratio))


def measure(shape, cells: int = 48) -> tuple[np.ndarray, float]:
    """Centroid (mm) and volume (mm3) of a shape, sampled on a fine grid in its box."""
    low, high = shape.bbox()
    step = (high - low) / cells
    axes = [low[i] + step[i] * (np.arange(cells) + 0.5) for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    inside = grid[shape.inside(grid)]
    return inside.mean(axis=0), float(len(inside) * np.prod(step))
